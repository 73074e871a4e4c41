"""The training loop: data -> model -> schedule -> optimizer, with validation, metrics,
checkpoints and exact resumption, on one process or on every rank of a torchrun launch (DDP or
FSDP2, distributed.py): each rank reads its own part of the data, the loss, the validation sums and
the checks are all-reduced, and rank 0 writes the run folder. What the loop runs on (model,
optimizers, data, run folder, a resumed checkpoint's state) is built by build.py.

What it promises (docs/reliability.md): the run folder is locked for the run's lifetime and
belongs to one run; nothing non-finite is logged or saved (the loss and the weights of every step
are checked, with one host sync, on a GPU made while the next step runs); Ctrl-C finishes the
step, saves a checkpoint and stops; on resume the tokenizer is the checkpoint's own copy, and
learning-rate flags given apply.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..evaluate import evaluate_bpb
from ..memory import Memory
from ..runtime import known_peak_tflops
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
        self.parts = build_run(cfg, resume)
        self.cfg = self.parts.cfg
        start = self.parts.start  # what the loop advances: from 0, or where the resumed checkpoint left off
        self.step, self.tokens, self.train_time = start.step, start.tokens, start.train_time
        self.finished = start.finished
        self.interrupted, self.stop = threading.Event(), False  # set by Ctrl-C while training
        self.last_checkpoint = self.parts.resumed
        # read a step's numbers while the next one runs: on a GPU, whose work the host only queues
        # (elsewhere the host computes each step itself: nothing to overlap)
        self.overlap = self.device.type == "cuda"
        # MFU's denominator per device: given, or the datasheet's bf16 peak of a known GPU
        known = known_peak_tflops(self.device) if cfg.dtype == "bfloat16" else None
        self.peak_tflops = cfg.peak_tflops or known

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
        """Write a checkpoint; its path on rank 0. Every rank hands rank 0 the full weights
        (torch.distributed.checkpoint's state-dict helpers), its data position and its RNG, and
        rank 0 writes them. On one process the optimizer state goes with them; under torchrun each
        rank first writes its own shard of it into the checkpoint's optimizer/ folder (DCP), so no
        rank ever holds it whole, and rank 0 renames the folder into place once all are written.

        The save is synchronous. dcp.async_save returns before the shards are on disk, and the
        checkpoint may only be renamed into place once every rank's are: that is a second agreed
        step some training steps later, with the temporary folder and the staged copy of the
        state alive across them, and a Ctrl-C, a divergence or the final save in between must
        wait for it or discard it. The atomic rename is what the checkpoints promise; at the scale
        lrt trains (seconds per save, every few hundred steps) it is not worth that machinery."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sharded = self.world.distributed
        weights = get_model_state_dict(self.model, options=full)
        optimizer = get_optimizer_state_dict(
            self.model, self.optimizers, options=StateDictOptions() if sharded else full
        )
        state = {
            "optimizer": optimizer,
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
                begun=sharded,
            )

        try:
            if sharded:
                state["optimizer"] = self._save_optimizer_shards(optimizer)  # train_state records where
            self.last_checkpoint = self.world.agree(lambda: write() if self.world.main else None)
        except BaseException:
            if sharded and self.world.main:  # the shards written so far: no torn step_* (recover would tidy it too)
                checkpoint.discard(self.out, self.step)
            raise
        return self.last_checkpoint

    def _save_optimizer_shards(self, optimizer: dict) -> dict:
        """Every rank's shard of the sharded optimizer state dict into the checkpoint's temporary
        folder; what train_state records of it. First, in one agreed step, every rank checks its
        shard is finite and rank 0 empties the folder: a NaN anywhere stops every rank before
        anything is written, and no rank writes into a folder rank 0 is still clearing."""
        world, step = self.world, self.step

        def prepare():
            checkpoint.refuse_non_finite_shards(optimizer, step)
            if world.main:
                checkpoint.begin(self.out, step)

        world.agree(prepare)
        tmp = checkpoint.temp_dir(self.out, step)
        return world.agree(lambda: checkpoint.save_optimizer_shards(tmp, optimizer))

    # the loop -----------------------------------------------------------------------------------

    def train_step(self) -> Launched:
        """Launch one optimizer step over the world's batch; its statistics stay on the device,
        summed over ranks, until `_settle` reads them (on a GPU, while the next step runs)."""
        cfg = self.cfg
        set_lr(self.optimizers, lr_multiplier(self.step, cfg.steps, cfg.optim))
        total = torch.zeros((), device=self.device)
        batches = [self._device_batch() for _ in range(self.grad_accum)]  # copied ahead, while the GPU works
        for micro, (x, y) in enumerate(batches):
            with self.autocast(), distributed.syncing(self.forward, sync=micro == self.grad_accum - 1):
                loss = self.forward(x, y, schedule=self.schedule, return_logits=False).loss
                (loss / self.grad_accum).backward()
            total += loss.detach() / self.grad_accum
        grad_norm = torch.zeros((), device=self.device)
        if cfg.optim.grad_clip:
            grad_norm = _replicated(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip))
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.tokens_per_step
        # the largest weight is finite iff every weight is: one collective for every check
        local = [t for t in map(distributed.local, self.model.parameters()) if t.numel()]  # shards may be empty
        largest = torch.nn.utils.get_total_norm(local, norm_type=float("inf"))
        interrupted = torch.tensor(float(self.interrupted.is_set()), device=self.device)
        stats = self.world.all_sum(torch.stack([total, largest.to(total), interrupted, grad_norm.to(total)]))
        return Launched(self.step, self.tokens, stats)

    def _device_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch on the device: from pinned memory without waiting, on a GPU."""
        x, y = self.loader.next_batch()
        if self.device.type != "cuda":
            return x.to(self.device), y.to(self.device)
        return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in (x, y))

    def _settle(self, launched: Launched, bar) -> float:
        """Read a launched step's statistics (the host waits for it here, and only here): stop
        (Diverged) if its loss or weights are not finite on any rank, before anything of it is
        logged or saved; note a Ctrl-C on any rank; log it. Its mean loss."""
        loss, largest, interrupted, grad_norm = launched.stats.tolist()
        loss, grad_norm = loss / self.world.size, grad_norm / self.world.size
        if not (abs(loss) < float("inf") and largest < float("inf")):  # NaN fails both comparisons
            where = self.last_checkpoint or "none (nothing was saved)"
            raise Diverged(
                f"non-finite {'loss' if not abs(loss) < float('inf') else 'weights'} at step {launched.step}; "
                f"the last checkpoint is {where}: lower the learning rates"
            )
        self.stop = self.stop or interrupted > 0  # Ctrl-C on any rank: every rank saves and stops
        now = time.perf_counter()
        dt, self._settled_at = now - self._settled_at, now
        self.train_time += dt
        record = {
            "step": launched.step,
            "kind": "train",
            "loss": loss,
            "tokens": launched.tokens,
            "flops": launched.step * self.flops_per_step,
            "time": self.train_time,
            "tokens_per_s": self.tokens_per_step / dt,
        }
        if self.cfg.optim.grad_clip:
            record["grad_norm"] = grad_norm  # before clipping
        if self.peak_tflops:
            record["mfu"] = self.flops_per_step / dt / (self.peak_tflops * 1e12 * self.world.size)
        self._log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
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
        """Steps to cfg.steps. A step's numbers are read while the next one runs, except at a step
        whose numbers are needed at once: validation, a checkpoint, the last step, a Ctrl-C."""
        cfg = self.cfg
        self._settled_at = time.perf_counter()
        pending = None
        while self.step < cfg.steps:
            launched = self.train_step()
            if pending is not None:
                self._settle(pending, bar)
            pending = launched
            if self.overlap and not (self.stop or self._boundary(launched.step)):
                continue
            loss = self._settle(pending, bar)
            pending = None
            if self.stop:
                raise Interrupted(
                    f"interrupted: saved step {self.step} to {self.save()}; continue with lrt train --resume {self.out}"
                )
            if (self.step % cfg.eval_every == 0 or self.step in cfg.exact_at) and self.step < cfg.steps:
                bar.set_postfix(loss=f"{loss:.3f}", val_bpb=f"{self._log_eval()['val_bpb']:.4f}")
            periodic = cfg.save_every and self.step % cfg.save_every == 0
            if (periodic or self.step in cfg.save_at) and self.step < cfg.steps:
                self.save()
            self._settled_at = time.perf_counter()  # validation and saving are not training time

    def _boundary(self, step: int) -> bool:
        """Whether something needs this step's numbers before the next step starts."""
        cfg = self.cfg
        return (
            step >= cfg.steps
            or step % cfg.eval_every == 0
            or step in cfg.exact_at
            or step in cfg.save_at
            or bool(cfg.save_every and step % cfg.save_every == 0)
        )


@dataclass
class Launched:
    """A step launched: its number, the tokens trained after it, its statistics on the device."""

    step: int
    tokens: int
    stats: torch.Tensor


def _replicated(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP2's is a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@contextlib.contextmanager
def interrupt_after_step(event: threading.Event):
    """While training: the first Ctrl-C or SIGTERM (what kill, docker, SLURM and Kubernetes send)
    sets the event (the loop finishes its step, saves and stops); a second one acts as it would
    have without us. Off the main thread, signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    signals = (signal.SIGINT, signal.SIGTERM)

    def handler(signum, frame):
        event.set()
        for sig, before in zip(signals, previous):
            signal.signal(sig, before)

    previous = [signal.signal(sig, handler) for sig in signals]
    try:
        yield event
    finally:
        for sig, before in zip(signals, previous):
            signal.signal(sig, before)
