"""The training loop: data -> model -> schedule -> optimizer, with validation, metrics,
checkpoints and exact resumption, on one process or on every rank of a torchrun launch (DDP or
FSDP2, distributed.py): each rank reads its own part of the data, the loss, the validation sums and
the checks are all-reduced, and rank 0 writes the run folder.

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

from . import checkpoint, distributed
from .config import LRTConfig
from .data import PackedLoader, train_val_sources, validation_rows
from .data.sources import earliest
from .evaluate import evaluate_bpb
from .flops import training_flops_per_sequence
from .memory import Memory
from .model import LRT, compile_model
from .optim import build_optimizers, lr_multiplier, optimizer_kinds, set_lr
from .plots import plot_run, read_metrics
from .run_folder import RunFolder
from .schedules import checked_plan, reads_memory
from .tokenizer import load_tokenizer, tokenizer_from_reference
from .train_config import TrainConfig


class TrainingStopped(Exception):
    """The run stopped before its last step; `str()` says why and where its last checkpoint is."""


class Diverged(TrainingStopped, ValueError):
    """The loss or the weights became non-finite (a bad input such as a learning rate: exit 2)."""


class Interrupted(TrainingStopped):
    """Ctrl-C: the step in flight finished and a checkpoint was saved."""


class Trainer:
    """One training run, on one process or on every rank of a torchrun launch (DDP or FSDP2)."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.world, self.device = distributed.setup(cfg.device, cfg.backend)
        self.folder = RunFolder(self.out)
        # what each rank reads and builds on its own: a failure anywhere stops every rank
        resumed = None if resume is None else checkpoint.resolve(resume)
        self.world.agree(lambda: self._build(resumed))
        self.forward = distributed.wrap(self.model, self.mode, self.device, bf16=cfg.dtype == "bfloat16",
                                        unused_parameters=not reads_memory(self.config, self.schedule, self.seq_len))
        self.optimizers = build_optimizers(self.model, cfg.optim)
        self.step, self.tokens, self.train_time, self.finished = 0, 0, 0.0, False
        self.interrupted, self.stop = threading.Event(), False  # set by Ctrl-C while training
        if resumed is not None:
            self._resume(resumed)
        # the run folder is rank 0's, touched from here on under its lock
        resumed_from = None if resumed is None else resumed.parents[1]
        self.world.agree(lambda: self._claim_folder(resumed_from) if self.world.main else None)
        self.last_checkpoint = resumed

    def _build(self, resumed: Path | None) -> None:
        cfg = self.cfg
        self.mode = distributed.parallel_mode(cfg.parallel, self.world)
        torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
        self.record = None if resumed is None else checkpoint.read_record(resumed)
        self.tokenizer = load_tokenizer(cfg.tokenizer) if resumed is None else self._own_tokenizer(resumed)
        self.config = cfg.model_config(self.tokenizer.vocab_size, self.tokenizer.bos_id)
        self.seq_len = self.config.sequence_len
        self.schedule = cfg.make_schedule()
        checked_plan(self.schedule, self.seq_len)  # a schedule the sequence cannot take fails now
        if cfg.schedule != "baseline" and self.config.injection == "none":
            raise ValueError(f"schedule {cfg.schedule} needs a recurrent pathway, but the model has injection='none'")
        self.grad_accum = cfg.accumulation(self.world.size, self.seq_len)
        train_source, val_source = train_val_sources(cfg.data, cfg.val_data)
        self.loader = PackedLoader(train_source, self.tokenizer, cfg.batch_size, self.seq_len, rank=self.world.rank,
                                   world_size=self.world.size)
        self.val_rows = validation_rows(val_source, self.tokenizer, self.seq_len, cfg.eval_tokens)
        self.token_bytes = self.tokenizer.token_bytes()
        # tokens and FLOPs count the whole world's step
        self.tokens_per_step = self.world.size * cfg.batch_size * self.grad_accum * self.seq_len
        per_sequence = training_flops_per_sequence(self.config, self.schedule, self.seq_len)
        self.flops_per_step = per_sequence * self.tokens_per_step / self.seq_len
        self.model = LRT(self.config, attention=cfg.attention, activation_checkpointing=cfg.activation_checkpointing,
                         device=self.device)
        if cfg.compile:
            compile_model(self.model)
        if resumed is not None:
            self._check_resumable(resumed)

    def _claim_folder(self, resumed_from: Path | None) -> None:
        self.folder.check_owner(resumed_from)
        self.folder.acquire()
        try:
            self.folder.check_owner(resumed_from)  # again, now that no one else can write it
            self._truncate_metrics(self.step)
        except BaseException:
            self.folder.release()
            raise

    def close(self) -> None:
        """Release the run folder (also done when training ends)."""
        self.folder.release()

    def _own_tokenizer(self, path: Path):
        """A resumed run's tokenizer is the copy in its checkpoint; a --tokenizer naming another
        file must have the same content."""
        own = tokenizer_from_reference(self.record["tokenizer"], path)
        if self.cfg.tokenizer != self.record.get("train_config", {}).get("tokenizer"):
            given = load_tokenizer(self.cfg.tokenizer)
            if given.reference() != own.reference():
                raise ValueError(f"tokenizer {self.cfg.tokenizer} differs from the one checkpoint {path} was trained "
                                 "with (content hash): a run keeps its tokenizer")
        return own

    def _check_resumable(self, path: Path) -> None:
        """What can be checked before any rank loads anything: the model and the optimizer kinds."""
        saved = LRTConfig.from_dict(self.record["config"])
        if saved != self.config:
            diff = [f"{k}: checkpoint {v!r}, this run {getattr(self.config, k)!r}"
                    for k, v in saved.to_dict().items() if v != self.config.to_dict()[k]]
            raise ValueError(f"checkpoint {path} config does not match this run ({'; '.join(diff)})")
        self.state = checkpoint.load_train_state(path, self.record)
        self.weights = checkpoint.load_weights(path)
        kinds = self.state.get("optimizer_kinds")
        if kinds is None:
            raise ValueError(f"checkpoint {path} was written by an older lrt, whose training state this one cannot "
                             "resume (evaluation and generation still read it)")
        if kinds != optimizer_kinds(self.cfg.optim, self.device):
            raise ValueError(f"checkpoint {path} was trained with {'+'.join(kinds)}: --optimizer cannot change on "
                             "resume")

    def _resume(self, path: Path) -> None:
        """Weights and optimizer moments through torch.distributed.checkpoint's full state dicts
        (any world size, any parallel mode); the rates and weight decay from this run's config, so
        learning-rate flags given with --resume apply; each rank's data position where the world
        size is the same, else the earliest position of the old ranks."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, self.weights, options=options)
        base = [[(g["lr"], g["weight_decay"]) for g in opt.param_groups] for opt in self.optimizers]
        set_optimizer_state_dict(self.model, self.optimizers, self.state["optimizer"], options=options)
        for opt, groups in zip(self.optimizers, base):
            for group, (lr, weight_decay) in zip(opt.param_groups, groups):
                group["initial_lr"], group["weight_decay"] = lr, weight_decay
        loaders = self.state["loaders"]
        if len(loaders) == self.world.size:
            self.loader.load_state_dict(loaders[self.world.rank])
            checkpoint.set_rng_state(self.state["rngs"][self.world.rank])
        else:
            self.loader.restart(earliest([s["position"] for s in loaders if s["position"] is not None] or [{}]))
        self.step, self.tokens = self.record["step"], self.record["tokens"]
        self.train_time = self.record["train_time"]
        self.finished = self.record.get("final", False) and self.step >= self.cfg.steps
        del self.state, self.weights

    # bookkeeping --------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _log(self, record: dict) -> None:
        if self.world.main:
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

    def save(self, final: bool = False) -> Path | None:
        """Every rank hands its part to rank 0 (full state dicts through torch.distributed.checkpoint;
        each rank's data position and RNG), which writes the checkpoint; its path on rank 0."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        state = {
            "optimizer": get_optimizer_state_dict(self.model, self.optimizers, options=options),
            "optimizer_kinds": [type(opt).__name__ for opt in self.optimizers],
            "loaders": self.world.gather(self.loader.state_dict()),
            "rngs": self.world.gather(checkpoint.rng_state()),
        }
        meta = {"train_config": self.cfg.to_dict(), "tokens": self.tokens, "train_time": self.train_time,
                "world_size": self.world.size, "final": final}

        def write():
            return checkpoint.save_checkpoint(self.out, self.step, self.model, tokenizer=self.tokenizer, meta=meta,
                                              state=state, keep=self.cfg.keep, weights=weights)

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
            raise Diverged(f"non-finite {'loss' if not abs(loss) < float('inf') else 'weights'} at step {self.step}; "
                           f"the last checkpoint is {where}: lower the learning rates")
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
        with tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.schedule}",
                  disable=not (progress and self.world.main), dynamic_ncols=True) as bar:  # closed before any error
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
            self._log({"step": self.step, "kind": "train", "loss": loss, "tokens": self.tokens,
                       "flops": self.step * self.flops_per_step, "time": self.train_time})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens_per_step / dt:,.0f}")
            if self.stop:
                raise Interrupted(f"interrupted: saved step {self.step} to {self.save()}; "
                                  f"continue with lrt train --resume {self.out}")
            if (self.step % cfg.eval_every == 0 or self.step in cfg.exact_at) and self.step < cfg.steps:
                bar.set_postfix(loss=f"{loss:.3f}", val_bpb=f"{self._log_eval()['val_bpb']:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
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
