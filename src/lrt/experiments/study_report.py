"""`lrt study report`: what a study measured, with seeds, paired intervals and verdicts.

The report is computed from the records of study_results.py alone, so a folder that holds only
spec.toml and results.jsonl (docs/study/) regenerates the same report.md.

**Report.** report.md and plots: the preamble (model, corpus, seeds, the verdict rules and the
scale they hold for), per budget each arm's decoding BPB (LRT with exact memory, the baseline with
its only memory, zero) and the paired difference LRT - baseline at equal FLOPs and at equal tokens
with its verdict (stats.py); the decomposition gap(R) = G(R) - D(R); what LRT's memory is worth;
the paper's comparators beside both, with their cost per generated token; the learning-rate
check; the control corpus beside the main one; the referee's experiment; the ablations paired
against lrt. Every table states R under both conventions and epochs.
"""

from __future__ import annotations

from pathlib import Path

from ..flops import decode_cost
from .stats import ABOVE, BELOW, EQUIVALENT, classify, interval, paired, verdict
from .study_plots import plots
from .study_results import Results, decoding_bpb, decompose, reach
from .study_spec import Spec

# formatting ----------------------------------------------------------------------------------------


def mean_ci(values: list[float]) -> str:
    """Mean ± the half-width of its 95% CI, or the one value there is."""
    if not values:
        return "-"
    mean, _, half = interval(values)
    return f"{mean:.4f}" if len(values) < 2 else f"{mean:.4f} ± {half:.4f}"


def diff_ci(values: list[float], level: float = 0.95) -> str:
    """A paired difference: its mean and `level` CI (none for fewer than two pairs)."""
    if not values:
        return "-"
    mean, _, half = interval(values, level)
    return f"{mean:+.4f}" if len(values) < 2 else f"{mean:+.4f} ({mean - half:+.4f}..{mean + half:+.4f})"


def compared(values: list[float], margin: float, lower: str, higher: str) -> str:
    """A paired difference of two variants in words, by the verdict rules (no claim attached)."""
    where = classify(values, margin)
    return {BELOW: lower, ABOVE: higher, EQUIVALENT: f"equivalent within ±{margin:g}"}.get(where, "inconclusive")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


REACH = "R total / scaling, epochs"


# the report ----------------------------------------------------------------------------------------


