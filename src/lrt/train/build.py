"""Building a training run: everything the loop (trainer.py) reads, made once before its first step.

`build_run` works in two phases on every rank of a torchrun launch. First what each rank reads and
builds on its own (tokenizer, model config, schedule, data, model, a resumed checkpoint's record
and tensors), under `world.agree`: a failure on any rank stops every rank (that one with its error,
the others quietly).
Then what takes collectives (DDP/FSDP2 wrapping, loading the resumed state), which only runs
once every rank got that far. Last, rank 0 claims the run folder, under its lock from then on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import torch

from ..budget import Arm, tokens_per_step
from ..config import LRTConfig
from ..data import PackedLoader, train_val_sources, validation_rows
from ..data.sources import earliest
from ..data.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_reference
from ..model import LRT, compile_model
from ..schedules import Schedule, check_schedule_for, reads_memory
from . import checkpoint, distributed, init_from
from .config import TrainConfig
from .curves import read_metrics
from .distributed import World
from .optim import build_optimizers, optimizer_kinds
from .run_folder import RunFolder


@dataclass(frozen=True)
class Start:
    """Where the loop starts: step 0, or where a resumed checkpoint left off."""

    step: int = 0
    tokens: int = 0
    train_time: float = 0.0
    finished: bool = False  # resumed from this run's final checkpoint (killed before it exited)

    @classmethod
    def of(cls, record: dict, steps: int) -> "Start":
        """A final checkpoint is finished only if it reached `steps`: more --steps continue it."""
        return cls(
            record["step"],
            record["tokens"],
            record["train_time"],
            record.get("final", False) and record["step"] >= steps,
        )


@dataclass(frozen=True)
class RunParts:
    """What a training run is made of. The loop only reads these; what it changes as it goes
    (step, tokens, time) is the Trainer's."""

    cfg: TrainConfig
    world: World
    device: torch.device
    folder: RunFolder  # rank 0 holds its lock until Trainer.close()
    tokenizer: Tokenizer
    config: LRTConfig
    schedule: Schedule
    grad_accum: int  # micro-batches per optimizer step
    loader: PackedLoader  # this rank's part of the training data
    val_rows: torch.Tensor
    model: LRT
    forward: torch.nn.Module  # the model as the step calls it: wrapped for DDP or FSDP2 in a launch
    optimizers: list[torch.optim.Optimizer]
    start: Start
    resumed: Path | None  # the checkpoint this run continues

    @property
    def out(self) -> Path:
        return self.folder.path

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def seq_len(self) -> int:
        return self.config.sequence_len

    @cached_property
    def arm(self) -> Arm:
        """The run as matched compute counts it: the whole world's step, in tokens and FLOPs."""
        tokens = tokens_per_step(
            world_size=self.world.size,
            batch_size=self.cfg.batch_size,
            accumulation=self.grad_accum,
            seq_len=self.seq_len,
        )
        return Arm(self.config, self.schedule, tokens)

    @property
    def tokens_per_step(self) -> int:
        return self.arm.tokens_per_step

    @property
    def flops_per_step(self) -> float:
        return self.arm.flops_per_step

    @cached_property
    def token_bytes(self) -> torch.Tensor:
        return self.tokenizer.token_bytes()


class Saved(NamedTuple):
    """A resumed checkpoint as read before anything is built from it."""

    record: dict  # checkpoint.json
    state: dict  # the training state, tensors in place
    weights: dict[str, torch.Tensor]
    shards: Path | None  # the folder of the optimizer's shards (a run under torchrun), checked


class RankParts(NamedTuple):
    """What each rank reads and builds on its own (build_run's first phase)."""

    mode: str  # how the model is spread over the world (distributed.parallel_mode)
    tokenizer: Tokenizer
    config: LRTConfig
    schedule: Schedule
    grad_accum: int
    loader: PackedLoader
    val_rows: torch.Tensor
    model: LRT
    saved: Saved | None


