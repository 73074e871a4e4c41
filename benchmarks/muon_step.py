"""One Muon step over a preset's hidden matrices: torch.optim.Muon against lrt's Muon (batched by
shape), in rounds that alternate between them, on one process. Prints the median step of each
and their ratio measured in the same rounds.

    python benchmarks/muon_step.py --config small                  # the demo's model, on the CPU
    python benchmarks/muon_step.py --config d20 --device cuda      # lrt's compiles its Newton-Schulz
"""

import argparse
import statistics
import time

import torch

from lrt.model import LRT
from lrt.presets import get_preset
from lrt.train.muon import Muon
from lrt.train.optim import parameter_groups


def timed(opt, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LRT(get_preset(args.config).config(), device=device)
    matrices = parameter_groups(model)["matrix"]
    for m in matrices:
        m.grad = torch.randn_like(m)
    shapes = sorted({tuple(m.shape) for m in matrices})
    print(f"{args.config}: {len(matrices)} matrices, {sum(m.numel() for m in matrices):,} weights, shapes {shapes}")
    optimizers = {
        "torch.optim.Muon": torch.optim.Muon(matrices, lr=0.02, weight_decay=0.0),
        "lrt Muon": Muon(matrices, lr=0.02),
    }
    for opt in optimizers.values():  # warm up (and compile)
        timed(opt, device)
    times = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, opt in optimizers.items():
            times[name].append(timed(opt, device))
    for name, samples in times.items():
        print(f"{name:<18} {1e3 * statistics.median(samples):10.1f} ms")
    ratios = [a / b for a, b in zip(times["lrt Muon"], times["torch.optim.Muon"])]
    print(f"lrt / torch: {statistics.median(ratios):.2f} (median over {args.rounds} rounds)")


if __name__ == "__main__":
    main()
