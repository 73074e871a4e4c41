import json

import pytest

from helpers import LM_ITEMS, MC_ITEMS, SCHEMA_ITEMS, tiny_train_args, write_core_bundle
from lrt.cli import main
from lrt.train import checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(tiny_train_args(out, steps=2)) == 0
    return out


@pytest.fixture
def bundle(tmp_path):
    return write_core_bundle(
        tmp_path / "bundle",
        {
            "mc": ("multiple_choice", 1, MC_ITEMS),
            "schema": ("schema", 1, SCHEMA_ITEMS),
            "lm": ("language_modeling", 2, LM_ITEMS),
        },
        baselines={"mc": 25.0, "schema": 50.0},
    )


def test_eval_bpb(run, tmp_path, capsys):
    report = tmp_path / "bpb.json"
    assert main(["eval", "bpb", str(run), "--tokens", "256", "--bucket", "32", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    for text in (
        "pass 0 (zero memory, all positions)",
        "merged",
        "exact memory, token by token",
        "zero memory (ablation)",
        "train/decode gap",
        "exact BPB by position: 0-31",
    ):
        assert text in out
    numbers = json.loads(report.read_text())
    assert len(numbers["parallel_passes"]) == 3
    assert numbers["gap"] == pytest.approx(numbers["parallel"] - numbers["exact"])
    assert numbers["rows"] == 4 and len(numbers["exact_buckets"]) == 2
    assert numbers["parallel_schedule"] == "parallel:interleaved:2"  # bare "parallel" is the run's schedule


def test_eval_bpb_on_other_text_with_chosen_memories(run, tmp_path, capsys):
    data = tmp_path / "other.txt"
    data.write_text("Some other text to score. " * 40)
    assert (
        main(
            [
                "eval",
                "bpb",
                str(run),
                "--data",
                str(data),
                "--tokens",
                "128",
                "--memory",
                "parallel:multirefine:2,fixed-point:1e-3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "exact memory" not in out and "pass 2 (memory from the buffer, all positions)" in out
    assert "fixed-point memory" in out


@pytest.mark.parametrize(
    "memory, spec",
    [
        ("zero", "zero"),
        ("parallel", "parallel:interleaved:2"),
        ("parallel:chunked:4", "parallel:chunked:4"),
        ("exact", "exact"),
    ],
)
def test_eval_core(run, bundle, tmp_path, capsys, memory, spec):
    report = tmp_path / "core.json"
    assert (
        main(
            [
                "eval",
                "core",
                str(run),
                "--bundle",
                str(bundle),
                "--memory",
                memory,
                "--max-per-task",
                "2",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    assert "CORE = " in capsys.readouterr().out
    numbers = json.loads(report.read_text())
    assert numbers["memory"] == spec and [t["items"] for t in numbers["tasks"]] == [2, 2, 2]


def test_generate_streams_and_batches(run, tmp_path, capsys):
    report = tmp_path / "gen.json"
    to_be = ["generate", str(run), "--prompt", "To be", "--json", str(report)]
    assert main(to_be + "--max-tokens 5 --temperature 0".split()) == 0
    captured = capsys.readouterr()
    result = json.loads(report.read_text())["results"][0]
    assert captured.out == "To be" + result["completion"] + "\n"
    assert "prompt read with exact memory: 6 forward calls" in captured.err and result["tokens"] == 5
    assert main(to_be + ["--prompt", "Or not"] + "--max-tokens 4 --memory fixed-point --top-p 0.9".split()) == 0
    assert len(json.loads(report.read_text())["results"]) == 2
    assert "=== 'Or not'" in capsys.readouterr().out


def test_generate_with_the_compiled_step_writes_the_same_text(run, tmp_path, capsys):
    reports = [tmp_path / "eager.json", tmp_path / "compiled.json"]
    for flags, report in zip([[], ["--compile"]], reports):
        prompts = ["generate", str(run), "--prompt", "To be", "--prompt", "O", "--json", str(report)]
        assert main(prompts + "--max-tokens 12 --temperature 0 --quiet".split() + flags) == 0
    eager, compiled = (json.loads(r.read_text())["results"] for r in reports)
    assert eager == compiled


def test_bad_input(run, bundle, tmp_path, capsys):
    record_path = checkpoint.resolve(run) / "checkpoint.json"
    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    for f in checkpoint.resolve(run).iterdir():
        (no_tokenizer / f.name).write_bytes(f.read_bytes())
    record = json.loads(record_path.read_text())
    del record["tokenizer"]
    (no_tokenizer / "checkpoint.json").write_text(json.dumps(record))
    broken = tmp_path / "broken_bundle"
    write_core_bundle(broken, {"lm": ("language_modeling", 0, LM_ITEMS)})
    (broken / "eval_data/sub/lm.jsonl").write_text('{"context": "a", "continuation": "b"}\nnot json\n')
    unknown = tmp_path / "unknown_bundle"
    write_core_bundle(unknown, {"lm": ("ranking", 0, LM_ITEMS)})
    escaping = tmp_path / "escaping_bundle"  # a dataset_uri reading a file outside the bundle (issue 25, 15)
    write_core_bundle(escaping, {"lm": ("language_modeling", 0, LM_ITEMS)})
    (escaping / "core.yaml").write_text((escaping / "core.yaml").read_text().replace("sub/lm.jsonl", "../../secret"))
    (tmp_path / "secret").write_text(json.dumps(LM_ITEMS[0]) + "\n")
    twice = tmp_path / "twice_bundle"  # a task listed twice would count twice in the mean
    write_core_bundle(twice, {"lm": ("language_modeling", 0, LM_ITEMS)})
    listed = (twice / "core.yaml").read_text()
    (twice / "core.yaml").write_text(listed + listed.removeprefix("icl_tasks:\n"))
    cases = {
        "missing bundle": (["eval", "core", str(run), "--bundle", str(tmp_path / "nothing")], "has no core.yaml"),
        "unknown task type": (["eval", "core", str(run), "--bundle", str(unknown)], "unknown icl_task_type"),
        "malformed jsonl": (["eval", "core", str(run), "--bundle", str(broken)], r"lm\.jsonl, line 2"),
        "uri outside the bundle": (["eval", "core", str(run), "--bundle", str(escaping)], "task 'lm': .* outside"),
        "task listed twice": (["eval", "core", str(run), "--bundle", str(twice)], "task 'lm' is listed twice"),
        "empty prompt": (["generate", str(run), "--prompt", ""], "the prompt is empty|give a prompt"),
        "long prompt": (["generate", str(run), "--prompt", "x" * 100], "longer than the model's window of 64"),
        "no tokenizer": (["eval", "bpb", str(no_tokenizer)], "names no tokenizer"),
        "missing checkpoint": (["generate", str(tmp_path / "nope"), "--prompt", "a"], "does not exist"),
        "unknown memory": (
            ["eval", "core", str(run), "--bundle", str(bundle), "--memory", "recurrent"],
            "memory must be one of",
        ),
        "bad memory schedule": (
            ["generate", str(run), "--prompt", "a", "--memory", "parallel:interleaved:x"],
            "subsets must be an integer",
        ),
        "bad bpb memory": (["eval", "bpb", str(run), "--memory", "exact,exact"], "each memory mode once"),
    }
    for name, (args, match) in cases.items():
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and __import__("re").search(match, err[0]), (name, err)