def write_report(spec: Spec, records: list[dict]) -> Path:
    """report.md and its plots in the study folder, from the records alone."""
    res = Results(spec, records)
    sections = [
        preamble,
        verdicts,
        budgets,
        decomposition,
        memory_worth,
        comparators,
        lr_check,
        control,
        referee,
        ablations,
    ]
    lines = [line for section in sections for line in section(res)]
    lines += ["## Plots", "", *(f"![{name}]({name})" for name in plots(res)), ""]
    path = spec.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def preamble(res: Results) -> list[str]:
    spec, s = res.spec, res.spec.settings
    base, lrt = spec.arms["baseline"], spec.arms["lrt"]
    c = lrt.config
    main = [r for r in res.records if r["stage"] == "main" and "eval" in r]
    some = main[0] if main else None
    seeds_done = sorted(
        seed
        for seed in spec.seeds
        if all(
            res.runs("main", cell, label).get(seed)
            for cell in ("baseline", "lrt")
            for label in labels_of(spec, "main", cell)
        )
    )
    lines = [
        f"# Study report: {spec.name}",
        "",
        f"**Model**: {c.n_layer} layers, d = {c.n_embd}, {c.n_head} head(s), T = {c.sequence_len}, vocabulary "
        f"{c.vocab_size}. The baseline has {base.params('total'):,} parameters ({base.params('scaling'):,} scaling "
        f"parameters: matrices and lm_head), LRT ({spec.reference.schedule}) {lrt.params('total'):,} "
        f"({lrt.params('scaling'):,}); each step reads {lrt.tokens_per_step:,} tokens.",
        "",
        f"**Corpus**: {corpus_name(spec, 'main')}"
        + (f", {some['corpus_tokens']:,} training tokens." if some and some["corpus_tokens"] else "."),
        "",
        f"**Budgets**: R = {', '.join(f'{r:.3g}' for r in res.budget_ratios('main'))} tokens per baseline "
        f"parameter ({s.convention} convention), each a branch of a constant-rate trunk that decays the rate "
        f"to 0 over its last {s.cooldown:.0%} of steps"
        + ("; the baseline also branches at LRT's step counts (equal tokens)" if s.equal_tokens else "")
        + ". Each branch end is scored on held-out text"
        + (
            f" ({some['eval']['rows']:,} rows of {some['eval']['seq_len']} tokens of {some['eval']['data']})"
            if some
            else ""
        )
        + ": LRT with exact memory (the decoding BPB), the baseline with its only memory (zero).",
        "",
        f"**Seeds**: {', '.join(map(str, spec.seeds))}; "
        + (
            "all finished."
            if seeds_done == spec.seeds
            else f"finished: {', '.join(map(str, seeds_done)) or 'none'} of {len(spec.seeds)} (a partial study: "
            "every interval below uses the n it states)."
        )
        + " A seed fixes a run's data order and backbone initialisation, so differences are paired seed by seed; "
        "intervals are Student's t over seeds. BPB cells read mean ± the half-width of the 95% CI.",
        "",
        "## Verdict rules (stated in the spec before the run)",
        "",
        "On the paired difference LRT − baseline, seed by seed; the first rule that applies:",
        "",
        "- **supported**: its 95% CI lies below 0;",
        "- **not supported at this scale**: its 95% CI lies above 0;",
        f"- **equivalent within ±{s.margin:g}** BPB: both one-sided tests at 5% reject (its 90% CI lies inside "
        f"±{s.margin:g});",
        "- **inconclusive**: otherwise (always with fewer than two seeds).",
        "",
        "The paper's claim (LRT beats the baseline at equal training FLOPs) is judged at equal FLOPs; its "
        "equal-token result at equal tokens (LRT at budget R against the baseline trained on LRT's tokens).",
        "",
    ]
    return lines + [scale(res), ""]


def labels_of(spec: Spec, stage: str, cell: str) -> list[str]:
    return [
        label
        for j in spec.jobs
        if j.info["stage"] == stage and j.info["cell"] == cell
        for label in j.info.get("budgets", [])
    ]


def corpus_name(spec: Spec, stage: str) -> str:
    cfg = next(j.config for j in spec.jobs if j.info["stage"] == stage)
    return cfg.data or "the bundled corpus (Shakespeare's works; four plays held out)"


def scale(res: Results) -> str:
    """The scale the verdicts hold for, in words."""
    arms = {}
    for cell in ("baseline", "lrt"):
        found = [r for r in res.records if r["stage"] == "main" and r["cell"] == cell and r["kind"] == "branch"]
        if found:
            arms[cell] = found
    if not arms:
        return "**Scale**: no branch has finished yet."
    base = res.spec.arms["baseline"]
    ratios = res.budget_ratios("main")

    def span(values, fmt=".3g"):
        return f"{min(values):{fmt}} to {max(values):{fmt}}"

    reads = "; ".join(
        f"{'the baseline' if cell == 'baseline' else 'LRT'} reads its corpus "
        + (span([r["epochs"] for r in found], ".2f") + " times" if found[0]["epochs"] else "(size unknown)")
        + f" (R on its own parameters {span([r['R_scaling'] for r in found])} scaling, "
        f"{span([r['R_total'] for r in found])} total)"
        for cell, found in arms.items()
    )
    return (
        f"**Scale**: the verdicts hold for a model of {base.params('total'):,} parameters "
        f"({base.params('scaling'):,} scaling) trained at budgets of R = {span(ratios)} tokens "
        f"per baseline parameter ({res.spec.settings.convention}); {reads}. They say nothing about larger models, "
        "other budgets or other data."
    )


