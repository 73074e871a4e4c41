"""Which memory the model had: one vocabulary, and one routine, for every way of reading tokens.

An LRT model reads a row of tokens with one of four memories (LRT_SPEC sections 3-5):

- `zero`: m = 0 at every position, one parallel pass (the ablation; a baseline's only mode);
- `parallel`: a schedule's passes, the training approximation (`parallel:interleaved:2`; the
  command line's bare `parallel` is the run's own training schedule);
- `exact`: the true recurrence, one position at a time (what generation gets);
- `fixed-point`: full parallel passes, each fed the previous pass's source states, until they move
  by at most `tol` (`fixed-point:1e-6`); exact after at most T passes.

`read(model, idx, memory)` runs any of them over a fresh key/value buffer. BPB, CORE and prompt
prefill say and compute "which memory" through it, and so will the Hugging Face and lm-eval
integrations. (A schedule's `Step` has its own, step-level rule for where m_t comes from.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import KVBuffer
from .ponder import run as run_ponder
from .schedules import (
    Baseline,
    Jacobi,
    Schedule,
    ScheduleOutput,
    Sequential,
    Step,
    checked_plan,
    parse_schedule,
    run_schedule,
    run_step,
    schedule_label,
)

MEMORY_MODES = ("zero", "parallel", "exact", "fixed-point")
MEMORY_SPECS = "zero, exact, parallel[:<schedule>], fixed-point[:<tol>]"


@dataclass(frozen=True)
class Memory:
    """A memory mode, with what it needs: the schedule of `parallel`, the tolerance and pass cap of
    `fixed-point` (default cap: the row length, where it is exact)."""

    mode: str = "exact"
    schedule: Schedule | None = None
    tol: float = 1e-4
    max_passes: int | None = None

    def __post_init__(self):
        if self.mode not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_SPECS}, got {self.mode!r}")
        if isinstance(self.schedule, str):
            object.__setattr__(self, "schedule", parse_schedule(self.schedule))
        if (self.mode == "parallel") != (self.schedule is not None):
            raise ValueError("memory 'parallel' needs a schedule (e.g. parallel:interleaved:2) and only it takes one")
        if not self.tol >= 0:
            raise ValueError(f"the fixed-point tolerance must be >= 0, got {self.tol}")
        if self.max_passes is not None and (not isinstance(self.max_passes, int) or self.max_passes < 1):
            raise ValueError(f"max_passes must be None or a positive integer, got {self.max_passes!r}")

    @classmethod
    def parse(cls, spec: "str | Memory", schedule: "Schedule | str | None" = None) -> "Memory":
        """A memory from its spec string (MEMORY_SPECS); a bare "parallel" takes `schedule`
        (a run's training schedule)."""
        if isinstance(spec, Memory):
            return spec
        mode, colon, arg = str(spec).partition(":")
        if colon and not arg:
            raise ValueError(f"memory {spec!r} ends in ':' with nothing after it")
        if mode == "parallel":
            return cls(mode, parse_schedule(arg) if arg else schedule)
        if mode == "fixed-point" and arg:
            try:
                tol = float(arg)
            except ValueError:
                raise ValueError(f"memory {spec!r}: the tolerance must be a number, got {arg!r}") from None
            return cls(mode, tol=tol)
        if arg:
            raise ValueError(f"memory {mode} takes no argument, got {spec!r}")
        return cls(mode)

    @property
    def spec(self) -> str:
        if self.mode == "parallel":
            return f"parallel:{schedule_label(self.schedule)}"
        if self.mode == "fixed-point" and self.tol != Memory.tol:
            return f"fixed-point:{self.tol:g}"
        return self.mode

    def describe(self) -> str:
        if self.mode == "parallel":
            return f"the parallel passes of {schedule_label(self.schedule)}"
        if self.mode == "fixed-point":
            return f"fixed-point passes (tol {self.tol:g})"
        return {"zero": "zero memory", "exact": "exact memory (token by token)"}[self.mode]


def readable(config, memories: "list[Memory | str]") -> list[Memory]:
    """The memories a model is read with, of those asked for: a model without recurrence (plain or
    looped) has zero memory only, which every mode equals; PonderLM-2's thoughts are its memory,
    so it has every mode but zero."""
    memories = [Memory.parse(m) for m in memories]
    if config.latent_thoughts:
        return [m for m in memories if m.mode != "zero"]
    return memories if config.injection != "none" else [Memory("zero")]


@dataclass
class Reading:
    """What reading a row under a memory computed."""

    memory: Memory
    output: ScheduleOutput  # hidden states per pass and merged; logits computed when read
    buffer: KVBuffer  # every layer's keys and values and the source states, as the last pass left them
    forwards: int  # calls of forward_positions, one after another: steps of the plan, or fixed-point passes

    @property
    def logits(self) -> torch.Tensor:
        return self.output.logits


def read(model, idx: torch.Tensor, memory: "Memory | str") -> Reading:
    """Run token rows `idx` (B, T) under `memory`. Without autograd the buffer is written in
    place (nothing needs the old values); with it, out of place, as in training."""
    memory = Memory.parse(memory)
    T = idx.size(1)
    if model.config.latent_thoughts:
        return _ponder(model, idx, memory)
    buffer = KVBuffer(model.config.cache_layers, T, inplace=not torch.is_grad_enabled(), kept=True)
    if model.config.injection == "none":  # no pathway (plain or looped): every memory is zero memory, one pass
        output = run_schedule(model, idx, Baseline(), buffer=buffer)
        return Reading(memory, output, buffer, 1)
    if memory.mode == "fixed-point":
        return _fixed_point(model, idx, memory, buffer)
    schedule = {"zero": Baseline(), "exact": Sequential(), "parallel": memory.schedule}[memory.mode]
    output = run_schedule(model, idx, schedule, buffer=buffer)
    return Reading(memory, output, buffer, sum(len(steps) for steps in checked_plan(schedule, T)))


def _ponder(model, idx: torch.Tensor, memory: Memory) -> Reading:
    """PonderLM-2's thoughts are its memory: exact is slot by slot, parallel its Jacobi passes,
    fixed-point Jacobi passes until the thoughts move by at most tol; it has no zero memory."""
    if memory.mode == "zero":
        raise ValueError("a PonderLM-2 model has no zero memory (its latent thoughts are its recurrence)")
    schedule = {"exact": Sequential(), "parallel": memory.schedule, "fixed-point": Jacobi()}[memory.mode]
    fixed = memory.mode == "fixed-point"
    output, buffer, forwards = run_ponder(
        model, idx, schedule, tol=memory.tol if fixed else None, max_passes=memory.max_passes if fixed else None
    )
    return Reading(memory, output, buffer, forwards)


def _fixed_point(model, idx: torch.Tensor, memory: Memory, buffer: KVBuffer) -> Reading:
    """Full passes, each fed the previous one's source states, until they move by at most tol."""
    T = idx.size(1)
    pos, h = run_step(model, idx, Step(range(T), "zero"), buffer)
    passes = 1
    while passes < (memory.max_passes or T):
        previous = buffer.source
        pos, h = run_step(model, idx, Step(range(T)), buffer)
        passes += 1
        if (buffer.source - previous).abs().max() <= memory.tol:
            break
    output = ScheduleOutput(None, [], [(pos, h)], T, model.deferred_head(idx.device.type))
    return Reading(memory, output, buffer, passes)
