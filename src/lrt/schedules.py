"""Training schedules as data, and the one routine that runs them (LRT_SPEC section 4).

Training cannot unroll the recurrence token by token, so a schedule approximates the memory
m_t with a plan of passes over a shared buffer of keys, values and source states:

- a *pass* is a list of *steps* run in order, and the unit of the loss: the loss is the weighted
  mean over passes of each pass's mean token loss;
- a *step* computes a set of positions, with memory that is zero, read from the buffer's latest
  source state at t-1 ("previous"), or read so only at the first position of the step
  ("boundary", the chunked ablation). It attends to the buffer's keys and values, with its own
  fresh ones at its positions, and writes its keys, values and source states back.

Writes are out of place, so gradients flow through the buffer into the steps that filled it.

The built-in schedules serialise to a short spec string (`Interleaved(subsets=2).spec` is
"interleaved:2", `parse_schedule` reads it back), the one form the command line, checkpoints,
`lrt bench` and study specs use.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .attention import KVBuffer

# where a step's m_t comes from (a step-level rule; how a whole row was read is memory.MEMORY_MODES)
STEP_MEMORY = ("zero", "previous", "boundary")


@dataclass(frozen=True)
class Step:
    positions: range
    memory: str = "previous"

    def __post_init__(self):
        if self.memory not in STEP_MEMORY:
            raise ValueError(f"Step.memory must be one of {STEP_MEMORY}, got {self.memory!r}")


def _check_count(name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_at_most(name: str, value: int, T: int) -> None:
    if value > T:
        raise ValueError(f"{name} must be in 1..{T} (the sequence length), got {value}")


@dataclass(frozen=True)
class Schedule:
    """Base class: subclasses define `plan(T)`, the passes for sequence length T.
    `weights` (one per pass) weight the pass losses; None weighs them equally."""

    weights: tuple[float, ...] | None = field(default=None, kw_only=True)
    name: ClassVar[str | None] = None  # the spec's name; None: a custom schedule, without a spec

    def __post_init__(self):
        if self.name is not None:  # a built-in schedule's one parameter (S, K, C) is a count
            for f in _parameters(type(self)):
                _check_count(f.name, getattr(self, f.name))
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights!r}")
            object.__setattr__(self, "weights", weights)

    def plan(self, T: int) -> list[list[Step]]:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """The short string naming this schedule, e.g. "interleaved:2"; `parse_schedule` reads it."""
        if self.name is None:
            raise ValueError(f"{type(self).__name__} is a custom schedule: only the built-in ones have a spec string")
        if self.weights is not None:
            raise ValueError("a schedule with pass weights has no spec string")
        return ":".join([self.name, *(str(getattr(self, f.name)) for f in _parameters(type(self)))])


@dataclass(frozen=True)
class Baseline(Schedule):
    """One zero-memory pass: the plain transformer's training."""

    name = "baseline"

    def plan(self, T):
        return [[Step(range(T), "zero")]]


@dataclass(frozen=True)
class Interleaved(Schedule):
    """The paper's default: a zero-memory pass fills the buffer, then the positions t with
    t mod S == i are recomputed for i = 0..S-1 with memory from the buffer. S = T is exact."""

    name = "interleaved"
    subsets: int = 2

    def plan(self, T):
        _check_at_most("subsets", self.subsets, T)
        return [[Step(range(T), "zero")]] + [[Step(range(i, T, self.subsets))] for i in range(self.subsets)]


@dataclass(frozen=True)
class MultiRefine(Schedule):
    """A zero-memory pass, then K full passes each fed the previous pass's shifted source states.
    K >= T - 1 is exact."""

    name = "multirefine"
    passes: int = 1

    def plan(self, T):
        return [[Step(range(T), "zero")]] + [[Step(range(T))] for _ in range(self.passes)]


@dataclass(frozen=True)
class Chunked(Schedule):
    """Chunks of C positions in order; memory crosses only chunk boundaries. One pass, T/C steps."""

    name = "chunked"
    chunk: int = 64

    def plan(self, T):
        return [[Step(range(c, min(c + self.chunk, T)), "boundary") for c in range(0, T, self.chunk)]]