def verdicts(res: Results) -> list[str]:
    top = len(res.budget_ratios("main")) - 1
    lines = [f"## Verdicts at the largest budget (R = {res.budget_ratios('main')[top]:.3g})", ""]
    for pairing, kind in pairings(res):
        diffs = paired(res.bpb("main", "lrt", f"flops:{top}"), res.bpb("main", "baseline", f"{kind}:{top}"))
        lines.append(
            f"- **At {pairing}**: LRT − baseline {diff_ci(diffs)} BPB (95% CI, n = {len(diffs)}): "
            f"**{verdict(diffs, res.margin) if diffs else 'not run yet'}**."
        )
    return [*lines, ""]


def pairings(res: Results) -> list[tuple[str, str]]:
    """The baseline's branch each LRT budget is paired with: equal FLOPs, and equal tokens."""
    return [("equal FLOPs", "flops")] + [("equal tokens", "tokens")] * res.spec.settings.equal_tokens


def budgets(res: Results) -> list[str]:
    lines = [
        "## LRT against the baseline, budget by budget",
        "",
        "Each arm at each budget (BPB: LRT with exact memory, the baseline with zero memory):",
        "",
    ]
    with_core = any("core" in r for r in res.records)
    rows = []
    for i, ratio in enumerate(res.budget_ratios("main")):
        runs = [("baseline", f"flops:{i}", "baseline, equal FLOPs"), ("lrt", f"flops:{i}", "LRT")]
        if res.spec.settings.equal_tokens:
            runs.insert(1, ("baseline", f"tokens:{i}", "baseline at LRT's tokens"))
        for cell, label, name in runs:
            found = res.runs("main", cell, label)
            some = next(iter(found.values()), None)
            row = [
                f"{ratio:.3g}",
                name,
                f"{some['steps']:,}" if some else "-",
                f"{some['tokens']:,}" if some else "-",
                res.reach("main", cell, label),
                mean_ci(list(res.bpb("main", cell, label).values())),
                str(len(found)),
            ]
            if with_core:
                row.append(mean_ci([r["core"]["core"] for r in found.values() if "core" in r]))
            rows.append(row)
    header = ["R", "run", "steps", "tokens", REACH, "BPB", "n"] + ["CORE (exact memory)"] * with_core
    lines += table(header, rows)
    lines += ["", "The paired difference LRT − baseline and its verdict:", ""]
    rows = []
    for i, ratio in enumerate(res.budget_ratios("main")):
        for pairing, kind in pairings(res):
            diffs = paired(res.bpb("main", "lrt", f"flops:{i}"), res.bpb("main", "baseline", f"{kind}:{i}"))
            rows.append(
                [
                    f"{ratio:.3g}",
                    pairing,
                    res.reach("main", "baseline", f"{kind}:{i}"),
                    res.reach("main", "lrt", f"flops:{i}"),
                    diff_ci(diffs),
                    diff_ci(diffs, 0.90),
                    str(len(diffs)),
                    verdict(diffs, res.margin) if diffs else "not run yet",
                ]
            )
    header = [
        "R",
        "pairing",
        f"baseline: {REACH}",
        f"LRT: {REACH}",
        "LRT − baseline (95% CI)",
        "90% CI",
        "n",
        "verdict",
    ]
    return lines + table(header, rows) + [""]


