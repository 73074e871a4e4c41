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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .attention import KVBuffer

MEMORY_MODES = ("zero", "previous", "boundary")


@dataclass(frozen=True)
class Step:
    positions: range
    memory: str = "previous"

    def __post_init__(self):
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"Step.memory must be one of {MEMORY_MODES}, got {self.memory!r}")


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

    def __post_init__(self):
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights!r}")
            object.__setattr__(self, "weights", weights)

    def plan(self, T: int) -> list[list[Step]]:
        raise NotImplementedError


@dataclass(frozen=True)
class Baseline(Schedule):
    """One zero-memory pass: the plain transformer's training."""

    def plan(self, T):
        return [[Step(range(T), "zero")]]


@dataclass(frozen=True)
class Interleaved(Schedule):
    """The paper's default: a zero-memory pass fills the buffer, then the positions t with
    t mod S == i are recomputed for i = 0..S-1 with memory from the buffer. S = T is exact."""

    subsets: int = 2

    def __post_init__(self):
        super().__post_init__()
        _check_count("subsets", self.subsets)

    def plan(self, T):
        _check_at_most("subsets", self.subsets, T)
        return [[Step(range(T), "zero")]] + [[Step(range(i, T, self.subsets))] for i in range(self.subsets)]


@dataclass(frozen=True)
class MultiRefine(Schedule):
    """A zero-memory pass, then K full passes each fed the previous pass's shifted source states.
    K >= T - 1 is exact."""

    passes: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check_count("passes", self.passes)

    def plan(self, T):
        return [[Step(range(T), "zero")]] + [[Step(range(T))] for _ in range(self.passes)]


@dataclass(frozen=True)
class Chunked(Schedule):
    """Chunks of C positions in order; memory crosses only chunk boundaries. One pass, T/C steps."""

    chunk: int = 64

    def __post_init__(self):
        super().__post_init__()
        _check_count("chunk", self.chunk)

    def plan(self, T):
        return [[Step(range(c, min(c + self.chunk, T)), "boundary") for c in range(0, T, self.chunk)]]


@dataclass(frozen=True)
class Sequential(Schedule):
    """The exact recurrence, one position per step, with backpropagation through time."""

    def plan(self, T):
        return [[Step(range(t, t + 1)) for t in range(T)]]


@torch.compiler.disable  # plain Python over positions: runs eagerly, its result is a constant to the graph
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
            reads = pos[pos >= 1] if step.memory == "previous" else pos[:1][pos[:1] >= 1] if step.memory == "boundary" else pos[:0]
            if not np.all(written[reads - 1]):
                raise ValueError(f"{type(schedule).__name__}: step {step} reads memory nothing has computed")
            in_pass |= mine
            written |= mine
    return tuple(tuple(steps) for steps in passes)


@dataclass
class ScheduleOutput:
    loss: torch.Tensor | None  # weighted mean of the pass losses
    per_pass_losses: list[torch.Tensor]  # each pass's mean token loss
    pass_logits: list[tuple[torch.Tensor, torch.Tensor]]  # per pass: positions (n,), logits (B, n, V)
    logits: torch.Tensor | None  # (B, T, V), each position from the last pass that computed it


def read_memory(buffer: KVBuffer, step: Step) -> torch.Tensor | None:
    """m_t = the buffer's source state at t-1 where the step's memory mode reads it, else 0.
    Positions form a range, so the reads are a strided slice of the buffer (no gather)."""
    r = step.positions
    if step.memory == "zero" or buffer.source is None or (step.memory == "boundary" and r.start == 0):
        return None
    source = buffer.source
    if step.memory == "boundary":  # only the first position reads; the rest of the chunk gets 0
        first = source[:, r.start - 1 : r.start]
        return torch.cat([first, first.new_zeros(first.size(0), len(r) - 1, first.size(2))], dim=1)
    if r.start >= 1:
        return source[:, r.start - 1 : r.stop - 1 : r.step]
    rest = source[:, r.step - 1 : r.stop - 1 : r.step]  # m_0 = 0 for position 0
    return torch.cat([rest.new_zeros(rest.size(0), 1, rest.size(2)), rest], dim=1)


def run_step(model, idx: torch.Tensor, step: Step, buffer: KVBuffer) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute one step's positions of `idx` (B, T) over `buffer`: (positions, final hidden states)."""
    T = idx.size(1)
    r = step.positions
    pos = torch.arange(r.start, r.stop, r.step, device=idx.device)
    full = r == range(T)
    memory = read_memory(buffer, step)
    h, source = model.forward_positions(idx[:, pos], pos, memory, buffer, full=full, span=r)
    buffer.write_source(pos, source, full)
    return pos, h


def run_schedule(model, idx, targets, schedule: Schedule, return_logits: bool = True) -> ScheduleOutput:
    B, T = idx.shape
    buffer = KVBuffer(model.config.n_layer, T)
    losses, pass_logits = [], []
    for steps in checked_plan(schedule, T):
        nll, count, parts = 0.0, 0, []
        for step in steps:
            pos, h = run_step(model, idx, step, buffer)
            logits = model.head(h)
            if targets is not None:
                tgt = targets[:, pos]
                nll = nll + F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-1, reduction="sum")
                count = count + (tgt != -1).sum()
            if return_logits:
                parts.append((pos, logits))
        if targets is not None:
            losses.append(nll / count.clamp(min=1))
        if return_logits:
            pass_logits.append((torch.cat([p for p, _ in parts]), torch.cat([l for _, l in parts], dim=1)))
    loss = None
    if targets is not None:
        w = schedule.weights or (1.0,) * len(losses)
        loss = sum(wi * li for wi, li in zip(w, losses)) / sum(w)
    return ScheduleOutput(loss, losses, pass_logits, merge_logits(pass_logits, T) if return_logits else None)


def merge_logits(pass_logits: list[tuple[torch.Tensor, torch.Tensor]], T: int) -> torch.Tensor:
    """(B, T, V) logits where each position comes from the last pass that computed it."""
    covered = torch.zeros(T, dtype=torch.bool, device=pass_logits[0][0].device)
    kept_pos, kept_logits = [], []
    for pos, logits in reversed(pass_logits):
        keep = ~covered[pos]
        kept_pos.append(pos[keep])
        kept_logits.append(logits[:, keep])
        covered[pos] = True
    order = torch.cat(kept_pos).argsort()
    return torch.cat(kept_logits, dim=1)[:, order]


def describe_pass(steps, T: int) -> str:
    """A short description of a pass, e.g. 'zero memory, all positions'."""
    memory = {"zero": "zero memory", "previous": "memory from the buffer", "boundary": "memory at chunk starts"}
    if len(steps) > 1:
        return f"{len(steps)} sequential steps, {memory[steps[0].memory]}"
    r = steps[0].positions
    where = "all positions" if r == range(T) else f"positions t mod {r.step} == {r.start}" if r.step > 1 else f"positions {r.start}..{r.stop - 1}"
    return f"{memory[steps[0].memory]}, {where}"


SCHEDULE_NAMES = ("baseline", "interleaved", "multirefine", "chunked", "sequential")


def make_schedule(name: str, subsets: int = 2, passes: int = 1, chunk: int = 64) -> Schedule:
    """A schedule by its command-line name, with the parameter that name uses."""
    makers = {
        "baseline": Baseline,
        "interleaved": lambda: Interleaved(subsets=subsets),
        "multirefine": lambda: MultiRefine(passes=passes),
        "chunked": lambda: Chunked(chunk=chunk),
        "sequential": Sequential,
    }
    if name not in makers:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {name!r}")
    return makers[name]()
