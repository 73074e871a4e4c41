"""Matched compute: one home for "the baseline of this config", tokens per step, parameter
conventions and training budgets (LRT_SPEC section 5). The demo, the recipe, the study and
`lrt bench train` read their steps and FLOP ratios from here.

An *arm* is a model config trained under a schedule on a global batch of tokens per optimizer
step (all ranks). With F(arm) = `training_flops_per_sequence(config, schedule, T)` (every pass the
schedule runs, T = config.sequence_len):

    flops per token   = F(arm) / T
    flops per step    = F(arm) x tokens_per_step / T
    flop ratio        = F(arm) / F(baseline arm)           (baseline arm: same backbone, no pathway,
                                                            `Baseline` schedule, same batch)

A *budget* is training FLOPs that every arm may spend, given directly or as R tokens per
parameter. R is defined on the baseline: the budget is what the baseline spends on R x P tokens,

    budget(R) = R x P(baseline, convention) x F(baseline) / T

with P counted under `convention` ("total" by default, what `lrt recipe` and `lrt study` have
always used). An arm trains steps(arm) = max(1, round(budget / flops per step)) (`round_up` for
"at least the budget"); at R, the baseline's steps are R x P / tokens_per_step, computed without
passing through FLOPs, so whole numbers stay whole.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

from .config import LRTConfig, check_int, check_number
from .flops import training_flops_per_sequence
from .model import LRT
from .presets import VARIANTS
from .schedules import Baseline, Schedule

# How parameters are counted where a budget says "tokens per parameter":
#   total:   every parameter (embedding tables included; Chinchilla's count);
#   scaling: nanochat's num_scaling_params (transformer_matrices + lm_head, what its
#            --target-param-data-ratio multiplies): every matrix of the model except the embedding
#            tables wte and value_embeds. That is the attention and MLP weights of every block, the
#            blocks' small gate matrices (ve_gate; LRT's mem_gate), LRT's memory projections mem_kv
#            (shared or per layer: the LRT arm's transformer matrices) and lm_head. Excluded besides
#            the tables: the per-layer scalars (resid_scale, x0_scale, mem_scale; nanochat's
#            resid_lambdas and x0_lambdas, its `scalars`).
CONVENTIONS = ("total", "scaling")
EMBEDDING_TABLES = ("wte", "value_embeds")


def baseline_of(config: LRTConfig) -> LRTConfig:
    """The same backbone without the recurrent pathway."""
    return dataclasses.replace(config, **VARIANTS["baseline"])


def tokens_per_step(*, world_size: int, batch_size: int, accumulation: int, seq_len: int) -> int:
    """Tokens per optimizer step over all ranks: world size x micro-batch x micro-batches x length."""
    for name, value in (
        ("world_size", world_size),
        ("batch_size", batch_size),
        ("accumulation", accumulation),
        ("seq_len", seq_len),
    ):
        check_int(name, value)
    return world_size * batch_size * accumulation * seq_len


def micro_batches(total_batch_size: int, micro_tokens: int, micro: str) -> int:
    """Micro-batches of `micro_tokens` tokens (described by `micro`) in a step of `total_batch_size`."""
    if total_batch_size % micro_tokens:
        raise ValueError(f"--total-batch-size {total_batch_size} is not a multiple of {micro} = {micro_tokens} tokens")
    return total_batch_size // micro_tokens


def is_scaling_parameter(name: str, shape) -> bool:
    """Whether a parameter counts under the "scaling" convention: a matrix, not an embedding table."""
    return len(shape) >= 2 and name.split(".")[0] not in EMBEDDING_TABLES


def count_parameters(model_or_config: LRT | LRTConfig, convention: str = "total") -> int:
    """Parameters under `convention` (CONVENTIONS); a config is instantiated on the meta device."""
    _check_convention(convention)
    model = LRT(model_or_config, device="meta") if isinstance(model_or_config, LRTConfig) else model_or_config
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if convention == "total" or is_scaling_parameter(name, p.shape)
    )


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"the parameter convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")


@dataclass(frozen=True)
class Arm:
    """A model config trained under a schedule on `tokens_per_step` tokens per optimizer step."""

    config: LRTConfig
    schedule: Schedule
    tokens_per_step: int

    def __post_init__(self):
        check_int("tokens_per_step", self.tokens_per_step)

    @property
    def seq_len(self) -> int:
        return self.config.sequence_len

    @cached_property
    def flops_per_sequence(self) -> float:
        return training_flops_per_sequence(self.config, self.schedule, self.seq_len)

    @property
    def flops_per_token(self) -> float:
        return self.flops_per_sequence / self.seq_len

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_sequence * self.tokens_per_step / self.seq_len

    @cached_property
    def baseline(self) -> Arm:
        """The same backbone without the pathway, under the Baseline schedule, on the same batch."""
        config = baseline_of(self.config)
        if isinstance(self.schedule, Baseline) and config == self.config:
            return self
        return Arm(config, Baseline(), self.tokens_per_step)

    @property
    def flop_ratio(self) -> float:
        """Training FLOPs of one step over the baseline's (1.0 for the baseline itself)."""
        return self.flops_per_sequence / self.baseline.flops_per_sequence

    @cached_property
    def _params(self) -> dict[str, int]:
        model = LRT(self.config, device="meta")
        return {c: count_parameters(model, c) for c in CONVENTIONS}

    def params(self, convention: str = "total") -> int:
        _check_convention(convention)
        return self._params[convention]