def decomposition(res: Results) -> list[str]:
    lines = ["## Where the equal-FLOPs gap comes from: gap(R) = G(R) − D(R)", ""]
    if not res.spec.settings.equal_tokens:
        return lines + ["(The spec trains no equal-token branches: equal_tokens = false.)", ""]
    lines += [
        "G(R) = baseline at LRT's tokens − baseline at equal FLOPs: what doubling the baseline's compute buys. "
        "D(R) = baseline at LRT's tokens − LRT: LRT's equal-token advantage. Their difference is the gap "
        "LRT − baseline at equal FLOPs, so **the claim holds where D > G** (the gap's CI below 0).",
        "",
    ]
    rows = []
    for i, ratio in enumerate(res.budget_ratios("main")):
        d = decompose(res, "main", i)
        holds = {BELOW: "yes", ABOVE: "no"}.get(classify(d["gap"], res.margin), "not resolved")
        rows.append(
            [
                f"{ratio:.3g}",
                res.reach("main", "baseline", f"tokens:{i}"),
                res.reach("main", "baseline", f"flops:{i}"),
                res.reach("main", "lrt", f"flops:{i}"),
                diff_ci(d["G"]),
                diff_ci(d["D"]),
                diff_ci([-g for g in d["gap"]]),
                str(len(d["gap"])),
                holds if d["gap"] else "not run yet",
            ]
        )
    header = [
        "R",
        f"baseline at LRT's tokens: {REACH}",
        f"baseline, equal FLOPs: {REACH}",
        f"LRT: {REACH}",
        "G (95% CI)",
        "D (95% CI)",
        "D − G (95% CI)",
        "n",
        "D > G",
    ]
    return lines + table(header, rows) + [""]


def memory_worth(res: Results) -> list[str]:
    lines = [
        "## What LRT's memory is worth",
        "",
        "LRT's BPB at each budget with exact memory, with its training schedule's passes (merged: each "
        "position from the last pass that computed it; and each pass on its own positions) and with zero "
        "memory; zero − exact is what the memory is worth.",
        "",
    ]
    some = next((r for r in res.records if r["stage"] == "main" and r["cell"] == "lrt" and "eval" in r), None)
    passes = some["eval"]["parallel_pass_labels"] if some else []
    rows = []
    for i, ratio in enumerate(res.budget_ratios("main")):
        label = f"flops:{i}"
        scored = [r["eval"] for r in res.runs("main", "lrt", label).values()]
        rows.append(
            [
                f"{ratio:.3g}",
                res.reach("main", "lrt", label),
                mean_ci([e["exact"] for e in scored]),
                mean_ci([e["parallel"] for e in scored]),
                *(mean_ci([e["parallel_passes"][p] for e in scored]) for p in range(len(passes))),
                mean_ci([e["zero"] for e in scored]),
                diff_ci([e["zero"] - e["exact"] for e in scored]),
                str(len(scored)),
            ]
        )
    header = ["R", f"LRT: {REACH}", "exact", "parallel (merged)", *(f"pass {p}: {x}" for p, x in enumerate(passes))]
    return lines + table(header + ["zero", "zero − exact (95% CI)", "n"], rows) + [""]


def lr_check(res: Results) -> list[str]:
    check = res.spec.lr_check
    if check is None:
        return []
    lines = [
        f"## Learning-rate check ({check.field}, at the lowest budget)",
        "",
        f"Each arm trained at R = {res.budget_ratios('main')[0]:.3g} with each value, seeds "
        f"{', '.join(map(str, check.seeds))}; each arm then trains with its own best (lowest mean BPB).",
        "",
    ]
    rows, chosen, edge = [], {}, []
    for cell in ("baseline", "lrt"):
        runs = [r for r in res.records if r["stage"] == "lr_check" and r["cell"] == cell and "eval" in r]
        by_value: dict[float, list[dict]] = {}
        for r in runs:
            by_value.setdefault(r["lr"][check.field], []).append(r)
        means = {v: interval([decoding_bpb(r) for r in found])[0] for v, found in by_value.items()}
        if means:
            chosen[cell] = min(means, key=means.get)
        for value in sorted(by_value):
            found = by_value[value]
            diverged = sum("diverged" in r["eval"] for r in found)
            score = f"diverged on {diverged} seed(s)" if diverged else mean_ci([decoding_bpb(r) for r in found])
            label = f"{value:g}" + (" (chosen)" if value == chosen[cell] else "")
            rows.append([cell, label, reach(found[0]), score, str(len(found))])
        if means and chosen[cell] == max(by_value):
            edge.append(cell)
    lines += table(["arm", check.field, REACH, "BPB", "n"], rows)
    if edge:
        lines += ["", f"The best value of {' and '.join(edge)} is the largest checked: a larger one may be better."]
    if len(chosen) == 2:
        same = chosen["baseline"] == chosen["lrt"]
        lines += [
            "",
            f"The arms' best values {'coincide' if same else 'differ'}: "
            f"baseline {chosen['baseline']:g}, LRT {chosen['lrt']:g}.",
        ]
    trained = {
        cell: sorted({r["lr"][check.field] for r in res.records if r["stage"] == "main" and r["cell"] == cell})
        for cell in ("baseline", "lrt")
    }
    if all(trained.values()):
        lines.append(
            "The main stage trained with: "
            + ", ".join(f"{cell} {', '.join(f'{v:g}' for v in values)}" for cell, values in trained.items())
            + "."
        )
    return lines + [""]


