"""Every bad input gets one line on stderr and exit code 2, and no existing file changes: a table
over every command's options and every LRTConfig field, with wrong types, out-of-range,
non-finite and empty values (issue 10)."""

import hashlib
import json

import pytest

from helpers import LM_ITEMS, MC_ITEMS, SCHEMA_ITEMS, tiny_train_args, write_core_bundle
from lrt.cli import main

# LRTConfig fields through `lrt train --set`: (field, bad JSON values)
BAD_FIELDS = {
    "vocab_size": ["64"],  # comes from the tokenizer
    "sequence_len": ["0", "-1", '"x"', "1.5", "true", "null"],
    "n_layer": ["0", "-2", '"x"', "2.5", "false", "null", "[]"],
    "n_head": ["0", "3", '"x"'],
    "n_kv_head": ["0", "3", "1.0"],
    "n_embd": ["0", "63", '"x"', "NaN"],
    "window_pattern": ['""', '"SXL"', "5", "null"],
    "short_window": ["0", "-1", '"x"', "1.5"],
    "value_embeds": ['"some"', "1", "null"],
    "residual_scalars": ['"yes"', "2", "null"],
    "logit_softcap": ["-1", '"x"', "NaN", "Infinity"],
    "rope_base": ["0", "-1", '"x"', "NaN", "Infinity"],
    "gate_channels": ["0", "1000", '"x"'],
    "injection": ['"kv+res"', "1", "null"],
    "projection": ['"per-layer"', "[]"],
    "source_layer": ["0", "99", '"x"', "1.5", "true"],
    "target_layers": ["[]", "[0]", "[1, 1]", '"x"', "5", "[1.5]", "[[1]]"],
    "residual_init": ['"x"', "NaN", "-Infinity"],
    "reset_memory_at_bos": ['"yes"', "2", "null"],
    "bos_id": ["3"],  # comes from the tokenizer
    "loops": ["0", "-1", '"x"', "1.5", "2"],  # 2: a comparator needs injection none
    "latent_thoughts": ["-1", '"x"', "true", "1"],
    "n_layers": ["3"],  # not a field
}
assert set(BAD_FIELDS) - {"n_layers"} == {f.name for f in __import__("dataclasses").fields(__import__("lrt").LRTConfig)}