def build_run(cfg: TrainConfig, resume: str | None = None) -> RunParts:
    """The parts of the run `cfg` describes, continuing the checkpoint or run folder `resume`; the
    parts' cfg is the one the run records (`cfg` itself is left as it was)."""
    world, device = distributed.setup(cfg.device, cfg.backend)
    folder = RunFolder(Path(cfg.out))
    resumed = None if resume is None else checkpoint.resolve(resume)
    if cfg.init_from is not None and resumed is None:  # the run records the very checkpoint it starts from
        cfg = replace(cfg, init_from=str(checkpoint.resolve(cfg.init_from).resolve()))
    # what each rank reads and builds on its own: a failure anywhere stops every rank
    local = world.agree(lambda: _build_on_rank(cfg, world, device, resumed))
    # wrapping and restoring take collectives, so they come once every rank has its parts
    # a run that never reads memory leaves the memory weights without gradients, which DDP must expect
    reads = reads_memory(local.config, local.schedule, local.config.sequence_len)
    forward = distributed.wrap(
        local.model, local.mode, device, bf16=cfg.dtype == "bfloat16", unused_parameters=not reads
    )
    optimizers = build_optimizers(local.model, cfg.optim)
    start = Start() if local.saved is None else Start.of(local.saved.record, cfg.steps)
    parts = RunParts(
        cfg,
        world,
        device,
        folder,
        local.tokenizer,
        local.config,
        local.schedule,
        local.grad_accum,
        local.loader,
        local.val_rows,
        local.model,
        forward,
        optimizers,
        start,
        resumed,
    )
    if local.saved is not None:
        _restore(parts, local.saved)
    # the run folder is rank 0's, touched from here on under its lock
    world.agree(lambda: _claim_folder(parts) if world.main else None)
    return parts


def _build_on_rank(cfg: TrainConfig, world: World, device: torch.device, resumed: Path | None) -> RankParts:
    """In a fixed order: the seed comes before anything draws random numbers (the same initial
    weights on every rank, run after run), and the first check that fails is the error reported."""
    mode = distributed.parallel_mode(cfg.parallel, world)
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    record = None if resumed is None else checkpoint.read_record(resumed)
    # a run started from weights (not when it resumes: its checkpoint has them by then)
    source = None if cfg.init_from is None or resumed is not None else init_from.source_of(cfg.init_from)
    if resumed is not None:
        tokenizer = _own_tokenizer(cfg, resumed, record)
    elif source is not None:
        tokenizer = init_from.source_tokenizer(cfg.tokenizer, *source)
    else:
        tokenizer = load_tokenizer(cfg.tokenizer)
    # a run started from weights takes its model's shape from them (on resume: from its own checkpoint)
    shaped_by = None if cfg.init_from is None else (record if resumed is not None else source[1])
    source_config = None if shaped_by is None else LRTConfig.from_dict(shaped_by["config"])
    config = cfg.model_config(tokenizer.vocab_size, tokenizer.bos_id, source=source_config)
    if source is not None:
        init_from.check_backbone(source_config, config, source[0])
    schedule = cfg.make_schedule()
    check_schedule_for(config, schedule)
    grad_accum = cfg.accumulation(world.size, config.sequence_len)
    train_source, val_source = train_val_sources(cfg.data, cfg.val_data)
    # the seed orders the documents too: two runs with one seed (a baseline and an LRT) read the same batches
    loader = PackedLoader(
        train_source,
        tokenizer,
        cfg.batch_size,
        config.sequence_len,
        rank=world.rank,
        world_size=world.size,
        seed=cfg.seed,
    )
    val_rows = validation_rows(val_source, tokenizer, config.sequence_len, cfg.eval_tokens)
    model = LRT(config, attention=cfg.attention, activation_checkpointing=cfg.activation_checkpointing, device=device)
    if source is not None:
        init_from.load_initial_weights(model, source[0])
    if cfg.embeddings_bf16:
        model.embeddings_to_bf16()
    if cfg.compile:
        compile_model(model)
    saved = None if resumed is None else _read_resumable(cfg, resumed, record, config, device)
    return RankParts(mode, tokenizer, config, schedule, grad_accum, loader, val_rows, model, saved)


def _own_tokenizer(cfg: TrainConfig, path: Path, record: dict) -> Tokenizer:
    """A resumed run's tokenizer is the copy in its checkpoint; a --tokenizer naming another file
    must have the same content."""
    own = tokenizer_from_reference(record["tokenizer"], path)
    if cfg.tokenizer != record.get("train_config", {}).get("tokenizer"):
        given = load_tokenizer(cfg.tokenizer)
        if given.reference() != own.reference():
            raise ValueError(
                f"tokenizer {cfg.tokenizer} differs from the one checkpoint {path} was trained "
                "with (content hash): a run keeps its tokenizer"
            )
    return own


