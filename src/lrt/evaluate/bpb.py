"""Bits per byte (LRT_SPEC section 5): sum of target nats / (ln 2 x sum of target bytes), with
special tokens (zero bytes) excluded.

Every number says which memory the model had (memory.py): `zero` (the ablation; a baseline's only
BPB), `parallel` (a schedule's passes: each pass's BPB on its own positions, and merged, each
position from the last pass that computed it), `exact` (the true recurrence, what generation
gets, broken down by position bucket) or `fixed-point`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..memory import Memory, read, readable
from ..schedules import checked_plan, describe_pass, merge_passes, schedule_label


def pass_labels(config, schedule, T: int) -> list[str]:
    """What each pass of a parallel reading computes (PonderLM-2's Jacobi forward is one pass)."""
    if config.latent_thoughts:
        return [f"{schedule_label(schedule)} thoughts, all positions"]
    return [describe_pass(steps, T) for steps in checked_plan(schedule, T)]


@dataclass
class BPBResult:
    tokens: int
    bytes: int
    zero: float | None = None
    parallel: float | None = None  # merged: each position from the last pass that computed it
    parallel_schedule: str | None = None  # whose passes
    parallel_passes: list[float] = field(default_factory=list)  # each pass on its own positions
    parallel_pass_labels: list[str] = field(default_factory=list)
    exact: float | None = None
    exact_buckets: list[tuple[int, int, float]] = field(default_factory=list)  # (first, last position, bpb)
    fixed_point: float | None = None

    @property
    def gap(self) -> float | None:
        """Train/decode gap: merged parallel BPB minus exact BPB."""
        return None if self.parallel is None or self.exact is None else self.parallel - self.exact

    def format(self, recurrent: bool = True) -> str:
        """The report of `lrt eval bpb`; `recurrent` is False for a model without a pathway."""
        lines = [
            (f"pass {i} ({label})", bpb)
            for i, (label, bpb) in enumerate(zip(self.parallel_pass_labels, self.parallel_passes))
        ]
        if self.parallel is not None:
            lines.append(("merged (each position from its last pass)", self.parallel))
        if self.exact is not None:
            lines.append(("exact memory, token by token (what generation gets)", self.exact))
        if self.fixed_point is not None:
            lines.append(("fixed-point memory", self.fixed_point))
        if self.zero is not None:
            lines.append(("zero memory" + (" (ablation)" if recurrent else ""), self.zero))
        out = [f"  {label:<60} {value:.4f} BPB" for label, value in lines]
        if self.gap is not None:
            out.append(f"  {'train/decode gap (merged - exact)':<60} {self.gap:+.4f}")
        if self.exact_buckets:
            out.append("exact BPB by position: " + ", ".join(f"{a}-{b}: {v:.3f}" for a, b, v in self.exact_buckets))
        return "\n".join(out)


class _Tally:
    """Nats and bytes summed per position, so any grouping of positions can be scored."""

    def __init__(self, T: int):
        self.nats = torch.zeros(T, dtype=torch.float64)
        self.bytes = torch.zeros(T, dtype=torch.float64)

    def add(self, logits, targets, token_bytes, pos=None):
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
        nbytes = token_bytes[targets]
        nats = torch.where(nbytes > 0, nats, 0.0)  # special tokens carry no bytes and are excluded
        idx = slice(None) if pos is None else pos.cpu()
        self.nats[idx] += nats.sum(0).double().cpu()
        self.bytes[idx] += nbytes.sum(0).double().cpu()

    @staticmethod
    def all_sum(tallies: list["_Tally"], world) -> None:
        """Sum every rank's tallies (one collective), in place."""
        flat = world.all_sum(torch.cat([torch.stack([t.nats, t.bytes]) for t in tallies], dim=1))
        for t, part in zip(tallies, flat.split(len(tallies[0].nats), dim=1)):
            t.nats, t.bytes = part[0].clone(), part[1].clone()

    def bpb(self, part=slice(None)) -> float:
        return (self.nats[part].sum() / (math.log(2) * self.bytes[part].sum().clamp(min=1))).item()


@torch.no_grad()
def evaluate_bpb(
    model,
    rows: torch.Tensor,
    token_bytes: torch.Tensor,
    *,
    memories: tuple[Memory | str, ...] = ("zero", "exact"),
    batch_size: int = 16,
    bucket: int = 64,
    progress: bool = False,
    world=None,
) -> BPBResult:
    """BPB of `model` on rows (N, T+1) of token ids under each of `memories` (at most one of each
    mode). A model without a pathway is scored with zero memory only: every mode equals it. With a
    `world` (distributed.World), each rank scores rows rank, rank + world, ... and the sums are
    all-reduced: every rank gets the numbers of a single-process evaluation."""
    memories = readable(model.config, memories)
    if not memories:
        raise ValueError("a PonderLM-2 model has no zero memory: score it with exact, parallel or fixed-point")
    modes = [m.mode for m in memories]
    if len(set(modes)) != len(modes):
        raise ValueError(f"evaluate_bpb scores each memory mode once, got {[m.spec for m in memories]}")
    if batch_size < 1 or bucket < 1:
        raise ValueError(f"batch_size and bucket must be positive, got {batch_size} and {bucket}")
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    T = rows.size(1) - 1
    tallies = {m.mode: _Tally(T) for m in memories}
    labels = {m.mode: pass_labels(model.config, m.schedule, T) for m in memories if m.mode == "parallel"}
    pass_tallies = [_Tally(T) for _ in labels.get("parallel", ())]
    mine = rows if world is None else rows[world.rank :: world.size]
    # every rank reads as many batches: under FSDP2 each forward is a collective, so a rank with a
    # row fewer (or none) reads a stand-in row, uncounted, instead of leaving the others waiting
    share = len(mine) if world is None else -(-rows.size(0) // world.size)
    for k in tqdm(range(0, share, batch_size), desc="bpb", disable=not progress, leave=False):
        batch = mine[k : k + batch_size]
        counted = batch.size(0) > 0
        batch = (batch if counted else rows[:1]).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        for memory in memories:
            output = read(model, x, memory).output
            if not counted:
                continue
            if memory.mode != "parallel":
                tallies[memory.mode].add(output.logits, y, token_bytes)
                continue
            pass_logits = output.pass_logits  # merged from them, so the head runs once per pass position
            tallies["parallel"].add(merge_passes(pass_logits, T), y, token_bytes)
            for tally, (pos, logits) in zip(pass_tallies, pass_logits):
                tally.add(logits, y[:, pos], token_bytes, pos)
    if world is not None:
        _Tally.all_sum(list(tallies.values()) + pass_tallies, world)
    result = BPBResult(tokens=rows[:, 1:].numel(), bytes=int(token_bytes[rows[:, 1:].to(device)].sum()))
    for memory in memories:
        setattr(result, memory.mode.replace("-", "_"), tallies[memory.mode].bpb())
        if memory.mode == "parallel":
            result.parallel_schedule = memory.spec
            result.parallel_passes = [t.bpb() for t in pass_tallies]
            result.parallel_pass_labels = labels["parallel"]
        if memory.mode == "exact":
            result.exact_buckets = [
                (a, min(a + bucket, T) - 1, tallies["exact"].bpb(slice(a, a + bucket))) for a in range(0, T, bucket)
            ]
    return result
