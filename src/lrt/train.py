"""The training loop: data -> model -> schedule -> optimizer, with validation, metrics,
checkpoints and exact resumption."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint
from .config import LRTConfig
from .data import PackedLoader, train_val_sources, validation_rows
from .evaluate import evaluate_bpb
from .flops import training_flops_per_sequence
from .memory import Memory
from .model import LRT, compile_model
from .optim import build_optimizers, lr_multiplier, set_lr
from .plots import plot_run
from .runtime import resolve_device
from .schedules import checked_plan
from .tokenizer import load_tokenizer
from .train_config import TrainConfig


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
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
        self.model = LRT(self.config, attention=cfg.attention, device=self.device)
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
        return checkpoint.save_checkpoint(self.out, self.step, self.model, tokenizer=self.tokenizer, meta=meta,
                                          state=state, keep=self.cfg.keep)

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

    def evaluate(self, exact: bool = False):
        """Validation BPB with the training schedule's memory (the baseline: zero), and exact."""
        memories = [Memory("parallel", self.schedule)] + [Memory("exact")] * exact
        with self.autocast():
            return evaluate_bpb(self.model, self.val_rows, self.token_bytes, memories=memories)

    def _log_eval(self, final: bool = False) -> dict:
        result = self.evaluate(exact=final and self.cfg.final_decode)
        record = {"step": self.step, "kind": "final" if final else "eval", "flops": self.step * self.flops_per_step,
                  "val_bpb": result.zero if result.parallel is None else result.parallel}
        if result.parallel is not None:
            record["val_bpb_passes"] = result.parallel_passes
        if result.exact is not None:
            record["val_bpb_exact"] = result.exact
            record["val_bpb_exact_buckets"] = result.exact_buckets
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
