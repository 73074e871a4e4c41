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


# decoding ----------------------------------------------------------------------------------------


def decode_cost(config: LRTConfig, batch: int, context: int, element_bytes: int) -> tuple[float, float]:
    """Bytes read and FLOPs of one decoding step of `batch` rows at `context` cached positions:
    every matrix once (the step's weight traffic, whatever the batch), an embedding row per token
    and table, and the keys and values each layer attends to; FLOPs 2 x matrix parameters per
    token plus attention. The arithmetic an overhead cannot go below."""
    tables = 1 + sum(config.has_value_embed(l) for l in range(config.n_layer))
    keys = keys_attended(config, context)
    weights = matrix_params_per_token(config) + batch * tables * config.n_embd
    cache = batch * keys * 2 * config.kv_dim
    flops = batch * (2 * matrix_params_per_token(config) + 4 * config.n_head * config.head_dim * keys)
    return (weights + cache) * element_bytes, flops


def decode_floor(baseline: LRTConfig, variant: LRTConfig, batch: int, context: int, element_bytes: int) -> dict:
    """The variant's arithmetic overhead over the baseline per decoded token: its extra share of
    bytes read (what bounds a small batch) and of FLOPs (what bounds a large one)."""
    base_bytes, base_flops = decode_cost(baseline, batch, context, element_bytes)
    var_bytes, var_flops = decode_cost(variant, batch, context, element_bytes)
    return {"bytes": var_bytes / base_bytes - 1, "flops": var_flops / base_flops - 1}
