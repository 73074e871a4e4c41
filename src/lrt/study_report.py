"""`lrt study report`: what a study measured, with seeds and intervals, and a verdict per claim.

For every cell and budget: the mean, standard deviation and 95% confidence interval (Student's t)
over seeds of the validation BPB with exact memory (the decoding BPB; for the baseline its only
BPB), and CORE with exact memory where a bundle is given. Each claim of the paper the study's
cells can test gets a verdict: *reproduced*, *contradicted*, or *inconclusive* when the intervals
overlap (for a "no better" claim, overlapping intervals reproduce it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .plots import read_metrics
from .study import Spec, ci95


@dataclass
class Score:
    values: list[float]

    @property
    def mean(self) -> float:
        return ci95(self.values)[0]

    @property
    def std(self) -> float:
        return ci95(self.values)[1]

    @property
    def half(self) -> float:
        return ci95(self.values)[2]

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half, self.mean + self.half

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (95% CI {self.interval[0]:.4f}..{self.interval[1]:.4f}, n={len(self.values)})"


def difference(a: Score, b: Score) -> Score:
    """a - b seed by seed: a run's seed fixes its data order, so the pairs share their batches."""
    return Score([x - y for x, y in zip(a.values, b.values)])


def gap_trend(gaps: list[Score]) -> str:
    """Whether LRT's gap to the baseline shrinks, grows or crosses zero as the budget grows."""
    first, last = gaps[0], gaps[-1]
    where = ("behind the baseline" if last.interval[0] > 0 else "ahead of the baseline" if last.interval[1] < 0
             else "level with the baseline (the CI spans 0)")
    if not (better(first, last) or better(last, first)):
        trend = "does not change beyond its intervals"
    elif (first.mean > 0) != (last.mean > 0):
        trend = "crosses zero"
    else:
        trend = "shrinks" if abs(last.mean) < abs(first.mean) else "grows"
    return (f"From the smallest to the largest budget the gap {trend}: {first.mean:+.4f} -> {last.mean:+.4f} BPB; "
            f"at the largest budget LRT is {where}.")


def better(a: Score, b: Score) -> bool:
    """a's whole interval lies below b's (lower BPB is better)."""
    return a.interval[1] < b.interval[0]


@dataclass
class StudyResult:
    spec: Spec
    bpb: dict[str, list[Score]]  # cell -> per budget
    equal_steps: Score | None  # the baseline at LRT's step count of the largest budget
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # cell -> (FLOPs, mean val BPB)
    core: dict[str, Score] = field(default_factory=dict)


def _at(records: list[dict], step: int) -> dict:
    found = [r for r in records if r["step"] == step and r["kind"] in ("eval", "final")]
    if not found:
        raise ValueError(f"no validation at step {step}: the run is not finished (run `lrt study run` again)")
    return found[-1]


def exact_bpb(record: dict) -> float:
    return record.get("val_bpb_exact", record["val_bpb"])  # a baseline's only BPB is its zero-memory one


def collect(spec: Spec, core: dict[str, list[float]] | None = None) -> StudyResult:
    bpb, curves = {}, {}
    lrt_steps = next(r for r in spec.runs if r.cell.name == "lrt").steps
    equal = []
    for cell in spec.cells:
        runs = [r for r in spec.runs if r.cell is cell]
        metrics = {r.seed: read_metrics(Path(r.config.out) / "metrics.jsonl") for r in runs}
        bpb[cell.name] = [Score([exact_bpb(_at(metrics[r.seed], r.budget_steps[i])) for r in runs])
                          for i in range(len(spec.budgets))]
        points: dict[float, list[float]] = {}
        for records in metrics.values():
            for rec in records:
                if rec["kind"] in ("eval", "final") and rec["step"] > 0:
                    points.setdefault(rec["flops"], []).append(rec["val_bpb"])
        curves[cell.name] = sorted((f, sum(v) / len(v)) for f, v in points.items())
        if cell.name == "baseline":
            equal = [exact_bpb(_at(metrics[r.seed], lrt_steps)) for r in runs]
    scores = {name: Score(v) for name, v in (core or {}).items()}
    return StudyResult(spec, bpb, Score(equal) if equal else None, curves, scores)