@dataclass(frozen=True)
class Sequential(Schedule):
    """The exact recurrence, one position per step, with backpropagation through time."""

    name = "sequential"

    def plan(self, T):
        return [[Step(range(t, t + 1)) for t in range(T)]]


@dataclass(frozen=True)
class Jacobi(Schedule):
    """PonderLM-2's parallel training (ponder.py): first guesses of the latent thoughts, then N
    Jacobi passes that recompute them all, then a pass that predicts the tokens. Not a plan of LRT
    steps: it runs only on a model with latent thoughts, which runs no other (besides sequential)."""

    name = "jacobi"
    iterations: int = 3

    def plan(self, T):
        raise ValueError("schedule jacobi is PonderLM-2's: it runs on a model with latent_thoughts > 0 only")


def default_schedule(config) -> Schedule:
    """What `model(idx)` runs: one zero-memory pass, or PonderLM-2's Jacobi forward."""
    return Jacobi() if config.latent_thoughts else Baseline()


def _parameters(cls) -> list[dataclasses.Field]:
    """A built-in schedule's one integer parameter (S, K, C), or none."""
    return [f for f in dataclasses.fields(cls) if f.name != "weights"]


SCHEDULES = {cls.name: cls for cls in (Baseline, Interleaved, MultiRefine, Chunked, Sequential, Jacobi)}
SCHEDULE_SPECS = (
    "baseline, interleaved[:S] (S=2), multirefine[:K] (K=1), chunked[:C] (C=64), sequential, "
    "jacobi[:N] (N=3, PonderLM-2)"
)


def parse_schedule(spec: "str | Schedule") -> Schedule:
    """A schedule from its spec string: "baseline", "interleaved:4", "multirefine:3", "chunked:64",
    "sequential"; a parameter left out takes its default ("interleaved" is "interleaved:2")."""
    if isinstance(spec, Schedule):
        return spec
    name, *args = str(spec).strip().split(":")
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULE_SPECS}, got {spec!r}")
    params = _parameters(SCHEDULES[name])
    if len(args) > len(params):
        raise ValueError(f"schedule {name} takes {'no parameter' if not params else 'one parameter'}, got {spec!r}")
    values = {}
    for f, arg in zip(params, args):
        try:
            values[f.name] = int(arg)
        except ValueError:
            raise ValueError(f"schedule {spec!r}: {f.name} must be an integer, got {arg!r}") from None
    return SCHEDULES[name](**values)


def schedule_label(schedule: Schedule) -> str:
    """The spec string where there is one, else the class name (a custom schedule)."""
    return schedule.spec if schedule.name is not None and schedule.weights is None else type(schedule).__name__


@functools.lru_cache(maxsize=64)
def checked_plan(schedule: Schedule, T: int) -> tuple[tuple[Step, ...], ...]:
    """The schedule's passes for length T, checked to never read what no earlier step wrote."""
    passes = schedule.plan(T)
    if schedule.weights is not None and len(schedule.weights) != len(passes):
        raise ValueError(f"weights must give one weight per pass ({len(passes)}), got {len(schedule.weights)}")
    written = np.zeros(T, dtype=bool)
    for steps in passes:
        in_pass = np.zeros(T, dtype=bool)
        for step in steps:
            pos = np.asarray(step.positions)
            if len(pos) == 0 or pos.min() < 0 or pos.max() >= T or np.any(in_pass[pos]):
                raise ValueError(f"{type(schedule).__name__}: a pass must compute distinct positions in 0..{T - 1}")
            mine = np.zeros(T, dtype=bool)
            mine[pos] = True
            if not np.all((written | mine)[: pos.max() + 1]):
                raise ValueError(f"{type(schedule).__name__}: step {step} attends to positions nothing has computed")
            reads = (
                pos[pos >= 1]
                if step.memory == "previous"
                else pos[:1][pos[:1] >= 1]
                if step.memory == "boundary"
                else pos[:0]
            )
            if not np.all(written[reads - 1]):
                raise ValueError(f"{type(schedule).__name__}: step {step} reads memory nothing has computed")
            in_pass |= mine
            written |= mine
    return tuple(tuple(steps) for steps in passes)


