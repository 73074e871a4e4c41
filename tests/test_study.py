"""`lrt study`: a spec becomes cells x seeds at matched training FLOPs; a killed study resumes
without redoing work; the report's statistics and verdicts (issue 12)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrt.cli import main
from lrt.study import ci95, load_spec, status
from lrt.study_report import Score, claims, collect, difference, gap_trend, write_report
from helpers import LM_ITEMS, MC_ITEMS, write_core_bundle

TINY = """
[study]
name = "tiny"
seeds = [0, 1]
budgets = [1e9, 2e9]

[train]
preset = "tiny"
seq_len = 32
batch_size = 2
eval_tokens = 256

[train.optim]
warmup_steps = 1
warmdown_ratio = 0.0

[reference]
schedule = "interleaved:2"

[ablations]
{ablations}
"""


def spec_file(tmp_path, ablations='injection = ["kv"]'):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(ablations=ablations))
    return path


def test_a_spec_is_cells_at_matched_training_flops(tmp_path):
    spec = load_spec(spec_file(tmp_path, 'schedule = ["chunked:8"]\nreset_memory_at_bos = [true]'), tmp_path / "out")
    assert [c.name for c in spec.cells] == ["baseline", "lrt", "schedule=chunked:8", "reset_memory_at_bos=true"]
    assert len(spec.runs) == 4 * 2
    steps = {r.cell.name: r.budget_steps for r in spec.runs}
    assert 1.9 < steps["baseline"][-1] / steps["lrt"][-1] < 2.2  # the baseline trains ~2x LRT's steps
    assert steps["lrt"][-1] == 2 * steps["lrt"][0] or abs(steps["lrt"][-1] - 2 * steps["lrt"][0]) <= 1
    baseline = next(r for r in spec.runs if r.cell.name == "baseline")
    assert set(steps["lrt"]) <= set(baseline.config.exact_at)  # equal steps: the baseline is read at LRT's steps
    reset = next(r for r in spec.runs if r.cell.name == "reset_memory_at_bos=true")
    assert reset.config.model == {"reset_memory_at_bos": True} and reset.config.schedule == "interleaved:2"


@pytest.mark.parametrize("text, match", [
    ("[study]\nbudgets = [1e9]\nratios = [1]\n", "give study.budgets"),
    ("[study]\nbudgets = []\n", "non-empty list of positive numbers"),
    ("[study]\nbudgets = [1e9]\nseeds = [-1]\n", "seeds must be"),
    ("[study]\nbudgets = [1e9]\n[ablations]\ninjection = [\"sideways\"]\n", "injection must be one of"),
    ("[study]\nbudgets = [1e9]\n[ablation]\n", "unknown table"),
    ("[study\n", "not valid TOML"),
])
def test_bad_specs_are_one_line(tmp_path, capsys, text, match):
    (tmp_path / "bad.toml").write_text(text)
    assert main(["study", "run", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


@pytest.mark.parametrize("spec", ["studies/cpu.toml", "studies/paper_d20.toml"])
def test_the_shipped_studies_validate(spec, capsys):
    root = Path(__file__).resolve().parents[1]
    assert main(["study", "run", str(root / spec), "--out", "/nonexistent/out", "--dry-run"]) == 0
    assert "total training FLOPs" in capsys.readouterr().err


def lrt_study(*args, **popen):
    return [sys.executable, "-m", "lrt", "study", *args]


def digest(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_study_resumes_without_redoing_finished_runs_and_reports(tmp_path):
    spec, out = spec_file(tmp_path), tmp_path / "study"
    process = subprocess.Popen(lrt_study("run", str(spec), "--out", str(out)), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = load_spec(spec, out).runs
    deadline = time.time() + 240
    while sum(status(r) == "finished" for r in runs) < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = [r for r in runs if status(r) == "finished"]
    assert finished and len(finished) < len(runs)
    before = {r.config.out: digest(Path(r.config.out) / "checkpoints") for r in finished}
    assert subprocess.run(lrt_study("run", str(spec), "--out", str(out), "--jobs", "2"), capture_output=True,
                          text=True).returncode == 0
    assert all(status(r) == "finished" for r in runs)
    for r in finished:  # not trained again
        assert digest(Path(r.config.out) / "checkpoints") == before[r.config.out]
    assert main(["study", "report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "LRT-shared Interleaved S=2 beats the baseline at equal training FLOPs" in text
    assert (out / "bpb_vs_compute.png").stat().st_size > 10_000 and (out / "ablations.png").exists()
    # CORE with exact memory of every run, cached per bundle: another bundle is scored again
    for name, tasks in (("mc", {"mc": ("multiple_choice", 0, MC_ITEMS)}), ("lm", {"lm": ("language_modeling", 0, LM_ITEMS)})):
        bundle = write_core_bundle(tmp_path / name, tasks)
        assert main(["study", "report", str(out), "--bundle", str(bundle)]) == 0
        assert all(json.loads((Path(r.config.out) / "core.json").read_text())["bundle"] == str(bundle) for r in runs)
        assert "CORE" in (out / "report.md").read_text()


def fake_study(tmp_path, means: dict[str, float], spread: float = 0.01,
               ablations: str = 'injection = ["kv"]\nschedule = ["chunked:8", "interleaved:4"]'):
    """A study whose runs logged the given exact BPB per cell (seeds spread around it)."""
    spec = load_spec(spec_file(tmp_path, ablations), tmp_path / "study")
    for run in spec.runs:
        folder = Path(run.config.out)
        folder.mkdir(parents=True)
        bpb = means[run.cell.name] + spread * (run.seed - 0.5)
        records = [{"step": s, "kind": "eval", "flops": s * 1e7, "val_bpb": bpb + 0.1, "val_bpb_exact": bpb}
                   for s in sorted(set(run.budget_steps) | set(run.config.exact_at))]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return spec


def test_the_report_gives_intervals_and_a_verdict_per_claim(tmp_path):
    spec = fake_study(tmp_path, {"baseline": 3.0, "lrt": 2.5, "injection=kv": 2.2, "schedule=chunked:8": 2.9,
                                 "schedule=interleaved:4": 2.505})
    result = collect(spec)
    lines = "\n".join(claims(result))
    assert "beats the baseline at equal training FLOPs**: reproduced" in lines
    assert "best injection**: contradicted" in lines  # kv alone is better here
    assert "weaker than interleaved S=2**: reproduced" in lines
    assert "no better than S=2**: reproduced" in lines  # 2.505 vs 2.5: intervals overlap
    lrt = result.bpb["lrt"][-1]
    mean, std, half = ci95([2.495, 2.505])
    assert (lrt.mean, lrt.std, lrt.half) == pytest.approx((mean, std, half)) and half == pytest.approx(12.706 * std / 2**0.5)
    write_report(result, tmp_path / "study")
    report = (tmp_path / "study/report.md").read_text()
    assert "| 2e+09 | 3.0000 ± 0.0071 | 2.5000 ± 0.0071 | -0.5000 (-0.5000..-0.5000) |" in report
    assert "the gap does not change beyond its intervals: -0.5000 -> -0.5000 BPB" in report
    assert "LRT is ahead of the baseline." in report


def test_the_gap_trend_is_read_from_paired_intervals():
    gaps = [Score([0.21, 0.2, 0.19]), Score([0.05, 0.06, 0.04]), Score([-0.11, -0.1, -0.09])]
    assert "crosses zero" in gap_trend(gaps) and "ahead of the baseline" in gap_trend(gaps)
    assert "shrinks" in gap_trend(gaps[:2]) and "behind the baseline" in gap_trend(gaps[:2])
    assert "grows" in gap_trend(gaps[1::-1])
    assert difference(Score([3.0, 2.0]), Score([2.5, 2.25])).values == [0.5, -0.25]


def test_overlapping_intervals_are_inconclusive(tmp_path):
    spec = fake_study(tmp_path, {"baseline": 3.0, "lrt": 2.99, "injection=kv": 3.0, "schedule=chunked:8": 3.0,
                                 "schedule=interleaved:4": 2.9}, spread=0.05)
    lines = "\n".join(claims(collect(spec)))
    assert "beats the baseline at equal training FLOPs**: inconclusive (intervals overlap)" in lines
    assert "no better than S=2**: reproduced" in lines


def test_the_memory_reset_is_compared_not_judged(tmp_path):
    spec = fake_study(tmp_path, {"baseline": 3.0, "lrt": 2.9, "reset_memory_at_bos=true": 2.6},
                      ablations="reset_memory_at_bos = [true]")
    (line,) = [x for x in claims(collect(spec)) if "memory reset" in x]
    assert "not a paper claim" in line and ": on is better." in line


def test_report_needs_a_study(tmp_path, capsys):
    assert main(["study", "report", str(tmp_path)]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_a_file_as_the_study_folder_is_one_line_and_untouched(tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("mine")
    assert main(["study", "run", str(spec_file(tmp_path)), "--out", str(out)]) == 2
    assert "is a file" in capsys.readouterr().err and out.read_text() == "mine"


def test_a_study_folder_belongs_to_one_spec_and_one_process(tmp_path, capsys):
    """Another spec's finished runs would pass for this one's (same cell names): refused, nothing
    touched. A second `lrt study run` of a folder in use stops at once."""
    from lrt.run_folder import RunFolder

    out = tmp_path / "study"
    out.mkdir()
    (out / "spec.toml").write_text("# another study\n")
    assert main(["study", "run", str(spec_file(tmp_path)), "--out", str(out)]) == 2
    assert "holds another study" in capsys.readouterr().err
    assert (out / "spec.toml").read_text() == "# another study\n" and not (out / "runs").exists()
    (out / "spec.toml").unlink()
    holder = RunFolder(out, user="lrt study run").acquire()
    try:
        assert main(["study", "run", str(spec_file(tmp_path)), "--out", str(out)]) == 2
        assert "in use by another lrt study run" in capsys.readouterr().err
        assert not (out / "spec.toml").exists()
    finally:
        holder.release()