def control(res: Results) -> list[str]:
    if res.spec.control is None:
        return []
    seeds = res.spec.control.seeds
    lines = [
        "## Repetition: the main corpus against the control corpus",
        "",
        f"Control corpus: {corpus_name(res.spec, 'control')}. At the same R and the control's seeds "
        f"({', '.join(map(str, seeds))}), the gap LRT − baseline at equal FLOPs on each corpus, and its parts G "
        "and D: repeated tokens are worth less, and at equal FLOPs the baseline repeats about twice as often as "
        "LRT (the epochs say how often each arm reads its corpus). The last row of each R is the gap on the "
        "control corpus minus the gap on the main corpus, seed by seed: what repetition did to the gap.",
        "",
    ]
    main = {round(r, 6): i for i, r in enumerate(res.budget_ratios("main"))}
    rows = []
    for j, ratio in enumerate(res.budget_ratios("control")):
        budgets = {"main": main.get(round(ratio, 6)), "control": j}
        gap = {}
        for stage, i in budgets.items():
            if i is None:
                rows.append([f"{ratio:.3g}", stage, "not a main budget", "-", "-", "-", "-", "-", "-"])
                continue
            lrt, baseline = (res.bpb(stage, cell, f"flops:{i}") for cell in ("lrt", "baseline"))
            gap[stage] = {seed: lrt[seed] - baseline[seed] for seed in seeds if seed in lrt and seed in baseline}
            gaps, parts = list(gap[stage].values()), decompose(res, stage, i, seeds)
            rows.append(
                [
                    f"{ratio:.3g}",
                    stage,
                    res.reach(stage, "baseline", f"flops:{i}"),
                    res.reach(stage, "lrt", f"flops:{i}"),
                    diff_ci(gaps),
                    diff_ci(parts["G"]),
                    diff_ci(parts["D"]),
                    str(len(gaps)),
                    verdict(gaps, res.margin) if gaps else "not run yet",
                ]
            )
        if len(gap) == 2:
            moved = paired(gap["control"], gap["main"])
            rows.append([f"{ratio:.3g}", "control − main", "", "", diff_ci(moved), "", "", str(len(moved)), ""])
    header = [
        "R",
        "corpus",
        f"baseline: {REACH}",
        f"LRT: {REACH}",
        "gap: LRT − baseline (95% CI)",
        "G (95% CI)",
        "D (95% CI)",
        "n",
        "verdict",
    ]
    return lines + table(header, rows) + [""]