def check_schedule_for(config, schedule: Schedule) -> None:
    """That `config` can train with `schedule` over its sequence: LRT's schedules need the pathway,
    a plain or looped transformer trains with baseline, and PonderLM-2 with jacobi (or its exact
    sequential recurrence) only."""
    label = schedule_label(schedule)
    if config.latent_thoughts:
        if not isinstance(schedule, (Jacobi, Sequential)):
            raise ValueError(
                f"a PonderLM-2 model (latent_thoughts > 0) trains with jacobi[:N] (parallel) or sequential "
                f"(its exact recurrence), got {label}"
            )
        return
    if isinstance(schedule, Jacobi):
        raise ValueError("schedule jacobi is PonderLM-2's: it needs a model with latent_thoughts > 0")
    checked_plan(schedule, config.sequence_len)  # a schedule the sequence cannot take fails now
    if not isinstance(schedule, Baseline) and config.injection == "none":
        raise ValueError(f"schedule {label} needs a recurrent pathway, but the model has injection='none'")


def reads_memory(config, schedule: Schedule, T: int) -> bool:
    """Whether training with `schedule` uses the pathway's memory weights (Wk, Wv, g): a plan
    with no step that reads memory leaves them without gradients (DDP must be told)."""
    if config.injection == "none":
        return True  # there are no pathway weights to leave unused
    return any(
        step.memory == "previous" or (step.memory == "boundary" and step.positions.start > 0)
        for steps in checked_plan(schedule, T)
        for step in steps
    )


def merge_passes(per_pass: list[tuple[torch.Tensor, torch.Tensor]], T: int) -> torch.Tensor:
    """(B, T, ...) values where each position comes from the last pass that computed it."""
    covered = torch.zeros(T, dtype=torch.bool, device=per_pass[0][0].device)
    kept_pos, kept = [], []
    for pos, values in reversed(per_pass):
        keep = ~covered[pos]
        kept_pos.append(pos[keep])
        kept.append(values[:, keep])
        covered[pos] = True
    order = torch.cat(kept_pos).argsort()
    return torch.cat(kept, dim=1)[:, order]


