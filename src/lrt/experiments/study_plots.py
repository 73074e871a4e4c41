"""The plots of `lrt study report`: the gap against R with its band, its decomposition G and D,
BPB against the budget per arm, and the trunks' validation curves, drawn from the records alone."""

from __future__ import annotations

import math

from .stats import interval, paired
from .study_results import Results, decoding_bpb, decompose

PLOTS = ("gap_vs_R.png", "decomposition.png", "bpb_vs_R.png", "trunk_curves.png")


def plots(res: Results) -> list[str]:
    """The gap against R with its 95% band (main and control), G(R) and D(R), BPB against the
    budget per arm, and the trunks' validation curves against training FLOPs."""
    from matplotlib.figure import Figure

    out = res.spec.out
    stages = ["main"] + ["control"] * (res.spec.control is not None)
    ticks = sorted({r for stage in stages for r in res.budget_ratios(stage)})

    def band(ax, ratios, values, label):
        """Mean and 95% band of per-seed values at each R (points with fewer than 2 seeds: no band)."""
        points = [(r, interval(v)) for r, v in zip(ratios, values) if v]
        if not points:
            return
        x = [r for r, _ in points]
        mean = [m for _, (m, _, _) in points]
        line = ax.plot(x, mean, marker="o", label=label)[0]
        finite = [(r, m, h) for r, (m, _, h) in points if math.isfinite(h)]
        ax.fill_between(
            [r for r, _, _ in finite],
            [m - h for _, m, h in finite],
            [m + h for _, m, h in finite],
            color=line.get_color(),
            alpha=0.2,
        )

    def axes(title: str, ylabel: str):
        fig = Figure(figsize=(7, 4.5))
        ax = fig.subplots()
        ax.set(
            xscale="log",
            xlabel=f"R (tokens per baseline parameter, {res.spec.settings.convention})",
            ylabel=ylabel,
            title=title,
        )
        ax.set_xticks(ticks, [f"{r:.3g}" for r in ticks])  # the budgets, not log-scale powers of ten
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        return fig, ax

    def save(fig, ax, name: str) -> None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)

    fig, ax = axes("LRT − baseline at equal training FLOPs (95% band)", "BPB difference")
    ax.axhline(0, color="black", lw=0.8)
    for stage in stages:
        ratios = res.budget_ratios(stage)
        gaps = [
            paired(res.bpb(stage, "lrt", f"flops:{i}"), res.bpb(stage, "baseline", f"flops:{i}"))
            for i in range(len(ratios))
        ]
        band(ax, ratios, gaps, f"{stage} corpus")
    save(fig, ax, PLOTS[0])

    fig, ax = axes("gap = G − D: the claim holds where D > G", "BPB")
    ax.axhline(0, color="black", lw=0.8)
    if res.spec.settings.equal_tokens:
        ratios = res.budget_ratios("main")
        parts = [decompose(res, "main", i) for i in range(len(ratios))]
        band(ax, ratios, [p["G"] for p in parts], "G: what doubling the baseline's compute buys")
        band(ax, ratios, [p["D"] for p in parts], "D: LRT's equal-token advantage")
    save(fig, ax, PLOTS[1])

    fig, ax = axes("held-out BPB against training FLOPs (as R of the baseline)", "BPB (LRT: exact memory)")
    for cell in res.spec.cells:
        by_x: dict[float, list[float]] = {}
        for r in res.records:
            if r["stage"] == "main" and r["cell"] == cell.name and r["kind"] == "branch":
                by_x.setdefault(res.compute_ratio(r), []).append(decoding_bpb(r))
        x = sorted(by_x)
        band(ax, x, [by_x[k] for k in x], cell.name)
    save(fig, ax, PLOTS[2])

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colors: dict[str, str] = {}  # a cell's seeds share its color and one legend entry
    for r in res.records:
        points = [(f, b) for step, f, b in r.get("curve", []) if step > 0]  # step 0 would flatten the curves
        if r["stage"] != "main" or r["kind"] != "trunk" or not points:
            continue
        label = None if r["cell"] in colors else r["cell"]
        line = ax.plot(*zip(*points), lw=1, alpha=0.7, color=colors.get(r["cell"]), label=label)[0]
        colors.setdefault(r["cell"], line.get_color())
    ax.set(
        xscale="log",
        xlabel="training FLOPs (all passes)",
        ylabel="validation BPB (training schedule)",
        title="the trunks (constant rate), a line per seed",
    )
    ax.grid(alpha=0.3)
    save(fig, ax, PLOTS[3])
    return list(PLOTS)
