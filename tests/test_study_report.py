"""`lrt study report`: the verdict rules, the G/D decomposition, the report's statements of R and
epochs, regeneration from results.jsonl alone, partial studies, and the referee's comparison of
two models' memories (issue 21). The study folder is faked: a real spec, with chosen numbers
written where its jobs would have written theirs."""

import dataclasses
import json
import shutil

import pytest
import torch

from helpers import random_model, tiny_config
from lrt.cli import main
from lrt.evaluate.bpb import BPBResult
from lrt.experiments.stats import T_95, T_975, classify, equivalent, interval, paired, verdict
from lrt.experiments.study_report import write_report
from lrt.experiments.study_results import Results, collect, compare_memories, decompose, exact_reading, read_results
from lrt.experiments.study_spec import load_spec

SPEC = """
[study]
name = "fake"
seeds = [0, 1, 2]
ratios = [2, 4]
convention = "scaling"
margin = 0.01

[train]
preset = "tiny"
seq_len = 32
batch_size = 2

[reference]
schedule = "interleaved:2"

[ablations]
source_layer = [1]

[lr_check]
adamw_lr = [0.004, 0.008]
seeds = [0, 1]

[control]
data = "{control}"
val_data = "{control}"
ratios = [4]
seeds = [0, 1]

[referee]
steps = 4
seq_len = 16
seeds = [0]

[comparators]
names = ["loop-2", "PonderLM-2"]
ratios = [4]
"""

# True BPB per (stage, cell, budget label); each seed shifts every run by the same amount (the
# pairing removes it) plus a small per-run wobble so that paired differences have a spread.
TRUE = {
    ("main", "baseline", "flops:0"): 2.00,
    ("main", "baseline", "tokens:0"): 2.20,
    ("main", "lrt", "flops:0"): 2.05,  # at R = 2: G = 0.20, D = 0.15: the baseline wins
    ("main", "source_layer=1", "flops:0"): 2.10,
    ("main", "baseline", "flops:1"): 1.80,
    ("main", "baseline", "tokens:1"): 1.95,
    ("main", "lrt", "flops:1"): 1.70,  # at R = 4: G = 0.15, D = 0.25: LRT wins
    ("main", "source_layer=1", "flops:1"): 1.70,
    ("comparators", "loop-2", "flops:1"): 1.75,  # better than the baseline, worse than LRT
    ("comparators", "loop-2", "tokens:1"): 1.72,
    ("comparators", "PonderLM-2", "flops:1"): 1.90,  # at LRT's tokens better than LRT
    ("comparators", "PonderLM-2", "tokens:1"): 1.65,
    ("control", "baseline", "flops:0"): 1.90,
    ("control", "baseline", "tokens:0"): 2.00,
    ("control", "lrt", "flops:0"): 1.95,
}
SHIFT = {0: 0.0, 1: 0.03, 2: -0.02}
WOBBLE = {0: 0.001, 1: -0.002, 2: 0.0015}
LR_BPB = {("baseline", 0.004): 2.1, ("baseline", 0.008): 2.2, ("lrt", 0.004): 2.3, ("lrt", 0.008): 2.25}
CHOICE = {"baseline": 0.004, "lrt": 0.008}


COMPARISON = {  # a referee comparison, computed from checkpoints the fake runs do not have
    "stage": "referee",
    "kind": "comparison",
    "seed": 0,
    "cell": "interleaved:2",
    "reference": "sequential",
    "rows": 64,
    "seq_len": 16,
    **{
        name: {"mean": m, "std": 0.1, "q05": m - 0.1, "q25": m, "q50": m, "q75": m, "q95": m + 0.1}
        for name, m in (("loss_diff", 0.012), ("cosine", 0.87))
    },
    "state_norm": {
        s: {"mean": 5.0, "std": 1.0, "q05": 4, "q25": 4.5, "q50": 5, "q75": 5.5, "q95": 6}
        for s in ("sequential", "interleaved:2")
    },
}


def bpb(stage, cell, label, seed):
    wobble = WOBBLE[seed] * (cell != "baseline")
    return TRUE[(stage, cell, label)] + SHIFT[seed] + wobble