@dataclass
class ScheduleOutput:
    """What a schedule's passes computed. The logits are computed from the final hidden states
    when first read (`head` is the model's LM head in the grad and autocast modes of the forward),
    so a training step, which reads only the loss, never holds (B, T, vocab) logits of its passes."""

    loss: torch.Tensor | None  # weighted mean of the pass losses
    per_pass_losses: list[torch.Tensor]  # each pass's mean token loss
    pass_hidden: list[tuple[torch.Tensor, torch.Tensor]]  # per pass: positions (n,), hidden states (B, n, d)
    length: int  # T, the positions of the row
    head: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    @functools.cached_property
    def hidden(self) -> torch.Tensor | None:
        """(B, T, d): each position's final hidden state from the last pass that computed it."""
        return merge_passes(self.pass_hidden, self.length) if self.pass_hidden else None

    @functools.cached_property
    def pass_logits(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per pass: positions (n,), logits (B, n, vocab)."""
        return [(pos, self.head(h)) for pos, h in self.pass_hidden]

    @functools.cached_property
    def logits(self) -> torch.Tensor | None:
        """(B, T, vocab): each position from the last pass that computed it (None without hidden states)."""
        return None if self.hidden is None else self.head(self.hidden)


def read_memory(buffer: KVBuffer, step: Step) -> torch.Tensor | None:
    """m_t = the buffer's source state at t-1 where the step's memory rule reads it, else 0.
    Positions form a range, so the reads are a strided slice of the buffer (no gather)."""
    r = step.positions
    if step.memory == "zero" or buffer.source is None or (step.memory == "boundary" and r.start == 0):
        return None
    source = buffer.source
    if step.memory == "boundary":  # only the first position reads; the rest of the chunk gets 0
        first = source[:, r.start - 1 : r.start]
        return torch.cat([first, first.new_zeros(first.size(0), len(r) - 1, first.size(2))], dim=1)
    if r.start >= 1:  # contiguous, as the branch below: the subset passes of a schedule share compiled graphs
        return source[:, r.start - 1 : r.stop - 1 : r.step].contiguous()
    rest = source[:, r.step - 1 : r.stop - 1 : r.step]  # m_0 = 0 for position 0
    return torch.cat([rest.new_zeros(rest.size(0), 1, rest.size(2)), rest], dim=1)


@dataclass
class Rows:
    """The embeddings of a batch's rows, looked up once for all the passes of a schedule: the
    normed token embeddings (B, T, d) and the value embeddings by layer."""

    x0: torch.Tensor
    ves: dict[str, torch.Tensor]

    def at(self, pos: torch.Tensor, full: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if full:
            return self.x0, self.ves
        return self.x0[:, pos], {layer: ve[:, pos] for layer, ve in self.ves.items()}


def run_step(
    model, idx: torch.Tensor, step: Step, buffer: KVBuffer, rows: Rows | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute one step's positions of `idx` (B, T) over `buffer`: (positions, final hidden states).
    `rows`: the embeddings of `idx`, looked up once for every step of a schedule."""
    T = idx.size(1)
    r = step.positions
    pos = torch.arange(r.start, r.stop, r.step, device=idx.device)
    full = r == range(T)
    memory = read_memory(buffer, step)
    x0, ves = (None, None) if rows is None else rows.at(pos, full)
    h, source = model.forward_positions(idx[:, pos], pos, memory, buffer, full=full, span=r, inputs=x0, ves=ves)
    buffer.write_source(pos, source, full)
    return pos, h


def run_schedule(
    model,
    idx: torch.Tensor,
    schedule: Schedule,
    *,
    targets: torch.Tensor | None = None,
    return_logits: bool = True,
    buffer: KVBuffer | None = None,
) -> ScheduleOutput:
    """Run the schedule's passes over `buffer` (default: a fresh out-of-place one, as training
    needs). With targets, each pass's mean token loss; with return_logits, the hidden states that
    the output's logits are computed from."""
    B, T = idx.shape
    plan = checked_plan(schedule, T)
    buffer = buffer if buffer is not None else KVBuffer(model.config.cache_layers, T, kept=sum(map(len, plan)) > 1)
    losses, pass_hidden = [], []
    rows = Rows(model.embed(idx), model.value_embeddings(idx))
    for steps in plan:
        nll, count, parts = 0.0, 0, []
        for step in steps:
            pos, h = run_step(model, idx, step, buffer, rows)
            if targets is not None:
                tgt = targets[:, pos]
                nll = nll + model.head_nll(h, tgt)
                count = count + (tgt != -1).sum()
            if return_logits:
                parts.append((pos, h))
        if targets is not None:
            losses.append(nll / count.clamp(min=1))
        if return_logits:
            pass_hidden.append((torch.cat([p for p, _ in parts]), torch.cat([h for _, h in parts], dim=1)))
    loss = None
    if targets is not None:
        w = schedule.weights or (1.0,) * len(losses)
        loss = sum(wi * li for wi, li in zip(w, losses)) / sum(w)
    return ScheduleOutput(loss, losses, pass_hidden, T, model.deferred_head(idx.device.type) if return_logits else None)


def describe_pass(steps, T: int) -> str:
    """A short description of a pass, e.g. 'zero memory, all positions'."""
    memory = {"zero": "zero memory", "previous": "memory from the buffer", "boundary": "memory at chunk starts"}
    if len(steps) > 1:
        return f"{len(steps)} sequential steps, {memory[steps[0].memory]}"
    r = steps[0].positions
    where = (
        "all positions"
        if r == range(T)
        else f"positions t mod {r.step} == {r.start}"
        if r.step > 1
        else f"positions {r.start}..{r.stop - 1}"
    )
    return f"{memory[steps[0].memory]}, {where}"
