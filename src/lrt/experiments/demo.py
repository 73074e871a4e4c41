"""`lrt demo`: train a small LRT and its baseline on the bundled corpus and say what LRT bought.

LRT (shared projection, kv+residual, Interleaved S=2) trains N steps. The baseline (same backbone,
no pathway) trains as many steps as LRT's FLOPs buy, about 2N, so both pairings come out of one
run each: equal steps (the baseline's validation at step N) and equal training FLOPs (its last
step). The learning rate is constant after warmup, so a point in the middle of the baseline's
curve is a model trained the same way as the one at its end.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..budget import Arm, Budget
from ..config import check_int, option
from ..decoding import generate
from ..model import parameter_counts
from ..presets import get_preset
from ..train.config import TrainConfig
from ..train.curves import plot_runs, read_metrics
from ..train.optim import OptimConfig
from ..train.trainer import Trainer

PROMPT = "HAMLET.\nTo be, or not to be"


@dataclass(frozen=True)
class DemoSettings:
    """What `lrt demo` runs; the fields with help are its flags (cli/experiments.py)."""

    out: str = option("runs/demo", "folder of the two runs and the plot")
    preset: str = "small"
    steps: int = option(100, "LRT training steps (the baseline gets the same FLOPs)")
    batch_size: int = 16
    eval_points: int = 4  # validations per run (besides step 0)
    eval_tokens: int = 32768
    dtype: str = "float32"  # bf16 autocast is emulated (tens of times slower) on CPUs without bf16 units
    sample_bytes: int = 200

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_points", "eval_tokens", "sample_bytes"):
            check_int(name, getattr(self, name))
        if not isinstance(self.out, str) or not self.out:
            raise ValueError(f"out must be a non-empty string, got {self.out!r}")
        get_preset(self.preset)


# `lrt demo --quick`: a tiny model for a few seconds (a smoke test)
QUICK = DemoSettings(
    preset="tiny", steps=8, batch_size=4, eval_points=2, eval_tokens=512, dtype="float32", sample_bytes=40
)


def _train_config(s: DemoSettings, name: str, schedule: str, steps: int, eval_every: int) -> TrainConfig:
    return TrainConfig(
        out=str(Path(s.out) / name),
        preset=s.preset,
        schedule=schedule,
        steps=steps,
        batch_size=s.batch_size,
        eval_every=eval_every,
        eval_tokens=s.eval_tokens,
        dtype=s.dtype,
        final_decode=True,
        optim=OptimConfig(warmup_steps=max(1, steps // 20), warmdown_ratio=0.0),  # AdamW on CPUs (optim.py)
    )


def _fresh(path: Path, log) -> None:
    """The demo owns its run folders: an earlier demo's runs there are replaced."""
    if path.exists():
        log(f"replacing the earlier demo run in {path}")
        shutil.rmtree(path)


