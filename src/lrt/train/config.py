"""What a training run is: one dataclass, saved in every checkpoint, whose fields are also the
`lrt train` flags (a field's `help` metadata makes it one: `seq_len` is `--seq-len`)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from ..attention import ATTENTION_CHOICES, check_attention
from ..budget import micro_batches, tokens_per_step
from ..config import LRTConfig, check_int, check_number, option
from ..presets import PRESET_NAMES, get_preset
from ..schedules import SCHEDULE_SPECS, Baseline, Jacobi, Schedule, parse_schedule
from .distributed import BACKENDS, PARALLEL
from .optim import OptimConfig

DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    out: str = option("runs/lrt", "run folder (checkpoints, metrics.jsonl, curves.png)")
    data: str | None = option(None, "a .txt file, a folder of .txt files, or parquet shards (default: bundled corpus)")
    val_data: str | None = option(None, "validation data (default: held out from --data)")
    tokenizer: str = option("byte", "'byte' or a tokenizer JSON from `lrt tokenizer train`")
    preset: str = option("small", f"model size: {PRESET_NAMES}")
    model: dict = field(default_factory=dict)  # LRTConfig overrides (--set key=value)
    seq_len: int | None = option(None, "training context length (default: the preset's)")
    schedule: str = option("interleaved:2", f"training schedule: {SCHEDULE_SPECS}")
    steps: int = option(500, "optimizer steps")
    batch_size: int = option(16, "sequences per micro-batch")
    grad_accum: int = option(1, "micro-batches per step")
    optim: OptimConfig = field(default_factory=OptimConfig)
    dtype: str = option("float32", "float32 or bfloat16 (autocast)", choices=DTYPES)
    total_batch_size: int | None = option(
        None,
        "tokens per optimizer step over all ranks: gradient accumulation "
        "is derived (world size x batch size x sequence length must divide it)",
    )
    compile: bool = option(False, "torch.compile each block (regional compilation)")
    activation_checkpointing: bool = option(
        False,
        "recompute each block in backward instead of keeping its activations (less memory, about a third more compute)",
    )
    embeddings_bf16: bool = option(
        False,
        "keep the token and value embedding tables in bfloat16 (half their memory and their optimizer state's)",
    )
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:1, ... (under torchrun: the local GPU)")
    parallel: str = option(
        "auto", "under torchrun: ddp (the default) or fsdp (FSDP2, per block then the root)", choices=PARALLEL
    )
    backend: str = option(
        "auto", "process group under torchrun: auto (nccl on GPUs, gloo on CPUs), nccl or gloo", choices=BACKENDS
    )
    attention: str = option(
        "auto", "subset-pass attention: auto (flex on CUDA, else sdpa), sdpa or flex", choices=ATTENTION_CHOICES
    )
    eval_every: int = option(100, "steps between validations")
    eval_tokens: int = option(65536, "validation tokens")
    final_decode: bool = option(True, "the exact-memory validation BPB at the end of an LRT run")
    exact_at: list[int] = field(
        default_factory=list,
        metadata={
            "help": "steps whose validation also reads with exact memory (the decoding BPB; lrt study's budgets)"
        },
    )
    save_every: int = option(0, "steps between checkpoints (0: at the end only)")
    save_at: list[int] = field(
        default_factory=list,
        metadata={"help": "steps that also save a checkpoint, kept whatever --keep says (lrt study's branch points)"},
    )
    keep: int = option(3, "checkpoints kept (besides those of --save-at)")
    seed: int = option(0, "random seed")
    init_from: str | None = option(
        None,
        "start from this checkpoint's (or run's newest) weights: a new run, with its own data, schedule, "
        "rates and a fresh optimizer; the model's shape comes from the checkpoint",
    )
    peak_tflops: float | None = option(
        None, "the device's peak TFLOP/s, for each step's MFU in metrics.jsonl (bf16 on H100, H200, A100: known)"
    )

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_tokens", "keep"):
            check_int(name, getattr(self, name))
        check_int("save_every", self.save_every, low=0)
        if self.total_batch_size is not None:
            check_int("total_batch_size", self.total_batch_size)
        if self.peak_tflops is not None:
            check_number("peak_tflops", self.peak_tflops, above=True)  # MFU's denominator
        check_int("seed", self.seed, low=0)
        if self.seq_len is not None:
            check_int("seq_len", self.seq_len, low=2)
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"init_from must be a checkpoint or run folder, got {self.init_from!r}")
        for name in ("out", "tokenizer", "preset", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("exact_at", "save_at"):
            steps = getattr(self, name)
            if not isinstance(steps, list) or not all(isinstance(s, int) and s >= 1 for s in steps):
                raise ValueError(f"{name} must be a list of steps >= 1, got {steps!r}")
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a dict of LRTConfig overrides, got {self.model!r}")
        for name in ("vocab_size", "bos_id"):
            if name in self.model:
                raise ValueError(f"{name} comes from the tokenizer: it cannot be set with --set")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_attention(self.attention)
        for name, allowed in (("parallel", PARALLEL), ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        unknown = set(self.model) - {f.name for f in dataclasses.fields(LRTConfig)}
        if unknown:
            raise ValueError(f"unknown model field(s) {sorted(unknown)} (--set takes LRTConfig fields)")
        self.schedule = parse_schedule(self.schedule).spec  # canonical: "interleaved" is "interleaved:2"
        get_preset(self.preset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        # checkpoints written before schedules had spec strings name the parameter in its own field
        legacy = {"interleaved": "subsets", "multirefine": "passes", "chunked": "chunk"}.get(d.get("schedule"))
        if legacy in d:
            d["schedule"] = f"{d['schedule']}:{d[legacy]}"
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def accumulation(self, world_size: int, seq_len: int) -> int:
        """Micro-batches per optimizer step: grad_accum, or what total_batch_size makes it."""
        if self.total_batch_size is None:
            return self.grad_accum
        per_micro = tokens_per_step(world_size=world_size, batch_size=self.batch_size, accumulation=1, seq_len=seq_len)
        accumulation = micro_batches(
            self.total_batch_size,
            per_micro,
            f"world size {world_size} x batch size {self.batch_size} x sequence length {seq_len}",
        )
        if self.grad_accum not in (1, accumulation):
            raise ValueError(
                f"--grad-accum {self.grad_accum} contradicts --total-batch-size, which makes it "
                f"{accumulation}: give one of them"
            )
        return accumulation

    def tokens_per_step(self, world_size: int, seq_len: int) -> int:
        """Tokens per optimizer step over all ranks (lrt.budget.tokens_per_step)."""
        return tokens_per_step(
            world_size=world_size,
            batch_size=self.batch_size,
            accumulation=self.accumulation(world_size, seq_len),
            seq_len=seq_len,
        )

    def make_schedule(self) -> Schedule:
        return parse_schedule(self.schedule)

    def model_config(self, vocab_size: int, bos_id: int | None = None, source: LRTConfig | None = None) -> LRTConfig:
        """The preset (or, for a run started from weights, the `source` model's shape and
        recurrence), the schedule's implication (baseline: a plain transformer, looped with `loops`;
        jacobi: PonderLM-2, one latent thought unless `latent_thoughts` says; any other: LRT, whose
        pathway a plain source gets with its defaults), then overrides; the tokenizer's vocabulary,
        and its <|bos|> where memory resets there."""
        defaults = LRTConfig.__dataclass_fields__
        d = dict(get_preset(self.preset).shape) if source is None else source.to_dict()
        schedule = self.make_schedule()
        if isinstance(schedule, (Baseline, Jacobi)):
            d["injection"] = "none"
        elif source is not None and source.injection == "none":  # a plain source: LRT's pathway added
            d.update(injection=defaults["injection"].default, loops=1, latent_thoughts=0)
        if isinstance(schedule, Jacobi):
            d["latent_thoughts"] = d.get("latent_thoughts") or 1
        d.update(self.model)
        if self.seq_len is not None:
            d["sequence_len"] = self.seq_len
        d["vocab_size"] = vocab_size
        d["bos_id"] = bos_id if d.get("reset_memory_at_bos") else None
        return LRTConfig.from_dict(d)


def flag_fields(cls) -> list[tuple[dataclasses.Field, type]]:
    """The fields of a config dataclass that are command-line flags, with their value type (a
    list type for a flag that takes several values)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            hint = hints[f.name]
            kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
            out.append((f, hint if typing.get_origin(hint) is list else kinds[0]))
    return out
