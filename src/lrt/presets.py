"""Model sizes and pathway variants: the one table that training, the demo and `lrt bench` use.

A preset fixes the backbone's size; the vocabulary comes from the tokenizer in training and from
the preset in `lrt bench`, which runs without one. `d<N>` is nanochat's depth knob (n_embd =
64 N rounded to 128-dim heads, sequence 2048, vocab 32768 in bench), e.g. d12 and the paper's d20.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import LRTConfig


@dataclass(frozen=True)
class Preset:
    shape: dict  # the LRTConfig fields that fix the size
    bench_batch: int  # the micro-batch `lrt bench` measures at
    bench_vocab: int = 257  # `lrt bench` runs without a tokenizer: this vocabulary (257 = bytes + BOS)

    def config(self, **overrides) -> LRTConfig:
        """The preset's model at `lrt bench`'s vocabulary, with overrides."""
        return LRTConfig(**{"vocab_size": self.bench_vocab, **self.shape, **overrides})


PRESETS = {
    "tiny": Preset(dict(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64), bench_batch=8),
    "small": Preset(dict(n_layer=4, n_embd=256, n_head=4, n_kv_head=4, sequence_len=256), bench_batch=8),  # the demo's
    "wide": Preset(dict(n_layer=4, n_embd=768, n_head=6, n_kv_head=6, sequence_len=256), bench_batch=8),
}
PRESET_NAMES = f"{', '.join(PRESETS)} or d<depth> (e.g. d12, d20)"

# the rows of every baseline-against-LRT comparison: LRTConfig overrides of each variant, then the
# paper's comparators on the baseline's backbone (README "The comparators")
VARIANTS = {
    "baseline": dict(injection="none", loops=1, latent_thoughts=0),
    "LRT-shared": dict(projection="shared"),
    "LRT-layerwise": dict(projection="layerwise"),
    "loop-2": dict(injection="none", loops=2, latent_thoughts=0),
    "loop-3": dict(injection="none", loops=3, latent_thoughts=0),
    "PonderLM-2": dict(injection="none", loops=1, latent_thoughts=1),
}
# what each comparator trains with (LRT's variants train with the run's schedule)
COMPARATOR_SCHEDULES = {"loop-2": "baseline", "loop-3": "baseline", "PonderLM-2": "jacobi:3"}
PATHWAY_VARIANTS = tuple(v for v in VARIANTS if v not in COMPARATOR_SCHEDULES)  # the baseline and LRT's


def get_preset(name: str) -> Preset:
    if name in PRESETS:
        return PRESETS[name]
    if name.startswith("d") and name[1:].isdigit() and int(name[1:]) > 0:
        depth = int(name[1:])
        cfg = LRTConfig.from_depth(depth, sequence_len=2048)
        shape = {k: getattr(cfg, k) for k in ("n_layer", "n_embd", "n_head", "n_kv_head", "sequence_len")}
        return Preset(shape, bench_batch=16 if depth <= 12 else 8, bench_vocab=32768)
    raise ValueError(f"preset must be one of {PRESET_NAMES}, got {name!r}")