def run_demo(settings: DemoSettings, progress: bool = True, log=print) -> dict:
    s = settings
    eval_every = max(1, s.steps // s.eval_points)
    lrt_cfg = _train_config(s, "lrt", "interleaved:2", s.steps, eval_every)
    for name in ("lrt", "baseline"):
        _fresh(Path(s.out) / name, log)
    lrt = Trainer(lrt_cfg)
    arm = Arm(lrt.config, lrt.schedule, lrt_cfg.tokens_per_step(world_size=1, seq_len=lrt.seq_len))
    ratio = arm.flop_ratio
    base_steps = Budget(flops=s.steps * arm.flops_per_step).steps(arm.baseline)  # equal training FLOPs
    base = Trainer(_train_config(s, "baseline", "baseline", base_steps, eval_every))
    log(
        f"LRT: {parameter_counts(lrt.model)}; one step costs {ratio:.2f} baseline steps, so the baseline trains "
        f"{base_steps} steps to LRT's {s.steps} (equal training FLOPs)"
    )

    runs = {}
    for name, trainer in (("lrt", lrt), ("baseline", base)):
        t0 = time.perf_counter()
        summary = trainer.train(progress=progress)
        runs[name] = dict(
            trainer=trainer, summary=summary, wall=time.perf_counter() - t0, metrics=read_metrics(trainer.metrics_path)
        )

    def val_at(name, step):
        return next(r["val_bpb"] for r in runs[name]["metrics"] if r["step"] == step and r["kind"] in ("eval", "final"))

    lrt_final = runs["lrt"]["summary"]
    report = {
        "settings": dataclasses.asdict(s),
        "flops_ratio": ratio,
        "runs": {
            name: {
                "params": parameter_counts(r["trainer"].model).total,
                "steps": r["trainer"].step,
                "tokens": r["trainer"].tokens,
                "train_time": r["trainer"].train_time,
                "wall_time": r["wall"],
                "flops": r["trainer"].step * r["trainer"].flops_per_step,
            }
            for name, r in runs.items()
        },
        "lrt_merged_bpb": lrt_final["val_bpb"],
        "lrt_exact_bpb": lrt_final["val_bpb_exact"],
        "baseline_bpb_equal_steps": val_at("baseline", s.steps),
        "baseline_bpb_equal_flops": runs["baseline"]["summary"]["val_bpb"],
    }
    tok = lrt.tokenizer
    prompt = [tok.bos_id] + tok.encode(PROMPT)
    report["samples"] = {
        name: PROMPT
        + tok.decode(
            generate(
                r["trainer"].model, [prompt], s.sample_bytes, temperature=0.8, top_k=50, stop_token=tok.bos_id
            ).tokens[0]
        )
        for name, r in runs.items()
    }
    plot_runs(
        {"LRT interleaved:2": runs["lrt"]["metrics"], "baseline": runs["baseline"]["metrics"]},
        Path(s.out) / "curves.png",
        title="lrt demo: bundled Shakespeare, byte-level",
    )
    return report


def format_report(report: dict) -> str:
    r, b = report["runs"]["lrt"], report["runs"]["baseline"]

    def minutes(sec):
        return f"{int(sec // 60)}m{sec % 60:04.1f}s"

    rows = [
        ("", "baseline", "LRT"),
        ("parameters", f"{b['params']:,}", f"{r['params']:,} (+{100 * (r['params'] / b['params'] - 1):.1f}%)"),
        ("train steps", f"{b['steps']}", f"{r['steps']}"),
        ("tokens", f"{b['tokens']:,}", f"{r['tokens']:,}"),
        ("wall time (train + evals)", minutes(b["wall_time"]), minutes(r["wall_time"])),
        ("training FLOPs", f"{b['flops']:.3g}", f"{r['flops']:.3g}"),
        (
            "val BPB, training schedule",
            f"{report['baseline_bpb_equal_flops']:.4f}",
            f"{report['lrt_merged_bpb']:.4f} (merged)",
        ),
        ("val BPB, exact decoding", "= the above", f"{report['lrt_exact_bpb']:.4f}"),
    ]
    width = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
    lines = ["".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip() for row in rows]
    lrt_bpb = report["lrt_exact_bpb"]
    lines += ["", "LRT's exact decoding BPB against the baseline (lower is better):"]
    for label, base_bpb in (
        (f"equal steps ({r['steps']})", report["baseline_bpb_equal_steps"]),
        (f"equal training FLOPs ({b['steps']} baseline steps)", report["baseline_bpb_equal_flops"]),
    ):
        delta = lrt_bpb - base_bpb
        verdict = "LRT better" if delta < 0 else "baseline better" if delta > 0 else "tie"
        lines.append(f"  {label:<44} baseline {base_bpb:.4f}  LRT {lrt_bpb:.4f}  difference {delta:+.4f} ({verdict})")
    lines += [
        "",
        "One run each, 100 steps, one seed: the comparisons with seeds, intervals and budgets are in",
        "docs/study/report.md (lrt study run studies/cpu.toml --out runs/study_cpu --jobs 2).",
    ]
    lines += ["", "Samples (temperature 0.8, top-k 50, exact recurrent decoding):"]
    for name, text in report["samples"].items():
        lines += [f"--- {name} ---", text.rstrip(), ""]
    return "\n".join(lines)
