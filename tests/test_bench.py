"""`lrt bench`: the reports hold what the docs say they hold (timings are not asserted)."""

import json

import pytest

from lrt import VARIANTS, LRTConfig, parameter_counts
from lrt.cli import main
from lrt.experiments.bench import (
    bench_config,
    bench_decode,
    bench_train,
    format_decode,
    format_train,
)
from lrt.flops import decode_floor, matrix_params_per_token


def test_bench_train_report(tmp_path, capsys):
    path = tmp_path / "train.json"
    assert (
        main(
            [
                "bench",
                "train",
                "--config",
                "small",
                "--seq-len",
                "16",
                "--batch-size",
                "1",
                "--total-batch-size",
                "32",
                "--repeats",
                "2",
                "--warmup",
                "0",
                "--schedules",
                "baseline,interleaved,chunked:64",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    report = json.loads(path.read_text())
    results = report["results"]
    assert list(results) == ["baseline", "interleaved:2", "chunked:64"]  # canonical spec strings
    assert results["baseline"]["ratio_step"] == 1.0 and results["baseline"]["ideal_flop_ratio"] == 1.0
    assert 2.0 < results["interleaved:2"]["ideal_flop_ratio"] < 2.2  # two passes plus the pathway
    assert results["chunked:64"]["ideal_flop_ratio"] < 1.2  # one pass (C > T: a single chunk)
    assert report["tokens_per_step"] == 32  # two micro-batches of 16 tokens per optimizer step
    for r in results.values():
        assert len(r["step"]["samples"]) == 2 and r["activation_bytes"] > 0
        assert r["tokens_per_s"] == pytest.approx(32 / r["step"]["median"])
        # a step is its two micro-batches and then the optimizer
        assert all(s > o for s, o in zip(r["step"]["samples"], r["optimizer"]["samples"]))
        assert r["first_forward_backward"] > 0  # with --compile: the cold compile time
    assert results["interleaved:2"]["activation_bytes"] > results["baseline"]["activation_bytes"]
    out = capsys.readouterr().out
    assert "interleaved:2" in out and "ideal" in out


def test_bench_decode_report():
    report = bench_decode("small", batches=(1, 2), tokens=2, prompt_len=4, repeats=1, progress=None)
    assert set(report["per_token"]) == {"1", "2"}
    for rows in report["per_token"].values():
        assert set(rows) == {"baseline", "LRT-shared", "LRT-layerwise"} and rows["baseline"]["overhead"] == 0.0
        assert all(len(r["samples"]) == 2 for r in rows.values())  # tokens x repeats
        assert rows["baseline"]["floor"] == 0.0 and 0 < rows["LRT-shared"]["floor"] < rows["LRT-layerwise"]["floor"]
    prefill = report["prefill"]
    assert prefill["exact"]["forwards"] == 4 and prefill["parallel:interleaved:2"]["forwards"] == 3
    assert "prefill of 2 x 4 tokens" in format_decode(report)


def test_bench_decode_times_the_chosen_variants_and_refuses_unknown_ones(capsys):
    report = bench_decode(
        "small", batches=(1,), tokens=2, prompt_len=4, repeats=1, variants=("LRT-shared",), progress=None
    )
    assert list(report["per_token"]["1"]) == ["baseline", "LRT-shared"]  # the baseline always, first
    assert report["prefill_model"] == "LRT-shared"
    assert main(["bench", "decode", "--config", "small", "--variants", "baseline,LRT-sharde"]) == 2
    assert "unknown variant 'LRT-sharde'" in capsys.readouterr().err


def test_decode_floor_is_the_pathways_share_of_the_arithmetic():
    """At batch 1 a step reads every matrix once: the floor is the pathway's share of the matrix
    parameters (plus a little cache and embedding traffic, equal in both)."""
    base, shared = (
        LRTConfig(**{**bench_config("d12")[0].to_dict(), **VARIANTS[v]}) for v in ("baseline", "LRT-shared")
    )
    floor = decode_floor(base, shared, batch=1, context=1, element_bytes=4)
    pathway = parameter_counts(shared).pathway
    assert floor["flops"] == pytest.approx(pathway / matrix_params_per_token(base), rel=0.01)
    assert floor["bytes"] == pytest.approx(floor["flops"], rel=0.01) and 0.009 < floor["bytes"] < 0.012


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(config="huge"), "preset must be one of"),
        (dict(schedules=["interleaved:2"]), "must include baseline"),
        (dict(schedules=["baseline", "interleaved S=9"]), "schedule must be one of"),
        (dict(schedules=["baseline", "interleaved:two"]), "subsets must be an integer"),
        (dict(batch=1, seq_len=16, total_batch_size=24), "not a multiple of batch 1 x length 16 = 16 tokens"),
    ],
)
def test_bench_train_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench_train(**kwargs, progress=None)


def test_format_train_marks_missing_measurements():
    report = bench_train("small", schedules=["baseline"], repeats=1, warmup=0, batch=1, seq_len=8, progress=None)
    assert report["attention"] == "sdpa"  # "auto" on a CPU
    text = format_train(report)
    assert "MFU" not in text and "peak MB" not in text  # no GPU: no allocator peak, no MFU


def test_bench_and_params_know_the_comparators(capsys):
    report = bench_decode(
        "tiny", batches=(1,), tokens=2, prompt_len=4, repeats=1, variants=("loop-2", "PonderLM-2"), progress=None
    )
    rows = report["per_token"]["1"]
    assert list(rows) == ["baseline", "loop-2", "PonderLM-2"] and report["prefill"] == {}
    assert 0.5 < rows["loop-2"]["floor_flops"] < 1.0 < rows["PonderLM-2"]["floor_flops"] + 0.5  # ~2 forwards a token
    train = bench_train("tiny", schedules=["baseline"], comparators=("loop-3", "PonderLM-2"), repeats=1, progress=None)
    ratios = {name: r["ideal_flop_ratio"] for name, r in train["results"].items()}
    assert ratios["baseline"] == 1.0 and 2.5 < ratios["loop-3"] < 3.0 and ratios["PonderLM-2"] > 5
    with pytest.raises(ValueError, match="unknown comparator 'loop-9'"):
        bench_train("tiny", comparators=("loop-9",), progress=None)
    assert main(["params", "--depth", "4"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines["loop-3"][-1] == "3" and lines["PonderLM-2"][-1] == "2" and lines["baseline"][-1] == "1"
    assert lines["loop-3"][1] == lines["baseline"][1]  # the same weights, applied again
