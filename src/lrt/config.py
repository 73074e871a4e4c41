"""Model configuration: one dataclass, validated at construction, JSON round-trippable."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

INJECTIONS = ("kv+residual", "kv", "residual", "none")
PROJECTIONS = ("shared", "layerwise")
VALUE_EMBEDS = ("none", "alternating", "all")


# Upper bounds on the sizes that shape the weights, far above any real model (the largest have
# n_embd ~16k, 128 layers, vocabularies ~256k): a size a corrupt checkpoint or a typo makes absurd
# (n_embd = 10**12) is refused here, before a tensor is allocated from it, rather than failing in
# the allocator (or overflowing a tensor's element count) with a traceback.
SIZE_LIMITS = {"vocab_size": 2**24, "n_layer": 2**12, "n_embd": 2**17}

# the fields that say how (and whether) the model recurs, rather than its backbone's shape: a run
# started from another's weights (--init-from) may change them, and nothing else that shapes weights
RECURRENCE_FIELDS = (
    "injection",
    "projection",
    "source_layer",
    "target_layers",
    "residual_init",
    "reset_memory_at_bos",
    "bos_id",
    "loops",
    "latent_thoughts",
)


def option(default, help: str, **metadata):
    """A field of a run's configuration that is also a command-line flag: `help` (and `choices`)
    become the flag's (train_config.flag_fields)."""
    return field(default=default, metadata={"help": help, **metadata})


