"""Muon that scales: torch.optim.Muon's update, computed a group of same-shape matrices at a time
and shared out across ranks.

torch.optim.Muon loops over the matrices in Python, one uncompiled Newton-Schulz (about 25
kernels) each, and under data parallelism every rank repeats every orthogonalisation (under FSDP2,
DTensor redistributes inside each product). Here the matrices of one shape are stacked and
orthogonalised by one batched Newton-Schulz (compiled on GPUs); rank r of N takes its share of
each stack, and one all-gather hands every rank all the results. Under FSDP2 the momentum stays
sharded; one all-gather assembles the stack's full updates first, and each rank keeps its rows of
the results. The update itself is torch.optim.Muon's (the same state and group fields, so either
resumes the other's checkpoints): Nesterov momentum, Newton-Schulz in bfloat16, the rate scaled by
sqrt(max(1, rows/cols)), decoupled weight decay (skipped when it is 0).

PyTorch has no batched Newton-Schulz (torch.optim's takes one 2-D matrix), hence `orthogonalize`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (Keller Jordan's)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz on a stack of matrices (n, rows, cols) in bfloat16: torch.optim.Muon's
    iteration, each matrix of the stack independently."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update, batched by shape and divided across the ranks of the default
    process group (one process: no collectives). `compile` (default: on CUDA) compiles the batched
    Newton-Schulz."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        *,
        ns_steps: int = 5,
        compile: bool | None = None,
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=True,
            ns_coefficients=NS_COEFFICIENTS,
            eps=1e-7,
            ns_steps=ns_steps,
            adjust_lr_fn=None,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices, got a parameter of shape {tuple(p.shape)}")
        first = self.param_groups[0]["params"][0] if self.param_groups and self.param_groups[0]["params"] else None
        if compile is None:
            compile = first is not None and first.device.type == "cuda"
        self._orthogonalize = torch.compile(orthogonalize, dynamic=False) if compile else orthogonalize

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            stacks = defaultdict(list)  # same shape: one batched orthogonalisation
            for p in group["params"]:
                if p.grad is not None:
                    stacks[tuple(p.shape)].append(p)
            for shape, params in stacks.items():
                self._step_stack(group, shape, params)
        return loss

    def _step_stack(self, group: dict, shape: tuple[int, int], params: list[torch.Tensor]) -> None:
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        weights = [_local(p) for p in params]
        grads = [_local(p.grad) for p in params]
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
        buffers = [_local(self.state[p]["momentum_buffer"]) for p in params]
        torch._foreach_lerp_(buffers, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, buffers, momentum)  # Nesterov
        sharded = hasattr(params[0], "device_mesh")
        full = _gather_rows(torch.stack(updates), shape[0]) if sharded else torch.stack(updates)
        ortho = self._shared_orthogonalize(full, group["ns_steps"])
        if sharded:
            ortho = _own_rows(ortho, shape[0], weights[0].shape[0])
        if weight_decay:
            torch._foreach_mul_(weights, 1 - lr * weight_decay)
        scale = lr * math.sqrt(max(1.0, shape[0] / shape[1]))
        torch._foreach_add_(weights, list(ortho.to(weights[0].dtype).unbind(0)), alpha=-scale)

    def _shared_orthogonalize(self, full: torch.Tensor, steps: int) -> torch.Tensor:
        """Orthogonalise a stack (n, rows, cols) of full matrices: rank r computes its contiguous
        share (the stack padded to a multiple of the world size), and an all-gather gives every
        rank every result."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world == 1:
            return self._orthogonalize(full, steps)
        n = full.size(0)
        share = -(-n // world)
        padded = torch.cat([full, full.new_zeros(share * world - n, *full.shape[1:])]) if share * world > n else full
        mine = self._orthogonalize(padded[dist.get_rank() * share :][:share], steps)
        out = mine.new_empty(share * world, *full.shape[1:])
        dist.all_gather_single(out, mine.contiguous())
        return out[:n]


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (its FSDP2 shard), all of it otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _row_chunk(rows: int) -> int:
    """Rows per rank of an FSDP2 shard on dim 0 (torch.chunk's split: the last ranks may hold fewer
    or none)."""
    return -(-rows // dist.get_world_size())


def _gather_rows(local: torch.Tensor, rows: int) -> torch.Tensor:
    """The full stack (n, rows, cols) from every rank's row shards (n, own rows, cols): one
    all-gather of shards padded to the largest."""
    chunk, world = _row_chunk(rows), dist.get_world_size()
    padded = local.new_zeros(local.size(0), chunk, local.size(2))
    padded[:, : local.size(1)] = local
    out = local.new_empty(world * local.size(0), chunk, local.size(2))  # gloo gathers concatenations only
    dist.all_gather_single(out, padded)
    out = out.view(world, local.size(0), chunk, local.size(2))
    return out.transpose(0, 1).reshape(local.size(0), world * chunk, local.size(2))[:, :rows]


def _own_rows(full: torch.Tensor, rows: int, own: int) -> torch.Tensor:
    """This rank's rows of a full stack, as FSDP2 shards dim 0."""
    start = min(dist.get_rank() * _row_chunk(rows), rows)
    return full[:, start : start + own]
