"""The training loop: data -> model -> schedule -> optimizer, with validation, metrics,
checkpoints and exact resumption.

What it promises (docs/reliability.md): the run folder is locked for the run's lifetime and
belongs to one run; nothing non-finite is logged or saved (the loss and the weights are checked
after every step, with one host sync); Ctrl-C finishes the step, saves a checkpoint and stops; on
resume the tokenizer is the checkpoint's own copy, and learning-rate flags given apply.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
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
from .plots import plot_run, read_metrics
from .run_folder import RunFolder
from .runtime import resolve_device
from .schedules import checked_plan
from .tokenizer import load_tokenizer, tokenizer_from_reference
from .train_config import TrainConfig


class TrainingStopped(Exception):
    """The run stopped before its last step; `str()` says why and where its last checkpoint is."""


class Diverged(TrainingStopped, ValueError):
    """The loss or the weights became non-finite (a bad input such as a learning rate: exit 2)."""


class Interrupted(TrainingStopped):
    """Ctrl-C: the step in flight finished and a checkpoint was saved."""


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        resumed = None if resume is None else checkpoint.resolve(resume)
        record = None if resumed is None else checkpoint.read_record(resumed)
        self.tokenizer = load_tokenizer(cfg.tokenizer) if record is None else self._own_tokenizer(resumed, record)
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
        per_sequence = training_flops_per_sequence(self.config, self.schedule, self.seq_len)
        self.flops_per_step = per_sequence * cfg.batch_size * cfg.grad_accum
        if resumed is not None:
            self._resume(resumed, record)
        # everything above only reads; the run folder is touched from here on, under its lock
        resumed_from = None if resumed is None else resumed.parents[1]
        self.folder = RunFolder(self.out)
        self.folder.check_owner(resumed_from)
        self.folder.acquire()
        try:
            self.folder.check_owner(resumed_from)  # again, now that no one else can write it
            self._truncate_metrics(self.step)
        except BaseException:
            self.close()
            raise
        self.last_checkpoint = resumed
        self.forward = compile_model(self.model) if cfg.compile else self.model

    def close(self) -> None:
        """Release the run folder (also done when training ends)."""
        self.folder.release()

    def _own_tokenizer(self, path: Path, record: dict):
        """A resumed run's tokenizer is the copy in its checkpoint; a --tokenizer naming another
        file must have the same content."""
        own = tokenizer_from_reference(record["tokenizer"], path)
        if self.cfg.tokenizer != record.get("train_config", {}).get("tokenizer"):
            given = load_tokenizer(self.cfg.tokenizer)
            if given.reference() != own.reference():
                raise ValueError(f"tokenizer {self.cfg.tokenizer} differs from the one checkpoint {path} was trained "
                                 "with (content hash): a run keeps its tokenizer")
        return own

    def _resume(self, path: Path, record: dict) -> None:
        saved = LRTConfig.from_dict(record["config"])
        if saved != self.config:
            diff = [f"{k}: checkpoint {v!r}, this run {getattr(self.config, k)!r}"
                    for k, v in saved.to_dict().items() if v != self.config.to_dict()[k]]
            raise ValueError(f"checkpoint {path} config does not match this run ({'; '.join(diff)})")
        model, _, _ = checkpoint.load_model(path, self.device)
        self.model.load_state_dict(model.state_dict())
        state = checkpoint.load_train_state(path, record)
        self._load_optimizers(path, state["optimizers"])
        self.loader.load_state_dict(state["loader"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.tokens, self.train_time = record["step"], record["tokens"], record["train_time"]

    def _load_optimizers(self, path: Path, saved: list[dict]) -> None:
        """The moments come from the checkpoint; the rates and weight decay from this run's config,
        so learning-rate flags given with --resume apply (the schedule scales the base rate)."""
        shapes = [[len(g["params"]) for g in opt.param_groups] for opt in self.optimizers]
        if shapes != [[len(g["params"]) for g in s["param_groups"]] for s in saved]:
            raise ValueError(f"checkpoint {path} was trained with another optimizer: --optimizer cannot change "
                             "on resume")
        for opt, opt_state in zip(self.optimizers, saved):
            base = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
            opt.load_state_dict(opt_state)
            for group, (lr, weight_decay) in zip(opt.param_groups, base):
                group["initial_lr"], group["weight_decay"] = lr, weight_decay

    # bookkeeping --------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop what a crashed run logged after its last checkpoint (a torn last line
        included); a fresh run has none (its folder holds no run)."""
        if self.metrics_path.exists():
            kept = [r for r in read_metrics(self.metrics_path) if r["step"] <= step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

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
        self.last_checkpoint = checkpoint.save_checkpoint(self.out, self.step, self.model, tokenizer=self.tokenizer,
                                                          meta=meta, state=state, keep=self.cfg.keep)
        return self.last_checkpoint

    # the loop -----------------------------------------------------------------------------------

    def train_step(self) -> float:
        """One optimizer step; the mean loss. Stops (Diverged) if the loss or the updated weights
        are not finite, before anything of the step is logged or saved."""
        cfg = self.cfg
        set_lr(self.optimizers, lr_multiplier(self.step, cfg.steps, cfg.optim))
        total = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            x, y = (t.to(self.device) for t in self.loader.next_batch())
            with self.autocast():
                loss = self.forward(x, y, schedule=self.schedule, return_logits=False).loss
            (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += x.numel() * cfg.grad_accum
        # the largest weight is finite iff every weight is; one host sync for it and the loss
        largest = torch.nn.utils.get_total_norm(list(self.model.parameters()), norm_type=float("inf"))
        loss, largest = torch.stack([total, largest.to(total)]).tolist()
        if not (abs(loss) < float("inf") and largest < float("inf")):  # NaN fails both comparisons
            where = self.last_checkpoint or "none (nothing was saved)"
            raise Diverged(f"non-finite {'loss' if not abs(loss) < float('inf') else 'weights'} at step {self.step}; "
                           f"the last checkpoint is {where}: lower the learning rates")
        return loss

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
        """Train to cfg.steps, then validate, save and plot. The run folder is released at the end,
        however the run ends."""
        try:
            with interrupt_after_step() as interrupted:
                return self._train(progress, interrupted)
        finally:
            self.close()

    def _train(self, progress: bool, interrupted: threading.Event) -> dict:
        cfg = self.cfg
        (self.out / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        self.model.train()
        if self.step == 0:
            self._log_eval()
        with tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.schedule}", disable=not progress,
                  dynamic_ncols=True) as bar:  # closed before any error is printed
            self._steps(bar, interrupted)
        finished = [r for r in read_metrics(self.metrics_path) if r["kind"] == "final" and r["step"] == self.step]
        final = finished[0] if finished else self._log_eval(final=True)  # a resumed run that had finished
        if self.last_checkpoint is None or checkpoint.read_record(self.last_checkpoint)["step"] != self.step:
            self.save()
        plot_run(self.metrics_path, self.out / "curves.png", title=f"{cfg.preset} {cfg.schedule}")
        return {**final, "tokens": self.tokens, "train_time": self.train_time, "out": str(self.out)}

    def _steps(self, bar, interrupted: threading.Event) -> None:
        cfg = self.cfg
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            self._log({"step": self.step, "kind": "train", "loss": loss, "tokens": self.tokens,
                       "flops": self.step * self.flops_per_step, "time": self.train_time})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{cfg.batch_size * cfg.grad_accum * self.seq_len / dt:,.0f}")
            if interrupted.is_set():
                raise Interrupted(f"interrupted: saved step {self.step} to {self.save()}; "
                                  f"continue with lrt train --resume {self.out}")
            if self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                bar.set_postfix(loss=f"{loss:.3f}", val_bpb=f"{self._log_eval()['val_bpb']:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()


@contextlib.contextmanager
def interrupt_after_step():
    """While training: the first Ctrl-C sets the event (the loop finishes its step, saves and
    stops); a second one interrupts at once. Off the main thread, Ctrl-C is left alone."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        event.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