def _fail(name: str, allowed: str, got) -> None:
    raise ValueError(f"{name} must be {allowed}, got {got!r}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, low: int = 1, high: int | None = None) -> None:
    if not is_int(value) or value < low or (high is not None and value > high):
        allowed = "a positive integer" if low == 1 else f"an integer >= {low}"
        _fail(name, allowed if high is None else f"{allowed} and <= {high:,}", value)


def check_number(name: str, value, low: float = 0.0, high: float = math.inf, *, above: bool = False) -> None:
    """A finite number in [low, high] (or (low, high] with `above`)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if above else value >= low)
        and value <= high
    )
    if not ok:
        bounds = ([f"> {low:g}" if above else f">= {low:g}"] if low > -math.inf else []) + (
            [f"<= {high:g}"] if high < math.inf else []
        )
        _fail(name, " ".join(["a finite number", " and ".join(bounds)]).strip(), value)


@dataclass
class LRTConfig:
    """Everything that fixes the function an LRT model computes (LRT_SPEC sections 1-2).

    Layers are numbered 1..n_layer, as in the paper: `source_layer = s` takes the
    residual stream after block s (s = n_layer: after the final norm), and
    `target_layers` lists the blocks that receive the memory.
    """

    vocab_size: int = 32768
    sequence_len: int = 2048
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    # attention windows: tiled over layers, "L" full causal, "S" the last `short_window` positions
    # (default sequence_len // 2); the final layer is always full
    window_pattern: str = "L"
    short_window: int | None = None
    value_embeds: str = "alternating"  # token-indexed embeddings gated into V: none/alternating/all
    residual_scalars: bool = True  # x = a_l * x + b_l * x0 before each block
    logit_softcap: float = 15.0  # 0 disables
    rope_base: float = 10000.0
    gate_channels: int = 32  # leading channels of the block input that drive the V / memory gates
    # the recurrent latent pathway
    injection: str = "kv+residual"
    projection: str = "shared"
    source_layer: int | None = None  # None: about 2/3 of depth
    target_layers: tuple[int, ...] | None = None  # None: every layer
    residual_init: float = 0.1  # initial g_l of Residual Injection
    # memory reset at document boundaries (LRT_SPEC section 7): a position holding bos_id gets m = 0
    reset_memory_at_bos: bool = False
    bos_id: int | None = None  # the tokenizer's <|bos|>; training sets it
    # the paper's comparators (on the plain backbone, injection="none"), README "The comparators":
    loops: int = 1  # looped transformer: the block stack applied `loops` times per forward, one set of weights
    latent_thoughts: int = 0  # PonderLM-2: latent thoughts each token emits before its next-token prediction

    def __post_init__(self):
        for name in ("vocab_size", "sequence_len", "n_layer", "n_head", "n_kv_head", "n_embd", "gate_channels"):
            check_int(name, getattr(self, name), high=SIZE_LIMITS.get(name))
        if self.n_embd % self.n_head:
            _fail("n_head", f"a divisor of n_embd={self.n_embd}", self.n_head)
        if self.n_head % self.n_kv_head:
            _fail("n_kv_head", f"a divisor of n_head={self.n_head}", self.n_kv_head)
        if self.head_dim % 2:
            _fail(
                "n_head", f"such that head_dim = n_embd / n_head is even (RoPE), head_dim={self.head_dim}", self.n_head
            )
        pattern = self.window_pattern
        if not isinstance(pattern, str) or not pattern or set(pattern.upper()) - set("SL"):
            _fail("window_pattern", "a non-empty string of 'S' and 'L'", self.window_pattern)
        self.window_pattern = self.window_pattern.upper()
        if self.short_window is not None:
            check_int("short_window", self.short_window)
        for name, allowed in (("value_embeds", VALUE_EMBEDS), ("injection", INJECTIONS), ("projection", PROJECTIONS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                _fail(name, f"one of {allowed}", getattr(self, name))
        if not isinstance(self.residual_scalars, bool):
            _fail("residual_scalars", "true or false", self.residual_scalars)
        check_number("logit_softcap", self.logit_softcap)  # 0 is off
        check_number("rope_base", self.rope_base, above=True)
        check_number("residual_init", self.residual_init, -math.inf)
        if self.gate_channels > self.n_embd:
            _fail("gate_channels", f"at most n_embd={self.n_embd}", self.gate_channels)
        if not isinstance(self.reset_memory_at_bos, bool):
            _fail("reset_memory_at_bos", "true or false", self.reset_memory_at_bos)
        if self.bos_id is not None and (not is_int(self.bos_id) or not 0 <= self.bos_id < self.vocab_size):
            _fail("bos_id", f"None or a token id in 0..{self.vocab_size - 1}", self.bos_id)
        if self.reset_memory_at_bos and self.bos_id is None:
            _fail("bos_id", "the <|bos|> token id when reset_memory_at_bos is on", self.bos_id)
        check_int("loops", self.loops)
        check_int("latent_thoughts", self.latent_thoughts, low=0)
        if (self.loops > 1 or self.latent_thoughts) and self.injection != "none":
            _fail("injection", "'none' for a comparator (loops > 1 or latent_thoughts > 0)", self.injection)
        if self.loops > 1 and self.latent_thoughts:
            _fail("latent_thoughts", "0 in a looped transformer (one comparator per model)", self.latent_thoughts)
        if self.source_layer is None:
            self.source_layer = max(1, round(2 * self.n_layer / 3))
        if not is_int(self.source_layer) or not 1 <= self.source_layer <= self.n_layer:
            _fail("source_layer", f"a block index in 1..{self.n_layer} (n_layer)", self.source_layer)
        if self.target_layers is not None:
            layers = tuple(self.target_layers) if isinstance(self.target_layers, (list, tuple)) else ()
            valid = all(is_int(l) and 1 <= l <= self.n_layer for l in layers)
            if not layers or not valid or len(set(layers)) != len(layers):
                _fail("target_layers", f"None (all) or distinct block indices in 1..{self.n_layer}", self.target_layers)
            self.target_layers = tuple(sorted(layers))

    # derived quantities -------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_dim(self) -> int:
        return self.n_kv_head * self.head_dim

    @property
    def slots(self) -> int:
        """Positions of the computed sequence per token: 1, or PonderLM-2's token and its latent
        thoughts (a model's positions, caches and attention windows count slots)."""
        return 1 + self.latent_thoughts

    @property
    def cache_layers(self) -> int:
        """Layers of keys and values a forward leaves: each block once per loop."""
        return self.n_layer * self.loops

    @property
    def uses_kv(self) -> bool:
        return "kv" in self.injection

    @property
    def uses_residual(self) -> bool:
        return "residual" in self.injection

    def is_target(self, layer: int) -> bool:
        """Whether block `layer` (0-based) receives the memory."""
        if self.injection == "none":
            return False
        return self.target_layers is None or layer + 1 in self.target_layers

    def has_value_embed(self, layer: int) -> bool:
        """Value embeddings on alternating layers always include the last one (as nanochat)."""
        if self.value_embeds == "all":
            return True
        return self.value_embeds == "alternating" and layer % 2 == (self.n_layer - 1) % 2

    def window(self, layer: int) -> int | None:
        """How many earlier positions (slots) block `layer` (0-based) attends to; None = all. Set in
        tokens: PonderLM-2's slots scale it, so it covers the same tokens."""
        if layer == self.n_layer - 1 or self.window_pattern[layer % len(self.window_pattern)] == "L":
            return None
        tokens = self.short_window if self.short_window is not None else max(1, self.sequence_len // 2)
        return tokens * self.slots

    def describe(self) -> str:
        """One line naming the model, e.g. 'LRT kv+residual shared, source layer 3, 4 layers, d=256'."""
        if self.loops > 1:
            return f"looped transformer, {self.loops} loops of {self.n_layer} layers, d={self.n_embd}"
        if self.latent_thoughts:
            thoughts = f"{self.latent_thoughts} latent thought{'s' if self.latent_thoughts > 1 else ''} per token"
            return f"PonderLM-2, {thoughts}, {self.n_layer} layers, d={self.n_embd}"
        if self.injection == "none":
            return f"baseline transformer, {self.n_layer} layers, d={self.n_embd}"
        return (
            f"LRT {self.injection} {self.projection}, source layer {self.source_layer}, {self.n_layer} layers, "
            f"d={self.n_embd}"
        )

    # serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["target_layers"] is not None:
            d["target_layers"] = list(d["target_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LRTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LRTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "LRTConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_depth(cls, depth: int, head_dim: int = 128, aspect_ratio: int = 64, **overrides) -> "LRTConfig":
        """nanochat's depth knob: n_embd = aspect_ratio * depth rounded up to the head size."""
        if not isinstance(depth, int) or depth < 1:
            _fail("depth", "a positive integer", depth)
        n_embd = -(-aspect_ratio * depth // head_dim) * head_dim
        n_head = n_embd // head_dim
        base = dict(n_layer=depth, n_embd=n_embd, n_head=n_head, n_kv_head=n_head)
        base.update(overrides)
        return cls(**base)
