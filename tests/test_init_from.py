"""`lrt train --init-from`: a new run from another run's weights (fine-tuning, a new schedule, a
plain transformer turned into an LRT, an LRT's backbone as a plain transformer)."""

import json

import pytest
import torch

from helpers import random_tokens, tiny_train_args, tiny_train_config
from lrt.cli import main
from lrt.decoding import decode
from lrt.memory import read
from lrt.train import checkpoint
from lrt.train.build import build_run
from lrt.train.curves import read_metrics
from lrt.train.init_from import is_pathway


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A plain transformer and an LRT, each trained a few steps (so no weight is at its init)."""
    root = tmp_path_factory.mktemp("init_from")
    assert main(tiny_train_args(root / "base", steps=3, schedule="baseline")) == 0
    assert main(tiny_train_args(root / "lrt", steps=3)) == 0
    return root


def built(cfg):
    """The model a run of `cfg` starts with (its folder's lock released)."""
    parts = build_run(cfg)
    parts.folder.release()
    return parts


def test_a_plain_transformer_becomes_an_lrt_that_computes_its_function_at_step_0(runs, tmp_path):
    base = checkpoint.load_run(runs / "base", "cpu").model
    cfg = tiny_train_config(tmp_path / "new", init_from=str(runs / "base"), schedule="interleaved:2")
    parts = built(cfg)
    model = parts.model
    assert base.config.injection == "none" and model.config.injection == "kv+residual"
    assert any(is_pathway(name) for name in model.state_dict())
    idx = random_tokens(model.config, batch=2, length=model.config.sequence_len)
    with torch.no_grad():
        expected = base(idx)
        assert torch.equal(decode(model, idx), decode(base, idx))  # exact memory, token by token
        assert torch.equal(read(model, idx, "parallel:interleaved:2").logits, expected)
    # the pathway is there to be trained: its gradients are not zero
    loss = read(model, idx, "parallel:interleaved:2").logits.logsumexp(-1).mean()
    loss.backward()
    assert model.mem_kv.weight.grad.abs().sum() > 0
    assert parts.cfg.init_from == str((runs / "base").resolve() / "checkpoints/step_000003")
    assert cfg.init_from == str(runs / "base")  # the caller's config is left as it was


def test_an_lrt_gives_its_backbone_to_a_plain_run(runs, tmp_path):
    source = checkpoint.load_run(runs / "lrt", "cpu").model.state_dict()
    model = built(tiny_train_config(tmp_path / "new", init_from=str(runs / "lrt"), schedule="baseline")).model
    own = model.state_dict()
    assert model.config.injection == "none" and not any(is_pathway(name) for name in own)
    assert all(torch.equal(own[name], source[name]) for name in own)
    assert any(is_pathway(name) for name in source)


def test_fine_tuning_on_a_text_file_from_the_command_line(runs, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n\n" for i in range(4000)))
    out = tmp_path / "tuned"
    args = tiny_train_args(out, steps=4, save_every=2)
    assert main(args + ["--init-from", str(runs / "lrt"), "--data", str(text), "--adamw-lr", "0.001"]) == 0
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["init_from"] == str((runs / "lrt").resolve() / "checkpoints/step_000003")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3, 4]
    # it resumes as any run does (its shape from its own checkpoint, not the source)
    assert main(["train", "--resume", str(out / "checkpoints/step_000002"), "--steps", "4"]) == 0
    assert checkpoint.read_record(checkpoint.resolve(out))["step"] == 4


@pytest.mark.parametrize(
    "args, match",
    [
        ("NEW --init-from RUNS/base --set n_embd=128", "differs from the checkpoint's beyond its recurrence"),
        ("--init-from RUNS/base --resume RUNS/lrt", "give one of them"),
        ("NEW --init-from RUNS/nope", "does not exist"),
    ],
)
def test_bad_starts_are_one_line(runs, tmp_path, capsys, args, match):
    words = args.replace("RUNS", str(runs)).split()
    if words[0] == "NEW":  # a fresh tiny run's flags
        words = tiny_train_args(tmp_path / "new", steps=1)[1:] + words[1:]
    capsys.readouterr()
    assert main(["train", *words]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
