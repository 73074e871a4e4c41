"""Training FLOPs, counting every pass a schedule runs (LRT_SPEC section 5: matched compute).

Per computed token: 6 x (matrix parameters touched) for forward + backward, plus attention
12 x n_head x head_dim x (keys attended). A schedule computes each position once per pass that
covers it (interleaved S=2: twice), so its FLOPs follow from its plan. A step with zero memory
skips the memory projections Wk, Wv (their input is 0), so only steps that read memory pay them.
"""

from __future__ import annotations


from .config import LRTConfig
from .model import LRT, parameter_counts
from .schedules import Schedule, checked_plan


def matrix_params_per_token(config: LRTConfig) -> int:
    """Parameters multiplied per token: all but the embedding tables (lookups cost no FLOPs)."""
    embeddings = config.vocab_size * config.n_embd + config.vocab_size * config.kv_dim * sum(
        config.has_value_embed(l) for l in range(config.n_layer)
    )
    return parameter_counts(config).total - embeddings


def memory_projection_params(config: LRTConfig) -> int:
    """Parameters of Wk, Wv (shared or per layer): multiplied only when memory is nonzero."""
    model = LRT(config, device="meta")
    return sum(p.numel() for name, p in model.named_parameters() if "mem_kv" in name.split("."))


def keys_attended(config: LRTConfig, t: int) -> int:
    return sum(t + 1 if config.window(l) is None else min(t, config.window(l)) + 1 for l in range(config.n_layer))


def training_flops_per_sequence(config: LRTConfig, schedule: Schedule, T: int) -> float:
    """Forward + backward FLOPs of one sequence of length T under `schedule`."""
    dense = 6 * matrix_params_per_token(config)
    zero_memory_dense = dense - 6 * memory_projection_params(config)
    attention = 12 * config.n_head * config.head_dim
    total = 0.0
    for steps in checked_plan(schedule, T):
        for step in steps:
            per_token = zero_memory_dense if step.memory == "zero" else dense
            total += len(step.positions) * per_token + attention * sum(keys_attended(config, t) for t in step.positions)
    return total
