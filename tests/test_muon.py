"""lrt's Muon (batched by shape, shared across ranks) makes torch.optim.Muon's update: on one
process, and on 2 ranks with whole (DDP) or row-sharded (FSDP2) weights, uneven shards and stacks
that do not divide among the ranks included (issue 22)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from lrt.train.muon import Muon, orthogonalize

SHAPES = [(5, 3), (5, 3), (5, 3), (4, 6), (7, 7)]  # tall, wide, square; 5 rows shard unevenly on 2 ranks
STEPS = 3


class Matrices(nn.Module):
    """One submodule per matrix, so FSDP2 can shard each (as it shards lrt's blocks)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(c, r, bias=False) for r, c in SHAPES)
        for layer in self.layers:
            layer.weight.data = torch.randn(layer.weight.shape, generator=gen)


def gradients(step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=gen) for shape in SHAPES]


def train(model: Matrices, optimizer, weight_of=lambda w: w) -> list[torch.Tensor]:
    """STEPS updates with fixed gradients (sharded like the weights where they are); the full weights."""
    for step in range(STEPS):
        for layer, grad in zip(model.layers, gradients(step)):
            w = layer.weight
            layer.weight.grad = weight_of(grad) if hasattr(w, "device_mesh") else grad
        optimizer.step()
        optimizer.zero_grad()
    return [w.full_tensor() if hasattr(w, "full_tensor") else w.detach().clone() for w in model.parameters()]


def reference(weight_decay: float) -> list[torch.Tensor]:
    model = Matrices()
    return train(model, torch.optim.Muon(model.parameters(), lr=0.02, momentum=0.95, weight_decay=weight_decay))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_process_makes_torch_muons_update(weight_decay):
    model = Matrices()
    ours = train(model, Muon(model.parameters(), lr=0.02, momentum=0.95, weight_decay=weight_decay))
    for a, b in zip(ours, reference(weight_decay)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(ours[0], Matrices().layers[0].weight)  # it moved


def test_batched_newton_schulz_is_each_matrix_alone():
    stack = torch.randn(3, 6, 4)
    one = torch.optim._muon._zeropower_via_newtonschulz  # torch's, for one matrix
    each = torch.stack([one(m, (3.4445, -4.775, 2.0315), 5, 1e-7) for m in stack])
    torch.testing.assert_close(orthogonalize(stack), each, rtol=0, atol=0)


def test_muon_takes_only_matrices():
    with pytest.raises(ValueError, match="2-D matrices"):
        Muon([nn.Parameter(torch.zeros(3))])


def _rank(rank: int, world: int, store: str, mode: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = Matrices()
        weight_of = None
        if mode == "fsdp":
            from torch.distributed.fsdp import fully_shard
            from torch.distributed.tensor import Shard, distribute_tensor

            for layer in model.layers:
                fully_shard(layer)
            mesh = model.layers[0].weight.device_mesh

            def weight_of(grad):
                return distribute_tensor(grad, mesh, [Shard(0)])

        weights = train(model, Muon(model.parameters(), lr=0.02, momentum=0.95, weight_decay=0.1), weight_of)
        if rank == 0:
            torch.save(weights, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_make_one_process_update(tmp_path, mode):
    out = tmp_path / "weights.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), mode, str(out)), nprocs=2)
    for a, b in zip(torch.load(out), reference(0.1)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