# `lrt train` flags: (flag, bad values)
BAD_TRAIN_FLAGS = {
    "--steps": ["0", "-1", "x", "1.5"],
    "--batch-size": ["0"],
    "--grad-accum": ["0"],
    "--eval-every": ["0"],
    "--eval-tokens": ["0", "10"],
    "--save-every": ["-1"],
    "--keep": ["0"],
    "--seq-len": ["1", "0"],
    "--seed": ["-1", "x"],
    "--matrix-lr": ["nan", "inf", "-1"],
    "--adamw-lr": ["nan", "inf", "-0.1", "1e38"],  # 1e38 overflowed float32 in the optimizer
    "--embedding-lr": ["-1"],
    "--unembedding-lr": ["inf"],
    "--scalar-lr": ["nan"],
    "--weight-decay": ["nan", "-1"],
    "--warmup-steps": ["-1"],
    "--warmdown-ratio": ["2", "nan"],
    "--final-lr-frac": ["nan", "2"],
    "--grad-clip": ["nan", "-1", "inf"],
    "--peak-tflops": ["0", "nan", "-5"],
    "--preset": ["", "d0", "dx", "huge"],
    "--schedule": ["", "gauss-seidel", "jacobi:0", "interleaved:0", "chunked:-1", "multirefine:x", "interleaved:99"],
    "--dtype": ["float16"],
    "--attention": ["flash"],
    "--optimizer": ["sgd"],
    "--device": ["", "tpu", "cuda:99", "meta"],
    "--set": ["foo", "n_layer"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained run, a CORE bundle, data files and a file to put paths under, all watched."""
    root = tmp_path_factory.mktemp("world")
    assert main(tiny_train_args(root / "run")) == 0
    write_core_bundle(
        root / "bundle",
        {
            "mc": ("multiple_choice", 0, MC_ITEMS),
            "schema": ("schema", 0, SCHEMA_ITEMS),
            "lm": ("language_modeling", 0, LM_ITEMS),
        },
        baselines={"mc": 25.0},
    )
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00" * 10)
    (root / "text.txt").write_text("Some text to score. " * 200)
    (root / "not_a_tokenizer.json").write_text('{"a": 1}')
    (root / "a_file").write_text("x")
    (root / "nodir").mkdir()
    (root / "stale").mkdir()
    (root / "stale/metrics.jsonl").write_text('{"step": 0, "kind": "eval", "val_bpb": 8.0}\n')
    return root


def broken_bundle(root, name, edit):
    folder = write_core_bundle(
        root / name, {"mc": ("multiple_choice", 0, MC_ITEMS), "lm": ("language_modeling", 0, LM_ITEMS)}
    )
    edit(folder)
    return folder


def set_line(path, line_number, item):
    lines = path.read_text().splitlines()
    lines[line_number] = json.dumps(item)
    path.write_text("\n".join(lines) + "\n")


BUNDLE_BREAKS = {
    "empty task list": lambda b: (b / "core.yaml").write_text("icl_tasks: []\n"),
    "no task list": lambda b: (b / "core.yaml").write_text("something: 1\n"),
    "gold out of range": lambda b: set_line(b / "eval_data/sub/mc.jsonl", 0, {**MC_ITEMS[0], "gold": 7}),
    "gold negative": lambda b: set_line(b / "eval_data/sub/mc.jsonl", 0, {**MC_ITEMS[0], "gold": -1}),
    "no choices": lambda b: set_line(b / "eval_data/sub/mc.jsonl", 0, {**MC_ITEMS[0], "choices": []}),
    "choice not text": lambda b: set_line(b / "eval_data/sub/mc.jsonl", 0, {**MC_ITEMS[0], "choices": [1, 2]}),
    "item not an object": lambda b: set_line(b / "eval_data/sub/lm.jsonl", 0, [1, 2]),
    "random baseline 100": lambda b: (b / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,100\nlm,0\n"),
    "random baseline not a number": lambda b: (b / "eval_meta_data.csv").write_text(
        "Eval Task,Random baseline\nmc,x\nlm,0\n"
    ),
    "negative fewshot": lambda b: (b / "core.yaml").write_text(
        (b / "core.yaml").read_text().replace("num_fewshot: [0]", "num_fewshot: [-1]", 1)
    ),
}


def cases(root):
    run, bundle = str(root / "run"), str(root / "bundle")
    out = str(root / "new_run")
    train = ["train", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--eval-tokens", "128", "--out", out]
    table = {}
    for field, values in BAD_FIELDS.items():
        for v in values:
            table[f"--set {field}={v}"] = train + ["--set", f"{field}={v}"]
    for flag, values in BAD_TRAIN_FLAGS.items():
        for v in values:
            table[f"train {flag} {v!r}"] = train + [flag, v]
    for name, path in {
        "missing": root / "nope",
        "empty": root / "empty.txt",
        "binary": root / "binary.txt",
        "folder without text": root / "nodir",
    }.items():
        table[f"train --data {name}"] = train + ["--data", str(path)]
        table[f"eval bpb --data {name}"] = ["eval", "bpb", run, "--data", str(path)]
    table["train --val-data missing"] = train + ["--val-data", str(root / "nope")]
    for name, path in {
        "missing": root / "nope.json",
        "folder": root / "nodir",
        "not a tokenizer": root / "not_a_tokenizer.json",
        "binary": root / "binary.txt",
    }.items():
        table[f"train --tokenizer {name}"] = train + ["--tokenizer", str(path)]
    table["train --out is a file"] = train[:-1] + [str(root / "a_file")]
    table["train --out under a file"] = train[:-1] + [str(root / "a_file/run")]
    table["train --out another run"] = train[:-1] + [run]
    table["train --init-from missing"] = train + ["--init-from", str(root / "nope")]
    table["train --init-from a file"] = train + ["--init-from", str(root / "a_file")]
    table["train --init-from and --resume"] = ["train", "--resume", run, "--init-from", run]
    table["train --init-from another backbone"] = train + ["--init-from", run, "--set", "n_layer=3"]
    table["train --resume missing"] = ["train", "--resume", str(root / "nope")]
    table["train --resume a file"] = ["train", "--resume", str(root / "a_file")]
    table["train --resume into another run"] = ["train", "--resume", run, "--out", str(root / "stale")]
    table["train into a dead run's folder"] = train[:-1] + [str(root / "stale")]
    bpb = ["eval", "bpb", run]
    for flag, values in {
        "--tokens": ["0", "-5", "10", "x"],
        "--seq-len": ["0", "1", "-1"],
        "--batch-size": ["0", "-1"],
        "--bucket": ["0", "-1"],
        "--device": ["tpu", "cuda", ""],
        "--memory": ["", "bogus", "parallel:x", "exact,exact", "fixed-point:nan", "fixed-point:-1", "exact:3"],
        "--json": [str(root / "nodir"), str(root / "a_file/x.json")],
    }.items():
        for v in values:
            table[f"eval bpb {flag} {v!r}"] = bpb + [flag, v]
    for name, path in {"missing": root / "nope", "a file": root / "a_file", "no checkpoint": root / "nodir"}.items():
        table[f"eval bpb checkpoint {name}"] = ["eval", "bpb", str(path)]
        table[f"generate checkpoint {name}"] = ["generate", str(path), "--prompt", "a"]
    core = ["eval", "core", run, "--bundle", bundle]
    for flag, values in {
        "--max-per-task": ["0", "-1"],
        "--memory": ["recurrent", "parallel:"],
        "--json": [str(root / "nodir")],
        "--bundle": [str(root / "nope"), str(root / "a_file")],
    }.items():
        for v in values:
            table[f"eval core {flag} {v!r}"] = core + [flag, v]
    for name, edit in BUNDLE_BREAKS.items():
        table[f"eval core bundle: {name}"] = ("bundle", name, edit)
    gen = ["generate", run, "--prompt", "To be"]
    for flag, values in {
        "--max-tokens": ["0", "-1"],
        "--temperature": ["nan", "inf", "-1", "1e-45"],  # 1e-45 made NaN probabilities
        "--top-k": ["0", "-1"],
        "--top-p": ["0", "nan", "1.5"],
        "--seed": ["-1"],
        "--memory": ["decode", "parallel:x"],
        "--prompt-file": [str(root / "nope"), str(root / "nodir"), str(root / "binary.txt")],
        "--device": ["mps"],
        "--json": [str(root / "a_file/x.json")],
    }.items():
        for v in values:
            table[f"generate {flag} {v!r}"] = gen + [flag, v]
    table["generate empty prompt"] = ["generate", run, "--prompt", ""]
    table["generate no prompt"] = ["generate", run]
    table["generate long prompt"] = ["generate", run, "--prompt", "x" * 100]
    bench = ["bench", "train", "--seq-len", "8", "--batch-size", "1", "--repeats", "1"]
    for flag, values in {
        "--config": ["x", ""],
        "--schedules": ["", "interleaved:2", "x,baseline"],
        "--repeats": ["0"],
        "--warmup": ["-1"],
        "--batch-size": ["0"],
        "--seq-len": ["0", "1"],
        "--total-batch-size": ["0", "x", "100"],  # 100: not a whole number of micro-batches
        "--device": ["tpu"],
        "--peak-tflops": ["0", "nan", "-1"],
        "--dtype": ["int8"],
        "--attention": ["x"],
        "--json": [str(root / "nodir")],
    }.items():
        for v in values:
            table[f"bench train {flag} {v!r}"] = bench + [flag, v]
    for flag, values in {
        "--config": ["x"],
        "--batch": ["", "a", "0", "1,-1"],
        "--tokens": ["0"],
        "--prompt-len": ["0"],
        "--repeats": ["0"],
    }.items():
        for v in values:
            table[f"bench decode {flag} {v!r}"] = ["bench", "decode", "--config", "tiny", flag, v]
    for flag, values in {
        "--streams": ["0", "", "1,x"],
        "--tokens": ["0", "100000"],  # 100000: does not fit the window
        "--rounds": ["0"],
        "--config": ["x"],
        "--variants": ["x", ""],
        "--threads": ["0"],
        "--device": ["tpu"],
        "--json": [str(root / "nodir")],
    }.items():
        for v in values:
            table[f"bench serve {flag} {v!r}"] = ["bench", "serve", "--config", "small", flag, v]
    serve = ["serve", run]
    for flag, values in {
        "--port": ["0", "70000", "x"],
        "--host": ["", " "],  # "" binds every interface
        "--name": ["", "a b"],
        "--max-batch": ["0", "-1"],
        "--max-tokens": ["0"],
        "--threads": ["0", "x"],
        "--device": ["tpu"],
    }.items():
        for v in values:
            table[f"serve {flag} {v!r}"] = serve + [flag, v]
    for name, path in {"missing": root / "nope", "a file": root / "a_file", "no checkpoint": root / "nodir"}.items():
        table[f"serve checkpoint {name}"] = ["serve", str(path)]
    tok = ["tokenizer", "train", "--data", str(root / "text.txt")]
    for flag, values in {
        "--vocab-size": ["0", "100", "x"],
        "--max-chars": ["0", "-1"],
        # an existing file was overwritten silently (issue 25)
        "--out": [str(root / "nodir"), str(root / "a_file/tok.json"), str(root / "text.txt")],
        "--data": [str(root / "nope")],
    }.items():
        for v in values:
            table[f"tokenizer train {flag} {v!r}"] = tok + [flag, v]
    table["download shards --num 0"] = ["download", "shards", "--num", "0", "--out", str(root / "shards")]
    table["download core-bundle bad url"] = ["download", "core-bundle", "--out", str(root / "cb"), "--url", "x"]
    table["demo --steps 0"] = ["demo", "--steps", "0", "--out", str(root / "demo")]
    table["demo --out under a file"] = ["demo", "--quick", "--out", str(root / "a_file/demo")]
    for flag, values in {"--depth": ["0", "-1", "x"], "--vocab-size": ["0"], "--value-embeds": ["some"]}.items():
        for v in values:
            table[f"params {flag} {v!r}"] = ["params", flag, v]
    table["no command"] = []
    table["unknown command"] = ["fly"]
    return {name.replace(str(root), "ROOT"): args for name, args in table.items()}  # names without the tmp path


CASES = sorted(cases(__import__("pathlib").Path("/placeholder")))


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gets_one_line_exit_2_and_changes_nothing(world, name, capsys, monkeypatch):
    monkeypatch.setenv("LRT_DEBUG", "0")  # 0 means off
    args = cases(world)[name]
    if isinstance(args, tuple):  # a broken CORE bundle, made fresh for this case
        _, label, edit = args
        bundle = broken_bundle(world, label.replace(" ", "_"), edit)
        args = ["eval", "core", str(world / "run"), "--bundle", str(bundle)]
    before = digest(world)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (name, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
    assert digest(world) == before, name


def test_json_path_without_write_permission_is_refused_before_the_work(world, capsys, monkeypatch):
    """Root may write anywhere, so the permission answer is faked: the check must ask for it."""
    import lrt.cli.args as args_module

    asked = []
    monkeypatch.setattr(args_module.os, "access", lambda path, mode: asked.append(path) and False)
    code = main(["eval", "bpb", str(world / "run"), "--json", str(world / "out.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "writable" in err and len(err.splitlines()) == 1, err
    assert asked == [world] and not (world / "out.json").exists()
