"""The training loop: data -> model -> schedule -> optimizer, with validation, metrics,
checkpoints and exact resumption."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint
from .attention import ATTENTION_BACKENDS, set_attention_backend
from .config import LRTConfig
from .data import PackedLoader, train_val_sources, validation_rows
from .evaluate import evaluate_bpb
from .flops import training_flops_per_sequence
from .model import LRT, compile_model
from .optim import OptimConfig, build_optimizers, lr_multiplier, set_lr
from .plots import plot_run
from .schedules import checked_plan, make_schedule
from .tokenizer import load_tokenizer

# model presets: a few fixed sizes, plus d<N> for nanochat's depth knob (n_embd = 64 N, head 128)
PRESETS = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64),
    "small": dict(n_layer=4, n_embd=256, n_head=4, n_kv_head=4, sequence_len=256),
}


def preset_config(name: str) -> dict:
    if name in PRESETS:
        return dict(PRESETS[name])
    if name.startswith("d") and name[1:].isdigit() and int(name[1:]) > 0:
        cfg = LRTConfig.from_depth(int(name[1:]), sequence_len=2048)
        return {k: getattr(cfg, k) for k in ("n_layer", "n_embd", "n_head", "n_kv_head", "sequence_len")}
    raise ValueError(f"preset must be one of {', '.join(PRESETS)} or d<depth> (e.g. d12), got {name!r}")


@dataclass
class TrainConfig:
    out: str = "runs/lrt"
    data: str | None = None  # None: the bundled Shakespeare corpus
    val_data: str | None = None
    tokenizer: str = "byte"  # or the path of a BPE tokenizer JSON
    preset: str = "small"
    model: dict = field(default_factory=dict)  # LRTConfig overrides
    seq_len: int | None = None  # training context; default the preset's sequence_len
    schedule: str = "interleaved"
    subsets: int = 2
    passes: int = 1
    chunk: int = 64
    steps: int = 500
    batch_size: int = 16
    grad_accum: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    dtype: str = "float32"  # autocast dtype: float32 (off) or bfloat16
    compile: bool = False
    device: str = "auto"
    attention: str = "auto"  # subset-pass attention backend: auto, sdpa or flex (attention.py)
    eval_every: int = 100
    eval_tokens: int = 65536
    final_decode: bool = True  # exact decoding BPB at the end of an LRT run
    save_every: int = 0  # 0: only at the end
    keep: int = 3
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_tokens", "keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ValueError(f"seq_len must be an integer >= 2, got {self.seq_len!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.attention not in ("auto", *ATTENTION_BACKENDS):
            raise ValueError(f"attention must be one of auto, {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def make_schedule(self):
        return make_schedule(self.schedule, self.subsets, self.passes, self.chunk)

    def model_config(self, vocab_size: int) -> LRTConfig:
        """The preset, the schedule's implication (baseline = plain transformer), then overrides."""
        d = preset_config(self.preset)
        if self.schedule == "baseline":
            d["injection"] = "none"
        d.update(self.model)
        if self.seq_len is not None:
            d["sequence_len"] = self.seq_len
        d["vocab_size"] = vocab_size
        return LRTConfig.from_dict(d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        set_attention_backend(cfg.attention, self.device)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.config = cfg.model_config(self.tokenizer.vocab_size)
        self.seq_len = self.config.sequence_len
        self.schedule = cfg.make_schedule()
        checked_plan(self.schedule, self.seq_len)  # a schedule the sequence cannot take fails now
        if cfg.schedule != "baseline" and self.config.injection == "none":
            raise ValueError(f"schedule {cfg.schedule} needs a recurrent pathway, but the model has injection='none'")
        train_source, val_source = train_val_sources(cfg.data, cfg.val_data)
        self.loader = PackedLoader(train_source, self.tokenizer, cfg.batch_size, self.seq_len)
        self.val_rows = validation_rows(val_source, self.tokenizer, self.seq_len, cfg.eval_tokens)
        self.token_bytes = self.tokenizer.token_bytes()
        self.model = LRT(self.config).to(self.device)
        self.optimizers = build_optimizers(self.model, cfg.optim)
        self.step, self.tokens, self.train_time = 0, 0, 0.0
        self.flops_per_step = training_flops_per_sequence(self.config, self.schedule, self.seq_len) * cfg.batch_size * cfg.grad_accum
        if resume is not None:
            self._resume(resume)
        elif checkpoint.list_checkpoints(self.out):
            raise ValueError(f"{self.out} already holds checkpoints; pass --resume {self.out} or choose another --out")
        self.forward = compile_model(self.model) if cfg.compile else self.model

    def _resume(self, path) -> None:
        path = checkpoint.resolve(path)
        record = checkpoint.read_record(path)
        saved = LRTConfig.from_dict(record["config"])
        if saved != self.config:
            diff = [f"{k}: checkpoint {v!r}, this run {getattr(self.config, k)!r}"
                    for k, v in saved.to_dict().items() if v != self.config.to_dict()[k]]
            raise ValueError(f"checkpoint {path} config does not match this run ({'; '.join(diff)})")
        if record["tokenizer"] != self.tokenizer.reference():
            raise ValueError(f"checkpoint {path} was trained with tokenizer {record['tokenizer']}, not {self.tokenizer.reference()}")
        model, _, _ = checkpoint.load_model(path, self.device)
        self.model.load_state_dict(model.state_dict())
        state = checkpoint.load_train_state(path, record)
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.loader.load_state_dict(state["loader"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.tokens, self.train_time = record["step"], record["tokens"], record["train_time"]
        self._truncate_metrics(self.step)

    # bookkeeping --------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop what a crashed run logged after its last checkpoint."""
        if self.metrics_path.exists():
            lines = [l for l in self.metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
            self.metrics_path.write_text("".join(l + "\n" for l in lines))

    def autocast(self):
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def save(self) -> Path:
        meta = {"train_config": self.cfg.to_dict(), "tokens": self.tokens, "train_time": self.train_time}
        state = {
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "loader": self.loader.state_dict(),
            "rng": checkpoint.rng_state(),
        }
        return checkpoint.save_checkpoint(self.out, self.step, self.model, self.tokenizer, meta, state, self.cfg.keep)

    # the loop -----------------------------------------------------------------------------------

    def train_step(self) -> float:
        cfg = self.cfg
        set_lr(self.optimizers, lr_multiplier(self.step, cfg.steps, cfg.optim))
        total = 0.0
        for _ in range(cfg.grad_accum):
            x, y = (t.to(self.device) for t in self.loader.next_batch())
            with self.autocast():
                loss = self.forward(x, y, schedule=self.schedule, return_logits=False).loss
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += x.numel() * cfg.grad_accum
        return total

    def evaluate(self, decode: bool = False):
        modes = ("zero",) if self.config.injection == "none" else ("schedule", "decode") if decode else ("schedule",)
        with self.autocast():
            return evaluate_bpb(self.model, self.val_rows, self.token_bytes, self.schedule, modes=modes)

    def _log_eval(self, final: bool = False) -> dict:
        result = self.evaluate(decode=final and self.cfg.final_decode)
        record = {"step": self.step, "kind": "final" if final else "eval", "flops": self.step * self.flops_per_step,
                  "val_bpb": result.zero if result.merged is None else result.merged}
        if result.merged is not None:
            record["val_bpb_passes"] = result.passes
        if result.decode is not None:
            record["val_bpb_decode"] = result.decode
            record["val_bpb_decode_buckets"] = result.decode_buckets
        self._log(record)
        return record

    def train(self, progress: bool = True) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        self.model.train()
        if self.step == 0:
            self._log_eval()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.schedule}", disable=not progress,
                   dynamic_ncols=True)
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.step}; lower the learning rates")
            self._log({"step": self.step, "kind": "train", "loss": loss, "tokens": self.tokens,
                       "flops": self.step * self.flops_per_step, "time": self.train_time})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{cfg.batch_size * cfg.grad_accum * self.seq_len / dt:,.0f}")
            if self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                bar.set_postfix(loss=f"{loss:.3f}", val_bpb=f"{self._log_eval()['val_bpb']:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        final = self._log_eval(final=True)
        self.save()
        plot_run(self.metrics_path, self.out / "curves.png", title=f"{cfg.preset} {cfg.schedule}")
        return {**final, "tokens": self.tokens, "train_time": self.train_time, "out": str(self.out)}