def scored(job, value: float) -> dict:
    """eval.json as `lrt.experiments.study.score` writes it."""
    lrt_run = "exact" in job.memories
    result = BPBResult(
        tokens=256,
        bytes=256,
        zero=None if "zero" not in job.memories else value + 0.3 if lrt_run else value,
        parallel=value + 0.02 if lrt_run else None,
        parallel_schedule=job.config.schedule if lrt_run else None,
        parallel_passes=[value + 0.3, value + 0.01] if lrt_run else [],
        parallel_pass_labels=["zero memory, positions t mod 2 == 0", "memory from the buffer, t mod 2 == 1"]
        if lrt_run
        else [],
        exact=value if lrt_run else None,
    )
    return {
        "step": job.steps,
        "train_time": 1.0,
        "rows": 8,
        "seq_len": 32,
        "data": "validation",
        **dataclasses.asdict(result),
    }


def fake_study(tmp_path, skip=()):
    """A study folder whose jobs all finished with the chosen numbers, except the (stage, cell,
    label, seed) in `skip`; its lr check chose CHOICE."""
    control = tmp_path / "control.txt"
    control.write_text("\n\n".join(f"passage {i}: the quick brown fox jumps over the lazy dog" for i in range(50)))
    out = tmp_path / "study"
    out.mkdir()
    (out / "spec.toml").write_text(SPEC.format(control=control))
    (out / "lr_choice.json").write_text(json.dumps({"field": "adamw_lr", "choice": CHOICE, "means": {}}))
    spec = load_spec(out / "spec.toml", out)
    for job in spec.jobs:
        info = job.info
        job.path.mkdir(parents=True)
        (job.path / "train_config.json").write_text(json.dumps(job.config.to_dict()))
        if info["kind"] != "branch":  # trunks and whole runs: their validation curve
            curve = [{"step": s, "kind": "eval", "flops": s * 1e6, "val_bpb": 3.0 - s / job.steps} for s in (0, 1)]
            curve.append({"step": job.steps, "kind": "final", "flops": job.steps * 1e6, "val_bpb": 2.0})
            (job.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        if info["kind"] == "trunk":
            continue
        if info["stage"] == "lr_check":
            value = LR_BPB[(info["cell"], info["adamw_lr"])] + SHIFT[info["seed"]]
        elif info["stage"] == "referee":
            value = 2.5 + 0.01 * (info["cell"] == "sequential") + SHIFT[info["seed"]]
        elif any((info["stage"], info["cell"], label, info["seed"]) in skip for label in info["budgets"]):
            continue
        else:
            value = bpb(info["stage"], info["cell"], info["budgets"][0], info["seed"])
        (job.path / "eval.json").write_text(json.dumps(scored(job, value)))
    return spec


# the verdict rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "differences, expected",
    [
        ([-0.05, -0.04, -0.06], "supported"),
        ([0.05, 0.04, 0.06], "not supported at this scale"),
        ([0.001, -0.001, 0.002, -0.002, 0.0], "equivalent within ±0.01"),  # TOST, though the 95% CI spans 0
        ([0.003, 0.004, 0.005], "not supported at this scale"),  # excludes 0: the first rule wins over TOST
        ([0.05, -0.04, 0.01], "inconclusive"),
        ([-0.05], "inconclusive"),  # one pair has no interval
    ],
)
def test_the_verdict_rules(differences, expected):
    assert verdict(differences, margin=0.01) == expected


def test_the_rules_cases_are_what_they_claim():
    wide_but_equivalent = [0.001, -0.001, 0.002, -0.002, 0.0]
    mean, _, half = interval(wide_but_equivalent)
    assert mean - half < 0 < mean + half and equivalent(wide_but_equivalent, 0.01)
    significant_and_small = [0.003, 0.004, 0.005]
    mean, _, half = interval(significant_and_small)
    assert mean - half > 0 and equivalent(significant_and_small, 0.01)
    assert not equivalent(significant_and_small, 0.004)  # the 90% CI reaches past a smaller margin
    assert classify([0.02, 0.0, 0.01], margin=0.01) == "inconclusive"
    assert paired({0: 1.0, 1: 2.0, 2: 5.0}, {1: 1.5, 2: 1.0, 3: 9.0}) == [0.5, 4.0]  # seeds both have


def test_the_t_tables_are_students_quantiles():
    t = pytest.importorskip("scipy.stats").t
    for table, q in ((T_975, 0.975), (T_95, 0.95)):
        assert all(abs(value - t.ppf(q, df)) < 5e-4 for df, value in table.items())
    # the 90% interval of the one-sided tests: t(0.95, n - 1) x std / sqrt(n)
    values = [1.0, 2.0, 4.0]
    mean, std, half = interval(values, level=0.90)
    assert half == pytest.approx(t.ppf(0.95, 2) * std / 3**0.5, rel=1e-3)


# the report ----------------------------------------------------------------------------------------