def _read_resumable(cfg: TrainConfig, path: Path, record: dict, config: LRTConfig, device: torch.device) -> Saved:
    """What can be checked before any rank loads anything: the model and the optimizer kinds."""
    saved = LRTConfig.from_dict(record["config"])
    if saved != config:
        diff = [
            f"{k}: checkpoint {v!r}, this run {getattr(config, k)!r}"
            for k, v in saved.to_dict().items()
            if v != config.to_dict()[k]
        ]
        raise ValueError(f"checkpoint {path} config does not match this run ({'; '.join(diff)})")
    missing = [key for key in ("train_config", "tokens", "train_time") if key not in record]
    if missing:  # what evaluation does not need, but a resumed run does
        raise ValueError(f"checkpoint {path / 'checkpoint.json'} cannot be resumed: it has no {', '.join(missing)}")
    state = checkpoint.load_train_state(path, record)
    weights = checkpoint.load_weights(path)
    shards = checkpoint.optimizer_shards(path, state)
    kinds = state.get("optimizer_kinds")
    if kinds is None:
        raise ValueError(
            f"checkpoint {path} was written by an older lrt, whose training state this one cannot "
            "resume (evaluation and generation still read it)"
        )
    if kinds != optimizer_kinds(cfg.optim, device):
        raise ValueError(f"checkpoint {path} was trained with {'+'.join(kinds)}: --optimizer cannot change on resume")
    return Saved(record, state, weights, shards)


def _restore(parts: RunParts, saved: Saved) -> None:
    """Weights and optimizer moments through torch.distributed.checkpoint (any world size, any
    parallel mode); the rates and weight decay from this run's config, so learning-rate flags
    given with --resume apply; the data stream where it stopped, on any world size (an older lrt's
    run, whose ranks read parts of the stream: at its ranks' earliest position)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(parts.model, saved.weights, options=StateDictOptions(full_state_dict=True))
    base = [[(g["lr"], g["weight_decay"]) for g in opt.param_groups] for opt in parts.optimizers]
    optimizer, options = _saved_optimizer(parts, saved)
    set_optimizer_state_dict(parts.model, parts.optimizers, optimizer, options=options)
    for opt, groups in zip(parts.optimizers, base):
        for group, (lr, weight_decay) in zip(opt.param_groups, groups):
            group["initial_lr"], group["weight_decay"] = lr, weight_decay
    loaders, world = saved.state["loaders"], parts.world
    if len(loaders) == world.size:
        checkpoint.set_rng_state(saved.state["rngs"][world.rank])
    if all(same_loader_state(s, loaders[0]) for s in loaders):  # one global stream: continue it exactly
        parts.loader.load_state_dict(loaders[0])
    else:  # an older lrt's run, whose ranks read disjoint parts of the stream
        parts.loader.restart(earliest([s["position"] for s in loaders if s["position"] is not None] or [{}]))


def _saved_optimizer(parts: RunParts, saved: Saved):
    """The optimizer state dict to restore and its StateDictOptions: whole (a one-process run's
    checkpoint), or this run's own sharded state dict with the checkpoint's shards read into it
    (DCP reshards from the world size that wrote them to this one)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if saved.shards is None:
        return saved.state["optimizer"], StateDictOptions(full_state_dict=True)
    template = get_optimizer_state_dict(parts.model, parts.optimizers)
    return checkpoint.load_optimizer_shards(saved.shards, saved.state["optimizer"], template), StateDictOptions()


def same_loader_state(a: dict, b: dict) -> bool:
    return a["position"] == b["position"] and all(torch.equal(a[k], b[k]) for k in ("buffer_tokens", "buffer_lengths"))


def batch_change(record: dict, world_size: int, tokens_per_step: int) -> str | None:
    """What to tell a user resuming a checkpoint (its record) on another world size whose global
    batch it changes; None when it does not (--total-batch-size keeps it)."""
    before_world, step = record.get("world_size", world_size), record.get("step", 0)
    if before_world == world_size or not step or record.get("tokens", 0) // step == tokens_per_step:
        return None
    return (
        f"note: this run trained on {before_world} process(es) and continues on {world_size}: its global "
        f"batch changes from {record['tokens'] // step:,} to {tokens_per_step:,} tokens per step "
        "(give --total-batch-size to keep it)"
    )


def _claim_folder(parts: RunParts) -> None:
    """Lock the run folder, checking before and after that it is this run's to write."""
    resumed_from = None if parts.resumed is None else parts.resumed.parents[1]
    parts.folder.check_owner(resumed_from)
    parts.folder.acquire()
    try:
        parts.folder.check_owner(resumed_from)  # again, now that no one else can write it
        if resumed_from is not None and parts.folder.path.resolve() == resumed_from.resolve():
            aside = parts.folder.set_aside_after(parts.start.step)
            if aside is not None:
                print(f"lrt: rewound to step {parts.start.step}; the later checkpoints are in {aside}", file=sys.stderr)
        _truncate_metrics(parts.metrics_path, parts.start.step)
    except BaseException:
        parts.folder.release()
        raise


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop what a crashed run logged after its last checkpoint (a torn last line
    included); a fresh run has none (its folder holds no run)."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