def core_scores(spec: Spec, bundle: str, progress: bool = True) -> dict[str, list[float]]:
    """CORE with exact memory of every run's final model (cached beside it as core.json, for
    that bundle: another bundle is scored again)."""
    from .checkpoint import load_run
    from .evaluate.core import evaluate_core

    scores: dict[str, list[float]] = {}
    for run in spec.runs:
        cached = Path(run.config.out) / "core.json"
        if not cached.exists() or json.loads(cached.read_text()).get("bundle") != str(bundle):
            trained = load_run(run.config.out)
            result = evaluate_core(trained.model, trained.tokenizer, bundle, memory="exact", progress=progress)
            cached.write_text(json.dumps({"core": result.core, "bundle": str(bundle)}))
        scores.setdefault(run.cell.name, []).append(json.loads(cached.read_text())["core"])
    return scores


# claims -------------------------------------------------------------------------------------------


def claims(result: StudyResult) -> list[str]:
    """A verdict line per paper claim the cells can test (at the largest budget)."""
    last = {name: scores[-1] for name, scores in result.bpb.items()}
    lines = []

    def verdict(text: str, winner: str, losers: list[str], no_better: bool = False) -> None:
        losers = [n for n in losers if n in last]
        if winner not in last or not losers:
            return
        w = last[winner]
        if no_better:  # "winner is no better than loser"
            beaten = [n for n in losers if better(w, last[n])]
            word = "contradicted" if beaten else "reproduced"
        else:
            beaten = [n for n in losers if better(last[n], w)]
            word = ("contradicted" if beaten else "reproduced" if all(better(w, last[n]) for n in losers)
                    else "inconclusive (intervals overlap)")
        numbers = "; ".join(f"{n} {last[n].mean:.4f} ± {last[n].half:.4f}" for n in [winner, *losers])
        lines.append(f"- **{text}**: {word}. {numbers} (BPB, mean ± 95% CI half-width).")

    verdict("LRT-shared Interleaved S=2 beats the baseline at equal training FLOPs", "lrt", ["baseline"])
    names = list(last)
    verdict("KV Projection + Residual Injection is the best injection", "lrt",
            [n for n in names if n.startswith("injection=")])
    verdict("an upper-middle source layer is best", "lrt", [n for n in names if n.startswith("source_layer=")])
    for chunked in (n for n in names if n.startswith("schedule=chunked")):
        verdict(f"chunked ({chunked.split('=')[1]}) is weaker than interleaved S=2", "lrt", [chunked])
    for wider in (n for n in names if n.startswith("schedule=interleaved:") and int(n.split(":")[-1]) > 2):
        verdict(f"Interleaved S>2 ({wider.split('=')[1]}) is no better than S=2", wider, ["lrt"], no_better=True)
    verdict("the layerwise projection is (slightly) better than the shared one", "projection=layerwise", ["lrt"])
    reset = "reset_memory_at_bos=true"
    if reset in last:  # no claim of the paper (it leaves the reset off): a comparison
        on, off = last[reset], last["lrt"]
        word = "on is better" if better(on, off) else "off is better" if better(off, on) else "no difference beyond the intervals"
        lines.append(f"- **memory reset at document boundaries** (not a paper claim; the paper leaves it off): {word}. "
                     f"on {on.mean:.4f} ± {on.half:.4f}; off (lrt) {off.mean:.4f} ± {off.half:.4f}.")
    return lines


# the report ---------------------------------------------------------------------------------------