def test_the_decomposition_is_the_hand_computation(tmp_path):
    spec = fake_study(tmp_path)
    res = Results(spec, collect(spec))
    for i in (0, 1):
        parts = decompose(res, "main", i)
        tokens = [bpb("main", "baseline", f"tokens:{i}", s) for s in (0, 1, 2)]
        flops = [bpb("main", "baseline", f"flops:{i}", s) for s in (0, 1, 2)]
        lrt_ = [bpb("main", "lrt", f"flops:{i}", s) for s in (0, 1, 2)]
        assert parts["G"] == pytest.approx([t - f for t, f in zip(tokens, flops)])
        assert parts["D"] == pytest.approx([t - x for t, x in zip(tokens, lrt_)])
        assert parts["gap"] == pytest.approx([g - d for g, d in zip(parts["G"], parts["D"])])
    assert interval(decompose(res, "main", 0)["G"])[0] == pytest.approx(0.20)
    assert interval(decompose(res, "main", 1)["D"])[0] == pytest.approx(0.25 - sum(WOBBLE.values()) / 3)


def test_records_hold_what_the_report_needs(tmp_path):
    spec = fake_study(tmp_path)
    cored = next(j for j in spec.jobs if j.info["kind"] == "branch")
    (cored.path / "core.json").write_text(json.dumps({"core": 0.125, "bundle": "b"}))  # as --bundle caches it
    records = collect(spec)
    assert read_results(spec.out / "results.jsonl") == records
    branch = next(r for r in records if r["stage"] == "main" and r["cell"] == "lrt" and r["budgets"] == ["flops:1"])
    arm = spec.arms["lrt"]
    assert branch["tokens"] == branch["steps"] * arm.tokens_per_step
    assert branch["R_scaling"] == pytest.approx(branch["tokens"] / arm.params("scaling"))
    assert branch["epochs"] == pytest.approx(branch["tokens"] / branch["corpus_tokens"])
    assert branch["lr"] == {"adamw_lr": CHOICE["lrt"]} and branch["eval"]["exact"] == pytest.approx(1.701)
    trunk = next(r for r in records if r["kind"] == "trunk")
    assert [p[0] for p in trunk["curve"]] == [0, 1, trunk["steps"]] and "eval" not in trunk
    control = next(r for r in records if r["stage"] == "control")
    assert control["corpus_tokens"] < 10_000 < branch["corpus_tokens"]  # each stage its own corpus
    assert next(r for r in records if r["path"] == str(cored.path.relative_to(spec.out)))["core"]["core"] == 0.125
    assert "| CORE (exact memory) |" in write_report(spec, records).read_text()


