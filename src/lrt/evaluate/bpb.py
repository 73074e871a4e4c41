"""Bits per byte (LRT_SPEC section 5): sum of target nats / (ln 2 x sum of target bytes), with
special tokens (zero bytes) excluded.

For an LRT model it is measured three ways, each saying which memory the model had:
- `schedule`: the training schedule's passes, each pass's BPB and the merged BPB (each position
  from the last pass that computed it);
- `decode`: the exact token-by-token recurrence, what a user of `generate` gets, with a
  breakdown by position bucket;
- `zero`: memory held at 0 (the ablation; for the baseline it is its only BPB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class BPBResult:
    tokens: int
    bytes: int
    zero: float | None = None
    merged: float | None = None
    passes: list[float] = field(default_factory=list)
    decode: float | None = None
    decode_buckets: list[tuple[int, int, float]] = field(default_factory=list)  # (first, last position, bpb)

    @property
    def gap(self) -> float | None:
        """Train/decode gap: merged parallel BPB minus exact decoding BPB."""
        return None if self.merged is None or self.decode is None else self.merged - self.decode


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

    def bpb(self, part=slice(None)) -> float:
        return (self.nats[part].sum() / (math.log(2) * self.bytes[part].sum().clamp(min=1))).item()


@torch.no_grad()
def evaluate_bpb(model, rows: torch.Tensor, token_bytes: torch.Tensor, schedule=None, modes=("zero", "schedule", "decode"),
                 batch_size: int = 16, bucket: int = 64, progress: bool = False) -> BPBResult:
    """BPB of `model` on rows (N, T+1) of token ids. `schedule` is the training schedule (modes
    'schedule'); 'decode' is skipped for a model without a pathway, where it equals 'zero'."""
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    T = rows.size(1) - 1
    recurrent = model.config.injection != "none"
    modes = [m for m in modes if recurrent or m == "zero"] or ["zero"]
    tallies = {"zero": _Tally(T), "merged": _Tally(T), "decode": _Tally(T)}
    pass_tallies: list[_Tally] = []
    batches = rows.split(batch_size)
    for batch in tqdm(batches, desc="bpb", disable=not progress, leave=False):
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        if "zero" in modes:
            tallies["zero"].add(model(x), y, token_bytes)
        if "schedule" in modes and schedule is not None:
            out = model(x, schedule=schedule)
            tallies["merged"].add(out.logits, y, token_bytes)
            pass_tallies += [_Tally(T) for _ in range(len(out.pass_logits) - len(pass_tallies))]
            for tally, (pos, logits) in zip(pass_tallies, out.pass_logits):
                tally.add(logits, y[:, pos], token_bytes, pos)
        if "decode" in modes:
            tallies["decode"].add(model.decode(x), y, token_bytes)
    total_bytes = int(token_bytes[rows[:, 1:].to(device)].sum())
    result = BPBResult(tokens=rows[:, 1:].numel(), bytes=total_bytes)
    if "zero" in modes:
        result.zero = tallies["zero"].bpb()
    if pass_tallies:
        result.merged = tallies["merged"].bpb()
        result.passes = [t.bpb() for t in pass_tallies]
    if "decode" in modes:
        result.decode = tallies["decode"].bpb()
        result.decode_buckets = [
            (a, min(a + bucket, T) - 1, tallies["decode"].bpb(slice(a, a + bucket))) for a in range(0, T, bucket)
        ]
    return result
