"""Curves as PNG: training loss and validation BPB, against steps and against training FLOPs.

Figures are drawn with matplotlib's object API (a `Figure`, no pyplot), imported when a plot is
written: importing lrt never touches matplotlib, and a notebook's backend stays its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.sources import read_utf8


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (the process was killed while writing
    it) is left out; any other line that is not JSON is an error naming the file and line."""
    text = read_utf8(path)
    lines = text.splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}, line {n}: not a JSON record ({e.msg})") from None
    return records


def _series(records: list[dict], kind: tuple[str, ...], x: str, y: str):
    # step 0 (the untrained model, about log2(vocab) bits) would flatten every curve: skip it
    pts = [(r[x], r[y]) for r in records if r["kind"] in kind and r.get(y) is not None and r["step"] > 0]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(runs: dict[str, list[dict]], png: str | Path, title: str = "") -> None:
    """One figure: train loss vs step, validation BPB vs step and vs training FLOPs, a line per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    for label, records in runs.items():
        axes[0].plot(*_series(records, ("train",), "step", "loss"), label=label, alpha=0.8)
        for ax, x in ((axes[1], "step"), (axes[2], "flops")):
            ax.plot(*_series(records, ("eval", "final"), x, "val_bpb"), marker="o", ms=3, label=label)
    axes[0].set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    axes[1].set(xlabel="step", ylabel="validation BPB", title="validation BPB (training schedule)")
    axes[2].set(xlabel="training FLOPs (all passes)", ylabel="validation BPB", title="at matched compute")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def plot_run(metrics_path: str | Path, png: str | Path, title: str = "") -> None:
    plot_runs({Path(metrics_path).parent.name: read_metrics(metrics_path)}, png, title)