@dataclass(frozen=True)
class Reach:
    """What one arm trains under a budget. R is counted on the arm's own parameters:
    ratio_total = tokens / total parameters, ratio_scaling = tokens / scaling parameters."""

    steps: int
    tokens: int
    flops: float
    flop_ratio: float  # one step over the baseline's
    ratio_total: float
    ratio_scaling: float
    epochs: float | None  # tokens / the corpus's tokens, when given


@dataclass(frozen=True)
class Budget:
    """Training FLOPs every arm may spend; `Budget.of` makes one from FLOPs or from R. A budget
    given as R keeps it, its convention and the baseline arm it was set on."""

    flops: float
    ratio: float | None = None
    convention: str | None = None
    baseline: Arm | None = None

    def __post_init__(self):
        check_number("budget (training FLOPs)", self.flops, above=True)

    @classmethod
    def of(
        cls, arm: Arm, *, flops: float | None = None, ratio: float | None = None, convention: str = "total"
    ) -> Budget:
        """A budget of `flops` training FLOPs, or of R = `ratio` tokens per parameter of the
        baseline of `arm` (counted under `convention`) at the baseline's FLOPs per token."""
        if (flops is None) == (ratio is None):
            raise ValueError(
                "give a budget as training FLOPs or as tokens per parameter R (one of them), "
                f"got flops={flops!r} and R={ratio!r}"
            )
        if flops is not None:
            check_number("budget (training FLOPs)", flops, above=True)
            return cls(float(flops))
        check_number("R (tokens per baseline parameter)", ratio, above=True)
        _check_convention(convention)
        base = arm.baseline
        return cls(ratio * base.params(convention) * base.flops_per_token, ratio, convention, base)

    def exact_steps(self, arm: Arm) -> float:
        """Steps the budget buys `arm`, unrounded."""
        if self.baseline is None:
            return self.flops / arm.flops_per_step
        tokens = self.ratio * self.baseline.params(self.convention)  # the baseline's tokens at R
        return tokens * (self.baseline.flops_per_token / arm.flops_per_token) / arm.tokens_per_step

    def steps(self, arm: Arm, round_up: bool = False) -> int:
        """Whole steps of `arm` for the budget: the nearest (at least 1), or the first that spends it."""
        exact = self.exact_steps(arm)
        return max(1, math.ceil(exact) if round_up else round(exact))

    def reach(self, arm: Arm, corpus_tokens: int | None = None) -> Reach:
        """Steps, tokens and FLOPs of `arm` under the budget, the R it reaches under both
        conventions, and its epochs over a corpus of `corpus_tokens` tokens (when given)."""
        if corpus_tokens is not None:
            check_int("corpus_tokens", corpus_tokens)
        steps = self.steps(arm)
        tokens = steps * arm.tokens_per_step
        return Reach(
            steps=steps,
            tokens=tokens,
            flops=steps * arm.flops_per_step,
            flop_ratio=arm.flop_ratio,
            ratio_total=tokens / arm.params("total"),
            ratio_scaling=tokens / arm.params("scaling"),
            epochs=None if corpus_tokens is None else tokens / corpus_tokens,
        )
