"""The training loop: data -> model -> schedule -> optimizer, with validation, metrics,
checkpoints and exact resumption, on one process or on every rank of a torchrun launch (DDP or
FSDP2, distributed.py): each rank reads its own part of the data, the loss, the validation sums and
the checks are all-reduced, and rank 0 writes the run folder. What the loop runs on (model,
optimizers, data, run folder, a resumed checkpoint's state) is built by build.py.

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

from ..evaluate import evaluate_bpb
from ..memory import Memory
from . import checkpoint, distributed
from .build import build_run
from .config import TrainConfig
from .curves import plot_run, read_metrics
from .optim import lr_multiplier, set_lr


class TrainingStopped(Exception):
    """The run stopped before its last step; `str()` says why and where its last checkpoint is."""


class Diverged(TrainingStopped, ValueError):
    """The loss or the weights became non-finite (a bad input such as a learning rate: exit 2)."""


class Interrupted(TrainingStopped):
    """Ctrl-C: the step in flight finished and a checkpoint was saved."""


def _part(name: str) -> property:
    return property(lambda self: getattr(self.parts, name), doc=f"RunParts.{name}")


class Trainer:
    """One training run, on one process or on every rank of a torchrun launch (DDP or FSDP2): the
    loop over the parts build_run makes."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None):
        self.cfg = cfg
        self.parts = build_run(cfg, resume)
        start = self.parts.start  # what the loop advances: from 0, or where the resumed checkpoint left off
        self.step, self.tokens, self.train_time = start.step, start.tokens, start.train_time
        self.finished = start.finished
        self.interrupted, self.stop = threading.Event(), False  # set by Ctrl-C while training
        self.last_checkpoint = self.parts.resumed

    # the run's parts, under the names the CLI, the experiments and the tests read
    world = _part("world")
    device = _part("device")
    folder = _part("folder")
    out = _part("out")
    metrics_path = _part("metrics_path")
    tokenizer = _part("tokenizer")
    config = _part("config")
    schedule = _part("schedule")
    seq_len = _part("seq_len")
    loader = _part("loader")
    val_rows = _part("val_rows")
    token_bytes = _part("token_bytes")
    grad_accum = _part("grad_accum")
    model = _part("model")
    forward = _part("forward")
    optimizers = _part("optimizers")
    tokens_per_step = _part("tokens_per_step")
    flops_per_step = _part("flops_per_step")

    def close(self) -> None:
        """Release the run folder (also done when training ends)."""
        self.folder.release()

    # bookkeeping --------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if self.world.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")

    def autocast(self):
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def save(self, final: bool = False) -> Path | None:
        """Every rank hands its part to rank 0 (full state dicts through torch.distributed.checkpoint;
        each rank's data position and RNG), which writes the checkpoint; its path on rank 0."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        state = {
            "optimizer": get_optimizer_state_dict(self.model, self.optimizers, options=options),
            "optimizer_kinds": [type(opt).__name__ for opt in self.optimizers],
            "loaders": self.world.gather(self.loader.state_dict()),
            "rngs": self.world.gather(checkpoint.rng_state()),
        }
        meta = {
            "train_config": self.cfg.to_dict(),
            "tokens": self.tokens,
            "train_time": self.train_time,
            "world_size": self.world.size,
            "final": final,
        }

        def write():
            return checkpoint.save_checkpoint(
                self.out,
                self.step,
                self.model,
                tokenizer=self.tokenizer,
                meta=meta,
                state=state,
                keep=self.cfg.keep,
                weights=weights,
                kept=frozenset(self.cfg.save_at),
            )

        self.last_checkpoint = self.world.agree(lambda: write() if self.world.main else None)
        return self.last_checkpoint

    # the loop -----------------------------------------------------------------------------------

    def train_step(self) -> float:
        """One optimizer step over the world's batch; the mean loss. Stops (Diverged) if the loss
        or the updated weights are not finite on any rank, before anything of the step is logged
        or saved."""
        cfg = self.cfg
        set_lr(self.optimizers, lr_multiplier(self.step, cfg.steps, cfg.optim))
        total = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = (t.to(self.device) for t in self.loader.next_batch())
            with self.autocast(), distributed.syncing(self.forward, sync=micro == self.grad_accum - 1):
                loss = self.forward(x, y, schedule=self.schedule, return_logits=False).loss
                (loss / self.grad_accum).backward()
            total += loss.detach() / self.grad_accum
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.tokens_per_step
        # the largest weight is finite iff every weight is; one collective and one host sync
        local = [t for t in map(distributed.local, self.model.parameters()) if t.numel()]  # shards may be empty
        largest = torch.nn.utils.get_total_norm(local, norm_type=float("inf"))
        interrupted = torch.tensor(float(self.interrupted.is_set()), device=self.device)
        loss, largest, interrupted = self.world.all_sum(torch.stack([total, largest.to(total), interrupted])).tolist()
        loss /= self.world.size
        self.stop = interrupted > 0  # Ctrl-C on any rank: every rank saves and stops after this step
        if not (abs(loss) < float("inf") and largest < float("inf")):  # NaN fails both comparisons
            where = self.last_checkpoint or "none (nothing was saved)"
            raise Diverged(
                f"non-finite {'loss' if not abs(loss) < float('inf') else 'weights'} at step {self.step}; "
                f"the last checkpoint is {where}: lower the learning rates"
            )
        return loss

    def evaluate(self, exact: bool = False):
        """Validation BPB with the training schedule's memory (the baseline: zero), and exact;
        each rank scores its share of the rows."""
        memories = [Memory("parallel", self.schedule)] + [Memory("exact")] * exact
        with self.autocast(), distributed.gathered(self.model):
            return evaluate_bpb(self.model, self.val_rows, self.token_bytes, memories=memories, world=self.world)

    def _log_eval(self, final: bool = False) -> dict:
        exact = self.step in self.cfg.exact_at or (final and self.cfg.final_decode)
        result = self.evaluate(exact=exact)
        record = {
            "step": self.step,
            "kind": "final" if final else "eval",
            "flops": self.step * self.flops_per_step,
            "val_bpb": result.zero if result.parallel is None else result.parallel,
        }
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
            with interrupt_after_step(self.interrupted):
                return self._train(progress)
        finally:
            self.close()

    def _train(self, progress: bool) -> dict:
        cfg = self.cfg
        if self.world.main:
            (self.out / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        self.model.train()
        if self.step == 0:
            self._log_eval()
        with tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=f"train {cfg.schedule}",
            disable=not (progress and self.world.main),
            dynamic_ncols=True,
        ) as bar:  # closed before any error
            self._steps(bar)
        if self.finished:  # resumed from this run's final checkpoint (killed before it exited): nothing left to do
            logged = [r for r in read_metrics(self.metrics_path) if r["kind"] == "final"] if self.world.main else []
            final = logged[-1] if logged else {}
        else:
            final = self._log_eval(final=True)
            self.save(final=True)
        if self.world.main:
            plot_run(self.metrics_path, self.out / "curves.png", title=f"{cfg.preset} {cfg.schedule}")
        return {**final, "tokens": self.tokens, "train_time": self.train_time, "out": str(self.out)}

    def _steps(self, bar) -> None:
        cfg = self.cfg
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            self._log(
                {
                    "step": self.step,
                    "kind": "train",
                    "loss": loss,
                    "tokens": self.tokens,
                    "flops": self.step * self.flops_per_step,
                    "time": self.train_time,
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens_per_step / dt:,.0f}")
            if self.stop:
                raise Interrupted(
                    f"interrupted: saved step {self.step} to {self.save()}; continue with lrt train --resume {self.out}"
                )
            if (self.step % cfg.eval_every == 0 or self.step in cfg.exact_at) and self.step < cfg.steps:
                bar.set_postfix(loss=f"{loss:.3f}", val_bpb=f"{self._log_eval()['val_bpb']:.4f}")
            periodic = cfg.save_every and self.step % cfg.save_every == 0
            if (periodic or self.step in cfg.save_at) and self.step < cfg.steps:
                self.save()


@contextlib.contextmanager
def interrupt_after_step(event: threading.Event):
    """While training: the first Ctrl-C sets the event (the loop finishes its step, saves and
    stops); a second one interrupts at once. Off the main thread, Ctrl-C is left alone."""
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