def referee(res: Results) -> list[str]:
    ref = res.spec.referee
    if ref is None:
        return []
    first = ref.schedules[0]
    lines = [
        "## The referee's experiment: sequential unrolling against parallel training",
        "",
        f"The reference LRT trained with {', '.join(ref.schedules)} for {ref.steps:,} steps at T = {ref.seq_len}, "
        f"seeds {', '.join(map(str, ref.seeds))}. Final held-out BPB of each:",
        "",
    ]
    rows = []
    for schedule in ref.schedules:
        found = res.runs("referee", schedule, kind="run")
        some = next(iter(found.values()), None)
        rows.append(
            [
                schedule,
                reach(some) if some else "not run yet",
                mean_ci([r["eval"]["exact"] for r in found.values()]),
                mean_ci([r["eval"]["parallel"] for r in found.values()]),
                mean_ci([r["eval"]["zero"] for r in found.values()]),
                str(len(found)),
            ]
        )
    lines += table(["schedule", REACH, "exact", "parallel (own schedule)", "zero", "n"], rows)
    exact = {
        s: {seed: r["eval"]["exact"] for seed, r in res.runs("referee", s, kind="run").items()} for s in ref.schedules
    }
    for other in ref.schedules[1:]:
        diffs = paired(exact[other], exact[first])
        lines += [
            "",
            f"Exact BPB, {other} − {first}: {diff_ci(diffs)} (95% CI, n = {len(diffs)}): "
            + (compared(diffs, res.margin, f"{other} lower", f"{other} higher") if diffs else "not run yet")
            + ".",
        ]
    comparisons = [r for r in res.records if r["stage"] == "referee" and r["kind"] == "comparison"]
    if not comparisons:
        return lines + [""]
    lines += [
        "",
        f"Per seed, both models read the same held-out rows with exact memory: the per-token loss difference "
        f"(other − {first}, bits per token), the cosine between the two models' memory vectors m_t at the same "
        "positions, and the norms of the source states before their RMS norm (m_t itself has norm √d by "
        "construction). Mean ± std [5%, 50%, 95% quantiles]:",
        "",
    ]
    rows = [
        [
            str(c["seed"]),
            c["cell"],
            f"{c['rows']} x {c['seq_len']}",
            spread(c["loss_diff"], "+.4f"),
            spread(c["cosine"], ".3f"),
            spread(c["state_norm"][c["reference"]], ".2f"),
            spread(c["state_norm"][c["cell"]], ".2f"),
        ]
        for c in comparisons
    ]
    header = [
        "seed",
        "other",
        "rows x T",
        "loss difference (bits)",
        "cosine of m_t",
        f"norm of h ({first})",
        "norm of h (other)",
    ]
    return lines + table(header, rows) + [""]


def spread(s: dict, fmt: str) -> str:
    return f"{s['mean']:{fmt}} ± {s['std']:.3g} [{s['q05']:{fmt}}, {s['q50']:{fmt}}, {s['q95']:{fmt}}]"