def test_the_report_states_r_epochs_and_verdicts_and_regenerates_from_results_alone(tmp_path):
    spec = fake_study(tmp_path)
    out = spec.out
    (out / "results.jsonl").write_text(json.dumps(COMPARISON) + "\n")  # computed from checkpoints
    assert main(["study", "report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "R total / scaling, epochs" in text and " ep |" in text
    assert "tokens per baseline parameter (scaling convention)" in text and "**Scale**: the verdicts hold" in text
    lines = text.splitlines()
    top = next(line for line in lines if line.startswith("- **At equal FLOPs**"))
    assert top.startswith("- **At equal FLOPs**: LRT − baseline -0.0998") and top.endswith("n = 3): **supported**.")
    verdicts = [line for line in lines if line.startswith(("| 2 | equal", "| 4 | equal"))]
    assert [line.split(" | ")[-1] for line in verdicts] == [
        "not supported at this scale |",  # R = 2 at equal FLOPs: +0.05
        "supported |",  # equal tokens: -0.15
        "supported |",  # R = 4: -0.10
        "supported |",
    ]
    decomposition = [line.split(" | ")[-1] for line in lines if line.startswith(("| 2 | 0.75", "| 4 | 1.5 "))]
    assert decomposition == ["no |", "yes |"]  # D > G at R = 4 only
    assert "- **supported**: its 95% CI lies below 0" in text and "equivalent within ±0.01" in text
    assert "the claim holds where D > G" in text
    assert "The arms' best values differ: baseline 0.004, LRT 0.008" in text
    assert "The main stage trained with: baseline 0.004, lrt 0.008" in text
    assert "| 4 | control |" in text and "| 4 | main |" in text
    rows = {row[1]: row for row in (line.split(" | ") for line in lines) if row[0] == "| 4" and len(row) == 9}
    assert rows["control"][4].startswith("+0.0495") and rows["control"][5].startswith("+0.1000")  # gap, G
    assert rows["main"][4].startswith("-0.1005") and rows["main"][-1] == "supported |"
    assert rows["control − main"][4] == "+0.1500 (+0.1500..+0.1500)"  # what the repetition did, seed by seed
    assert "0.870 ± 0.1" in text and "sequential" in text  # the referee's comparison, kept
    assert "| 4 | source_layer=1 |" in text and "Seeds**: 0, 1, 2; all finished" in text
    for name in ("gap_vs_R.png", "decomposition.png", "bpb_vs_R.png", "trunk_curves.png"):
        assert (out / name).stat().st_size > 5_000
    results = (out / "results.jsonl").read_text()
    comparisons = [line.split(" | ") for line in lines if line.startswith("| 4 | ") and " − " in line]
    readings = {(row[2], row[1]): row[-1].rstrip(" |") for row in comparisons if len(row) == 7}
    assert readings == {
        ("equal FLOPs", "loop-2 − baseline"): "loop-2 better",
        ("equal FLOPs", "LRT − loop-2"): "LRT better",
        ("LRT's tokens", "loop-2 − baseline"): "loop-2 better",
        ("LRT's tokens", "LRT − loop-2"): "LRT better",
        ("equal FLOPs", "PonderLM-2 − baseline"): "baseline better",
        ("equal FLOPs", "LRT − PonderLM-2"): "LRT better",
        ("LRT's tokens", "PonderLM-2 − baseline"): "PonderLM-2 better",
        ("LRT's tokens", "LRT − PonderLM-2"): "PonderLM-2 better",
    }
    assert "| 4 | PonderLM-2 at LRT's tokens |" in text and "| 2 | 1.93x |" in text  # passes and FLOPs per token
    for stage in ("main", "control", "lr_check", "referee", "comparators"):
        shutil.rmtree(out / stage)
    (out / "report.md").unlink()
    assert main(["study", "report", str(out)]) == 0
    assert (out / "report.md").read_text() == text and (out / "results.jsonl").read_text() == results


def test_a_partial_study_states_its_seeds_and_n(tmp_path):
    skip = {("main", "lrt", "flops:1", 2), ("main", "baseline", "flops:1", 1)}
    spec = fake_study(tmp_path, skip=skip)
    assert main(["study", "report", str(spec.out)]) == 0
    text = (spec.out / "report.md").read_text()
    assert "finished: 0 of 3 (a partial study" in text
    assert "LRT − baseline" in text and "(95% CI, n = 1)" in text and "**inconclusive**" in text


def test_report_needs_runs_or_results(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    (out / "spec.toml").write_text(SPEC.format(control=tmp_path / "c.txt"))
    assert main(["study", "report", str(out)]) == 2
    assert "neither the study's runs nor results.jsonl" in capsys.readouterr().err


# the referee's comparison --------------------------------------------------------------------------


def test_comparing_memories_of_two_models():
    config = tiny_config(source_layer=2)
    first, second = random_model(config, seed=0, std=0.1), random_model(config, seed=1, std=0.1)
    rows = torch.randint(1, config.vocab_size, (3, config.sequence_len + 1), generator=torch.Generator().manual_seed(0))
    token_bytes = torch.ones(config.vocab_size, dtype=torch.long)
    token_bytes[0] = 0
    names = ("sequential", "interleaved:2")
    same = compare_memories(first, first, rows, token_bytes, names=names)
    assert same["loss_diff"]["mean"] == 0 and same["loss_diff"]["q95"] == 0
    assert same["cosine"]["mean"] == pytest.approx(1, abs=1e-6) and same["cosine"]["q05"] == pytest.approx(1, abs=1e-6)
    other = compare_memories(first, second, rows, token_bytes, names=names)
    assert (other["rows"], other["seq_len"]) == (3, config.sequence_len)
    flat = [v for s in (other["loss_diff"], other["cosine"], *other["state_norm"].values()) for v in s.values()]
    assert all(torch.isfinite(torch.tensor(flat))) and other["cosine"]["mean"] < 0.99
    assert other["loss_diff"]["q05"] <= other["loss_diff"]["q50"] <= other["loss_diff"]["q95"]
    # the hooked source states are the memory vectors before their norm
    idx = rows[:, :-1]
    loss, memory, states = exact_reading(first, idx, rows[:, 1:])
    assert loss.shape == idx.shape and torch.allclose(
        torch.nn.functional.rms_norm(states, (config.n_embd,)), memory, atol=1e-5
    )


# publishing ----------------------------------------------------------------------------------------


def test_a_published_study_regenerates_its_report_without_the_runs(tmp_path):
    spec = fake_study(tmp_path)
    trunk = next(j for j in spec.jobs if j.info["kind"] == "trunk")
    train = [{"step": s, "kind": "train", "loss": 3.0, "flops": s * 1e6} for s in range(1, 26)]
    with open(trunk.path / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in train)
    (trunk.path / "checkpoints").mkdir()
    dest = tmp_path / "docs" / "study"
    assert main(["study", "publish", str(spec.out), "--out", str(dest), "--every", "10"]) == 0
    text = (spec.out / "report.md").read_text()
    assert (dest / "report.md").read_text() == text and (dest / "lr_choice.json").is_file()
    published = dest / "runs" / trunk.path.relative_to(spec.out)
    kept = [json.loads(line) for line in (published / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept if r["kind"] == "train"] == [10, 20, 25]  # thinned, the last kept
    assert len([r for r in kept if r["kind"] != "train"]) == 3  # every validation and the final record
    assert not list(dest.rglob("checkpoints")) and (published / "train_config.json").is_file()
    (dest / "report.md").unlink()
    shutil.rmtree(spec.out)  # the study itself gone: the published records are enough
    assert main(["study", "report", str(dest)]) == 0
    assert (dest / "report.md").read_text() == text


def test_a_restored_study_reports_what_the_published_one_did(tmp_path):
    """Restored on another machine, without checkpoints: every run at its path again, and what only
    checkpoints gave (the referee's comparison) kept from results.jsonl."""
    spec = fake_study(tmp_path)
    (spec.out / "results.jsonl").write_text(json.dumps(COMPARISON) + "\n")
    assert main(["study", "publish", str(spec.out), "--out", str(tmp_path / "published")]) == 0
    out = tmp_path / "restored"
    assert main(["study", "restore", str(tmp_path / "published"), "--out", str(out)]) == 0
    scored = [j.path.relative_to(spec.out) for j in spec.jobs if (j.path / "eval.json").is_file()]
    assert scored and all((out / path / "eval.json").is_file() for path in scored)
    assert main(["study", "report", str(out)]) == 0
    assert (out / "report.md").read_text() == (spec.out / "report.md").read_text()
    assert "cosine of m_t" in (out / "report.md").read_text()


def test_publishing_into_a_folder_that_holds_something_is_refused(tmp_path, capsys):
    spec = fake_study(tmp_path)
    dest = tmp_path / "docs"
    dest.mkdir()
    (dest / "notes.md").write_text("mine")
    for target in (dest, spec.out / "inside"):
        assert main(["study", "publish", str(spec.out), "--out", str(target)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert [p.name for p in dest.iterdir()] == ["notes.md"] and not (spec.out / "report.md").exists()


# status --------------------------------------------------------------------------------------------


def test_status_counts_runs_and_flops_and_names_the_runs_under_way(tmp_path, capsys):
    import os

    from lrt.experiments.study import job_flops

    spec = fake_study(tmp_path, skip={("main", "lrt", "flops:1", 0), ("main", "baseline", "flops:1", 1)})
    left = [j for j in spec.jobs if j.memories and not (j.path / "eval.json").exists()]
    trunks = [j for j in spec.jobs if any(b.fork and b.fork.parent.parent == j.path for b in left)]
    assert len(left) == len(trunks) == 2  # the other trunks were never checkpointed, and no branch needs them
    (trunks[0].path / ".lock").write_text(str(os.getpid()))  # a live process holds it
    (trunks[1].path / ".lock").write_text("999999999")  # no such process
    branch = next(j for j in spec.jobs if j.info["kind"] == "branch" and j not in left)
    train = [{"step": s, "kind": "train", "flops": s * 2e6, "time": s * 0.5} for s in (1, 11)]  # 4e6 FLOP/s
    (branch.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    assert main(["study", "status", str(spec.out)]) == 0
    out = capsys.readouterr().out
    total = sum(job_flops(spec, j) for j in spec.jobs)
    rest = sum(job_flops(spec, j) for j in trunks + left)
    finished = len(spec.jobs) - 4
    assert f"{finished} of {len(spec.jobs)} runs finished, {1 - rest / total:.0%} of {total:.3g}" in out
    main_jobs = [j for j in spec.jobs if j.info["stage"] == "main"]
    assert f"{len(main_jobs) - 4}/{len(main_jobs)}" in out
    assert f"{trunks[0].path.relative_to(spec.out)}: step 0 of {trunks[0].steps}, running (pid {os.getpid()})" in out
    assert f"{trunks[1].path.relative_to(spec.out)}: step 0 of {trunks[1].steps}, not running" in out
    assert f"about {rest / 4e6 / 3600:.1f} run-hours at the 4e+06 FLOP/s" in out
