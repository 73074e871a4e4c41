"""Optimizers and the learning-rate schedule (nanochat's recipe).

`muon`: Muon (muon.py: torch.optim.Muon's update, batched by shape and shared across ranks) for
the 2-D hidden matrices (attention, MLP, gates, the pathway's Wk/Wv), AdamW (fused on GPUs) for the
embeddings, the LM head and the scalars, with AdamW rates scaled by 1/sqrt(d/768).
`adamw`: one AdamW for everything, the simple choice for small CPU runs.
`auto` (default): muon on GPUs, adamw on CPUs. torch.optim.Muon runs its Newton-Schulz iteration
in bfloat16, which CPUs without bf16 units emulate: measured on a 2-core AVX2 machine, one Muon
step of torch.optim.Muon on the 3.4M-parameter demo model took 9.8 s against 1.6 s for its
forward+backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_int, check_number, option
from .muon import Muon

OPTIMIZERS = ("auto", "muon", "adamw")
MAX_RATE = 1e30


@dataclass
class OptimConfig:
    optimizer: str = option(
        "auto", "auto (muon on GPUs, adamw on CPUs), muon (Muon + AdamW) or adamw", choices=OPTIMIZERS
    )
    matrix_lr: float = option(0.02, "Muon learning rate of the hidden matrices")
    embedding_lr: float = option(0.2, "AdamW rate of the embeddings (muon)")
    unembedding_lr: float = option(0.004, "AdamW rate of the LM head (muon)")
    scalar_lr: float = option(0.5, "AdamW rate of the scalars (muon)")
    # the single rate of adamw (best of 2e-3/4e-3/8e-3 on the demo model)
    adamw_lr: float = option(4e-3, "the one rate of --optimizer adamw")
    weight_decay: float = option(0.0, "weight decay of Muon / plain AdamW")
    grad_clip: float = option(0.0, "clip the gradients' global norm to this before each step (0: off)")
    warmup_steps: int = option(0, "linear warmup steps")
    warmdown_ratio: float = option(0.2, "fraction of the steps over which the rate decays linearly at the end")
    final_lr_frac: float = option(0.0, "the rate at the end of warmdown, as a fraction of the peak")

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        rates = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "adamw_lr")
        for name in (*rates, "weight_decay", "grad_clip"):
            # past MAX_RATE an optimizer's float32 arithmetic overflows before training can diverge
            check_number(name, getattr(self, name), high=MAX_RATE)
        check_int("warmup_steps", self.warmup_steps, low=0)
        check_number("warmdown_ratio", self.warmdown_ratio, high=1)
        check_number("final_lr_frac", self.final_lr_frac, high=1)


def parameter_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """Split parameters by role: embeddings, head, scalars, hidden matrices."""
    groups = {"embedding": [], "unembedding": [], "scalar": [], "matrix": []}
    for name, p in model.named_parameters():
        if name.startswith(("wte.", "value_embeds.")):
            groups["embedding"].append(p)
        elif name.startswith("lm_head."):
            groups["unembedding"].append(p)
        elif p.ndim < 2:
            groups["scalar"].append(p)
        else:
            groups["matrix"].append(p)
    return groups


def optimizer_kinds(cfg: OptimConfig, device: torch.device) -> list[str]:
    """The optimizers build_optimizers makes for `cfg` on `device`, by class name."""
    if cfg.optimizer == "adamw" or (cfg.optimizer == "auto" and device.type != "cuda"):
        return ["AdamW"]
    return ["AdamW", "Muon"]


def build_optimizers(model, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """The optimizers of `model`, each group's base rate in "initial_lr" (the schedule scales it)."""
    optimizers = _optimizers(model, cfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def _optimizers(model, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    groups = parameter_groups(model)
    device = next(model.parameters()).device
    fused = device.type == "cuda"  # one kernel for all tensors; on CPUs the foreach path is as fast
    if optimizer_kinds(cfg, device) == ["AdamW"]:
        return [
            torch.optim.AdamW(
                model.parameters(), lr=cfg.adamw_lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay, fused=fused
            )
        ]
    scale = (model.config.n_embd / 768) ** -0.5
    adam_groups = [
        dict(params=groups["embedding"], lr=cfg.embedding_lr * scale),
        dict(params=groups["unembedding"], lr=cfg.unembedding_lr * scale),
        dict(params=groups["scalar"], lr=cfg.scalar_lr * scale),
    ]
    adam = torch.optim.AdamW(
        [g for g in adam_groups if g["params"]], betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, fused=fused
    )
    muon = Muon(groups["matrix"], lr=cfg.matrix_lr, momentum=0.95, weight_decay=cfg.weight_decay)
    return [adam, muon]


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup, constant, then linear warmdown to final_lr_frac over the last warmdown_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    warmdown = round(cfg.warmdown_ratio * total_steps)
    if warmdown == 0 or step < total_steps - warmdown:
        return 1.0
    progress = (total_steps - step) / warmdown
    return progress + (1 - progress) * cfg.final_lr_frac


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    """Each group's rate: its base rate (initial_lr) times the schedule's multiplier."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