def comparators(res: Results) -> list[str]:
    """The paper's comparators beside the main stage's baseline and LRT, seed by seed, at equal
    FLOPs and at LRT's tokens, with what each costs per generated token."""
    spec = res.spec
    if not spec.comparator_cells:
        return []
    indices = sorted(
        {int(label.split(":")[1]) for c in spec.comparator_cells for label in labels_of(spec, "comparators", c.name)}
    )
    ratios = res.budget_ratios("main")
    names = [c.name for c in spec.comparator_cells]
    base_cost = decode_cost(spec.arms["baseline"].config, 1, spec.arms["baseline"].seq_len // 2, 4)[1]
    lines = [
        "## The paper's comparators",
        "",
        f"{', '.join(names)} on the baseline's backbone, with the baseline's learning rate, each at the budget's "
        "training FLOPs and at LRT's tokens (the paper's pairing for this comparison), seeds "
        f"{', '.join(map(str, spec.comparators.seeds))}, paired with the main stage's runs of the same seeds. BPB: "
        "a looped transformer with its only memory (zero), PonderLM-2 with its exact recurrence (what generation "
        "gets). Per generated token, a looped transformer runs its stack `loops` times and PonderLM-2 twice (the "
        "token, then its thought); the FLOPs column is one generated token's at half the window over the "
        "baseline's (flops.decode_cost).",
        "",
    ]
    rows = []
    for i in indices:
        runs = [("main", "baseline", f"flops:{i}", "baseline, equal FLOPs"), ("main", "lrt", f"flops:{i}", "LRT")]
        runs.insert(1, ("main", "baseline", f"tokens:{i}", "baseline at LRT's tokens"))
        for name in names:
            runs += [
                ("comparators", name, f"flops:{i}", f"{name}, equal FLOPs"),
                ("comparators", name, f"tokens:{i}", f"{name} at LRT's tokens"),
            ]
        for stage, cell, label, title in runs:
            found = res.runs(stage, cell, label)
            some = next(iter(found.values()), None)
            config = spec.arms[cell].config
            per_token = decode_cost(config, 1, config.sequence_len // 2, 4)[1] / base_cost
            rows.append(
                [
                    f"{ratios[i]:.3g}",
                    title,
                    f"{some['steps']:,}" if some else "-",
                    f"{some['tokens']:,}" if some else "-",
                    res.reach(stage, cell, label),
                    mean_ci(list(res.bpb(stage, cell, label).values())),
                    str(len(found)),
                    f"{config.loops * config.slots}",
                    f"{per_token:.2f}x",
                ]
            )
    header = ["R", "run", "steps", "tokens", REACH, "BPB", "n", "stack passes / token", "FLOPs / token"]
    lines += table(header, rows)
    lines += [
        "",
        "Paired differences by the verdict rules (a negative difference: the first is better):",
        "",
    ]
    rows = []
    for i in indices:
        lrt = res.bpb("main", "lrt", f"flops:{i}")
        for name in names:
            for pairing, kind in (("equal FLOPs", "flops"), ("LRT's tokens", "tokens")):
                mine = res.bpb("comparators", name, f"{kind}:{i}")
                for first, second, a, b in (
                    (name, "baseline", mine, res.bpb("main", "baseline", f"{kind}:{i}")),
                    ("LRT", name, lrt, mine),
                ):
                    diffs = paired(a, b)
                    rows.append(
                        [
                            f"{ratios[i]:.3g}",
                            f"{first} − {second}",
                            pairing,
                            diff_ci(diffs),
                            diff_ci(diffs, 0.90),
                            str(len(diffs)),
                            compared(diffs, res.margin, f"{first} better", f"{second} better")
                            if diffs
                            else "not run yet",
                        ]
                    )
    header = ["R", "difference", "pairing", "95% CI", "90% CI", "n", "reading"]
    return lines + table(header, rows) + [""]


def ablations(res: Results) -> list[str]:
    cells = [c.name for c in res.spec.cells if c.name not in ("baseline", "lrt")]
    if not cells:
        return []
    lines = [
        "## Ablations, paired against lrt at equal training FLOPs",
        "",
        "Each variant changes one field of the reference LRT; its exact-memory BPB against lrt's, seed by seed "
        f"(the verdict rules' intervals, with ±{res.margin:g} as the margin of equivalence):",
        "",
    ]
    rows = []
    for i, ratio in enumerate(res.budget_ratios("main")):
        label = f"flops:{i}"
        reference = res.bpb("main", "lrt", label)
        for cell in cells:
            diffs = paired(res.bpb("main", cell, label), reference)
            rows.append(
                [
                    f"{ratio:.3g}",
                    cell,
                    res.reach("main", cell, label),
                    mean_ci(list(res.bpb("main", cell, label).values())),
                    diff_ci(diffs),
                    diff_ci(diffs, 0.90),
                    str(len(diffs)),
                    compared(diffs, res.margin, "lower than lrt", "higher than lrt") if diffs else "not run yet",
                ]
            )
    header = ["R", "cell", REACH, "BPB", "cell − lrt (95% CI)", "90% CI", "n", "reading"]
    return lines + table(header, rows) + [""]
