"""Training FLOPs, counting every pass a schedule runs (LRT_SPEC section 5: matched compute).

Per computed token: 6 x (matrix parameters touched) for forward + backward, plus attention
12 x n_head x head_dim x (keys attended). A schedule computes each position once per pass that
covers it (interleaved S=2: twice), so its FLOPs follow from its plan. A step with zero memory
skips the memory projections Wk, Wv (their input is 0), so only steps that read memory pay them.
"""

from __future__ import annotations

from .config import LRTConfig
from .model import LRT, parameter_counts
from .schedules import Schedule, Sequential, check_schedule_for, checked_plan


def matrix_params_per_token(config: LRTConfig) -> int:
    """Parameters multiplied per computed token: all but the embedding tables (lookups cost no
    FLOPs), the block stack once per loop of a looped transformer."""
    return head_params(config) + config.loops * stack_params(config)


def head_params(config: LRTConfig) -> int:
    return config.vocab_size * config.n_embd


def stack_params(config: LRTConfig) -> int:
    """Parameters multiplied by one pass through the block stack (and LRT's shared projections)."""
    embeddings = config.vocab_size * config.n_embd + config.vocab_size * config.kv_dim * sum(
        config.has_value_embed(l) for l in range(config.n_layer)
    )
    return parameter_counts(config).total - embeddings - head_params(config)


def memory_projection_params(config: LRTConfig) -> int:
    """Parameters of Wk, Wv (shared or per layer): multiplied only when memory is nonzero."""
    model = LRT(config, device="meta")
    return sum(p.numel() for name, p in model.named_parameters() if "mem_kv" in name.split("."))


def keys_attended(config: LRTConfig, t: int) -> int:
    """Keys the computation at position (slot) t attends to, over every layer of every loop."""
    return config.loops * sum(
        t + 1 if config.window(l) is None else min(t, config.window(l)) + 1 for l in range(config.n_layer)
    )


def training_flops_per_sequence(config: LRTConfig, schedule: Schedule, T: int) -> float:
    """Forward + backward FLOPs of one sequence of length T under `schedule`."""
    if config.latent_thoughts:
        return ponder_training_flops(config, schedule, T)
    dense = 6 * matrix_params_per_token(config)
    zero_memory_dense = dense - 6 * memory_projection_params(config)
    attention = 12 * config.n_head * config.head_dim
    total = 0.0
    for steps in checked_plan(schedule, T):
        for step in steps:
            per_token = zero_memory_dense if step.memory == "zero" else dense
            total += len(step.positions) * per_token + attention * sum(keys_attended(config, t) for t in step.positions)
    return total


def ponder_training_flops(config: LRTConfig, schedule: Schedule, T: int) -> float:
    """PonderLM-2 (ponder.py): every slot of every pass through the stack, the LM head at the T
    predicting slots of the last. Jacobi:N runs K first-guess passes over 1..K stages, N Jacobi
    passes and a final one over K + 1; sequential (exact) computes each of the (K + 1) T slots once."""
    check_schedule_for(config, schedule)
    K = config.latent_thoughts
    stages = [K + 1] if isinstance(schedule, Sequential) else [*range(1, K + 1), *[K + 1] * (schedule.iterations + 1)]
    attention = 12 * config.n_head * config.head_dim
    total = 6.0 * head_params(config) * T
    for n in stages:
        total += 6 * stack_params(config) * n * T + attention * sum(keys_attended(config, s) for s in range(n * T))
    return total


# decoding ----------------------------------------------------------------------------------------


def decode_cost(config: LRTConfig, batch: int, context: int, element_bytes: int) -> tuple[float, float]:
    """Bytes read and FLOPs of one generated token per row of `batch` rows at `context` cached
    tokens: every matrix once per forward through the stack (the step's weight traffic, whatever
    the batch; a looped transformer's stack `loops` times, PonderLM-2's once per slot), an embedding
    row per token and table, and the keys and values each layer attends to; FLOPs 2 x matrix
    parameters per token plus attention. The arithmetic an overhead cannot go below."""
    n = config.slots
    tables = 1 + sum(config.has_value_embed(l) for l in range(config.n_layer))
    keys = sum(keys_attended(config, context * n + j) for j in range(n))
    matrices = head_params(config) + n * config.loops * stack_params(config)
    weights = matrices + batch * tables * config.n_embd
    cache = batch * keys * 2 * config.kv_dim
    flops = batch * (2 * matrices + 4 * config.n_head * config.head_dim * keys)
    return (weights + cache) * element_bytes, flops


def decode_floor(baseline: LRTConfig, variant: LRTConfig, batch: int, context: int, element_bytes: int) -> dict:
    """The variant's arithmetic overhead over the baseline per decoded token: its extra share of
    bytes read (what bounds a small batch) and of FLOPs (what bounds a large one)."""
    base_bytes, base_flops = decode_cost(baseline, batch, context, element_bytes)
    var_bytes, var_flops = decode_cost(variant, batch, context, element_bytes)
    return {"bytes": var_bytes / base_bytes - 1, "flops": var_flops / base_flops - 1}
