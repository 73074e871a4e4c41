import json
from pathlib import Path

import pytest

from lrt.cli import main
from lrt.train.curves import read_metrics


def _check_demo(tmp_path, capsys, args):
    report_path = tmp_path / "report.json"
    assert main(["demo", "--out", str(tmp_path / "demo"), "--json", str(report_path), *args]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    runs = report["runs"]
    # the baseline gets LRT's training FLOPs: about twice the steps, and within one baseline step of equal FLOPs
    assert 1.9 < runs["baseline"]["steps"] / runs["lrt"]["steps"] < 2.3
    assert (
        abs(runs["baseline"]["flops"] - runs["lrt"]["flops"]) <= runs["baseline"]["flops"] / runs["baseline"]["steps"]
    )
    base_curve = read_metrics(tmp_path / "demo/baseline/metrics.jsonl")
    at_equal_steps = [r for r in base_curve if r["step"] == runs["lrt"]["steps"] and r["kind"] == "eval"]
    assert at_equal_steps[0]["val_bpb"] == report["baseline_bpb_equal_steps"]
    for label in (
        "parameters",
        "train steps",
        "tokens",
        "wall time",
        "training FLOPs",
        "val BPB, training schedule",
        "val BPB, exact decoding",
        "equal steps",
        "equal training FLOPs",
        "docs/study/report.md",
    ):
        assert label in out
    assert all(text.startswith("HAMLET.\nTo be, or not to be") for text in report["samples"].values())
    assert (tmp_path / "demo/curves.png").stat().st_size > 10_000
    return report


def test_quick_demo_end_to_end(tmp_path, capsys):
    """The demo is deterministic given its seed: this pins what the quick one prints (measured on
    this project's 2-core CPU machine; the thread count moves the BPB in the 8th digit only)."""
    report = _check_demo(tmp_path, capsys, ["--quick"])
    assert report["samples"] == {
        "lrt": "HAMLET.\nTo be, or not to beswr',nfhthlhe\ni.puBiWubtnreawmdhfo,b",
        "baseline": "HAMLET.\nTo be, or not to be w\narn hthlhe\ni.nuBinu  nretwmdh o,r",
    }
    pinned = dict(lrt_exact_bpb=5.575336, lrt_merged_bpb=5.574959, baseline_bpb_equal_flops=4.971691)
    assert {key: round(report[key], 6) for key in pinned} == pinned


def readme_demo_block() -> list[str]:
    """The demo's output as the README shows it, from its first line to the curves line."""
    lines = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LRT: ") and "parameters" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("curves: "))
    return lines[start:end]


@pytest.mark.slow
def test_full_demo(tmp_path, capsys):
    """The README's first command, as a newcomer runs it (8 to 12 minutes on 2 cores): it prints
    what the README shows, sample text included, all but the wall times."""
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out.splitlines()
    printed = printed[: next(i for i, line in enumerate(printed) if line.startswith("curves: "))]
    shown = readme_demo_block()
    varies = [i for i, line in enumerate(shown) if line.startswith("wall time")]  # the machine's speed
    assert [x for i, x in enumerate(printed) if i not in varies] == [x for i, x in enumerate(shown) if i not in varies]