def write_report(result: StudyResult, out: Path) -> Path:
    spec = result.spec
    plots = _plots(result, out)
    lines = [f"# Study report: {spec.name}", "",
             f"{len(spec.cells)} cells x {len(spec.seeds)} seeds (seeds {', '.join(map(str, spec.seeds))}); "
             f"budgets in training FLOPs (every pass counted): {', '.join(f'{b:.3g}' for b in spec.budgets)}. "
             "BPB is the validation BPB with exact memory (the decoding BPB, what generation gets; for the "
             "baseline its zero-memory BPB), mean ± standard deviation over seeds and the 95% confidence "
             "interval of the mean (Student's t).", "", "## Verdicts on the paper's claims (largest budget)", ""]
    lines += claims(result) or ["- (the study's cells test none of the paper's claims)"]
    lines += ["", "## LRT against the baseline at equal training FLOPs", "",
              "| budget (FLOPs) | baseline | LRT interleaved:2 (exact memory) | LRT - baseline (95% CI, paired by seed) |",
              "| --- | --- | --- | --- |"]
    for i, budget in enumerate(spec.budgets):
        base, lrt = result.bpb["baseline"][i], result.bpb["lrt"][i]
        gap = difference(lrt, base)
        lines.append(f"| {budget:.3g} | {base.mean:.4f} ± {base.std:.4f} | {lrt.mean:.4f} ± {lrt.std:.4f} | "
                     f"{gap.mean:+.4f} ({gap.interval[0]:+.4f}..{gap.interval[1]:+.4f}) |")
    lines += ["", gap_trend([difference(result.bpb["lrt"][i], result.bpb["baseline"][i])
                             for i in range(len(spec.budgets))])]
    if result.equal_steps is not None:
        lrt = result.bpb["lrt"][-1]
        gap = difference(lrt, result.equal_steps)
        lines += ["", f"At equal steps (the baseline at LRT's step count of the largest budget): baseline "
                      f"{result.equal_steps}, LRT {lrt}: LRT - baseline {gap.mean:+.4f} "
                      f"(95% CI {gap.interval[0]:+.4f}..{gap.interval[1]:+.4f}, paired by seed)."]
    lines += ["", "## Every cell (largest budget)", "", "| cell | schedule | BPB | 95% CI |"
              + (" CORE |" if result.core else ""), "| --- | --- | --- | --- |" + (" --- |" if result.core else "")]
    for cell in spec.cells:
        s = result.bpb[cell.name][-1]
        row = f"| {cell.name} | {cell.schedule} | {s.mean:.4f} ± {s.std:.4f} | {s.interval[0]:.4f}..{s.interval[1]:.4f} |"
        if result.core:
            c = result.core.get(cell.name)
            row += f" {c.mean:.4f} ± {c.std:.4f} |" if c else " |"
        lines.append(row)
    lines += ["", *(f"![{name}]({name})" for name in plots), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps({
        "budgets": spec.budgets, "seeds": spec.seeds,
        "bpb": {k: [s.values for s in v] for k, v in result.bpb.items()},
        "equal_steps": result.equal_steps.values if result.equal_steps else None,
        "core": {k: v.values for k, v in result.core.items()}}, indent=1))
    return path


def _plots(result: StudyResult, out: Path) -> list[str]:
    """BPB against baseline-equivalent compute, a curve per cell with the budgets' intervals; and
    the ablation bars at the largest budget."""
    from matplotlib.figure import Figure

    spec = result.spec
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for cell in spec.cells:
        curve = result.curves[cell.name]
        line = ax.plot([f for f, _ in curve], [b for _, b in curve], alpha=0.5, lw=1)[0]
        scores = result.bpb[cell.name]
        ax.errorbar(spec.budgets, [s.mean for s in scores], yerr=[0 if math.isinf(s.half) else s.half for s in scores],
                    fmt="o", color=line.get_color(), capsize=3, label=cell.name)
    ax.set(xlabel="training FLOPs (baseline-equivalent compute)", ylabel="validation BPB",
           title="BPB against compute (lines: training-schedule BPB; points: exact-memory BPB at the budgets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "bpb_vs_compute.png", dpi=110)

    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    names = [c.name for c in spec.cells]
    scores = [result.bpb[n][-1] for n in names]
    ax.bar(range(len(names)), [s.mean for s in scores], yerr=[0 if math.isinf(s.half) else s.half for s in scores],
           capsize=4, color=["#999999" if n == "baseline" else "#d62728" if n == "lrt" else "#1f77b4" for n in names])
    ax.set_ylim(bottom=min(s.mean - (0 if math.isinf(s.half) else s.half) for s in scores) - 0.05)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set(ylabel="validation BPB (exact memory)", title=f"every cell at {spec.budgets[-1]:.3g} training FLOPs "
                                                          "(mean, 95% CI over seeds)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=110)
    return ["bpb_vs_compute.png", "ablations.png"]
