"""Running under torchrun: the process group, each rank's device, and the model wrapped by
PyTorch's own DDP or FSDP2. Nothing here syncs gradients or shards parameters by hand.

`lrt` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): NCCL on GPUs, gloo on CPUs.
Rank 0 alone writes the run folder and prints; every rank computes, and errors are agreed on so
that no rank waits forever for one that stopped.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime import resolve_device

PARALLEL = ("auto", "none", "ddp", "fsdp")
BACKENDS = ("auto", "nccl", "gloo")


class QuietExit(Exception):
    """Another rank failed and said why; this one stops without repeating it."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives run: the GPU with NCCL, the CPU with gloo

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, on the tensor's device (the tensor itself on one process)."""
        if not self.distributed:
            return tensor
        total = tensor.to(self.device)
        dist.all_reduce(total)
        return total.to(tensor.device)

    def gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (None elsewhere): small Python state, not tensors of weights."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def agree(self, fn):
        """Run fn on every rank; if it fails anywhere, fail everywhere: the failing rank with its
        own error, the others quietly."""
        error = None
        try:
            result = fn()
        except Exception as e:  # re-raised below, on this rank or as QuietExit on the others
            error = e
        failed = self.all_sum(torch.tensor([error is not None], dtype=torch.int32))
        if error is not None:
            raise error
        if failed.item():
            raise QuietExit
        return result


def launch() -> World:
    """This process's place in a torchrun launch (a world of one without torchrun)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def setup(device: str = "auto", backend: str = "auto") -> tuple[World, torch.device]:
    """The world and this rank's device; under torchrun, the process group (created if needed):
    each rank gets the GPU of its local rank, or the CPU."""
    world = launch()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not world.distributed:
        return world, resolve_device(device)
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        wanted = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(wanted)
    if backend == "auto":
        backend = "nccl" if wanted.type == "cuda" else "gloo"
    if backend == "nccl" and wanted.type != "cuda":
        raise ValueError("backend nccl needs GPUs, and this run is on the CPU: use gloo (the default there)")
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=wanted if wanted.type == "cuda" else None)
    return World(world.rank, world.size, world.local_rank, str(wanted) if backend == "nccl" else "cpu"), wanted


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallel_mode(parallel: str, world: World) -> str:
    """What --parallel means for this launch: none on one process, DDP by default on several."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    if parallel == "auto":
        return "ddp" if world.distributed else "none"
    if parallel != "none" and not world.distributed:
        raise ValueError(f"--parallel {parallel} needs several processes: launch with torchrun --nproc_per_node N")
    if parallel == "none" and world.distributed:
        raise ValueError(f"--parallel none with {world.size} processes would train {world.size} separate models")
    return parallel


def wrap(model, mode: str, device: torch.device, bf16: bool, unused_parameters: bool):
    """The model as training calls it: itself, DDP(model), or the model with FSDP2 applied in
    place (bf16 embedding tables, then each block, then the root; bf16 parameters with float32
    gradient reduction with bf16)."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused_parameters,
        )
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kwargs = {"mp_policy": policy} if policy is not None else {}
        # FSDP2 all-gathers a unit's parameters as one dtype: tables kept in bfloat16
        # (embeddings_to_bf16) beside float32 matrices become units of their own
        if model.wte.weight.dtype != model.lm_head.weight.dtype:
            for table in (model.wte, *model.value_embeds.values()):
                fully_shard(table, **kwargs)
        for block in model.blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
    return model


def syncing(wrapped, sync: bool):
    """A context in which a backward syncs gradients (the last micro-batch) or does not."""
    if not sync and hasattr(wrapped, "no_sync"):  # DDP
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


@contextlib.contextmanager
def gathered(model):
    """The root's own parameters (embeddings, head, shared Wk/Wv) whole for a computation that does
    not enter through model(...) (evaluation reads forward_positions): FSDP2's root unshard. The
    blocks gather their own when called. Nothing to do without FSDP2."""
    if not hasattr(model, "unshard"):
        yield
        return
    # FSDP2 takes the first module to run forward as its root; when that is a block called from
    # here, the real root can never run: initialise the root's state first (FSDP2 has no public
    # call for it)
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (its shard under FSDP2, all of it otherwise)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
