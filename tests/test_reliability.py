"""Reliability (issue 10): no command loses a run, saves a broken model, follows a checkpoint
outside its folder, or answers bad input with a traceback. Each test reproduces a failure of the
code before the fix."""

import hashlib
import json
import re

import pytest
import torch

import lrt
from helpers import random_model, tiny_config, tiny_train_config, untimed
from lrt.cli import main
from lrt.data import PackedLoader, open_source
from lrt.data.tokenizer import ByteTokenizer
from lrt.train import checkpoint
from lrt.train.config import TrainConfig
from lrt.train.curves import read_metrics
from lrt.train.optim import OptimConfig
from lrt.train.trainer import Trainer

TINY = ["--preset", "tiny", "--batch-size", "2", "--eval-tokens", "128", "--no-final-decode"]


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line_error(capsys, match, after_progress=False):
    """stderr is one error line (after_progress: the last line, after the run's progress bar)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and (after_progress or len(err.splitlines()) == 1), err
    assert re.search(match, err.splitlines()[-1]), err


def train(out, *args):
    assert main(["train", *TINY, "--out", str(out), *args]) == 0


# 1. a run folder belongs to one run ---------------------------------------------------------------


def test_resume_into_another_runs_folder_is_refused_and_touches_nothing(tmp_path, capsys):
    train(tmp_path / "a", "--steps", "2")
    train(tmp_path / "b", "--steps", "3", "--save-every", "1", "--keep", "5")
    before = digest(tmp_path / "b")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--steps", "4"]) == 2
    one_line_error(capsys, "holds another run")
    assert digest(tmp_path / "b") == before


def test_resume_into_a_new_folder_forks_the_run(tmp_path):
    train(tmp_path / "a", "--steps", "2")
    assert main(["train", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "fork"), "--steps", "3"]) == 0
    assert checkpoint.resolve(tmp_path / "fork").name == "step_000003"
    assert [r["step"] for r in read_metrics(tmp_path / "fork/metrics.jsonl") if r["kind"] == "train"] == [3]
    assert checkpoint.resolve(tmp_path / "a").name == "step_000002"  # the original is untouched


def test_a_fresh_run_refuses_a_folder_with_a_dead_runs_metrics(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/metrics.jsonl").write_text('{"step": 0, "kind": "eval", "val_bpb": 8.0}\n')
    before = digest(tmp_path / "run")
    assert main(["train", *TINY, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "holds another run")
    assert digest(tmp_path / "run") == before


# 2. nothing non-finite is saved ------------------------------------------------------------------


def test_a_diverging_run_stops_before_saving_non_finite_weights(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", *TINY, "--steps", "6", "--save-every", "1", "--keep", "10", "--adamw-lr", "1e30", "--out", str(out)]
    )
    assert code == 2
    one_line_error(capsys, r"non-finite .* step \d+; the last checkpoint is .*step_", after_progress=True)
    saved = checkpoint.list_checkpoints(out)
    assert saved  # the last good checkpoint is there
    for path in saved:
        model, _, _ = checkpoint.load_model(path)
        assert all(p.isfinite().all() for p in model.parameters())


def test_non_finite_weights_are_never_written_nor_loaded(tmp_path):
    model = random_model(tiny_config())
    with torch.no_grad():
        model.blocks[0].attn.c_q.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        checkpoint.save_checkpoint(tmp_path, 1, model, tokenizer=ByteTokenizer(), meta={}, state={})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    path = checkpoint.save_checkpoint(
        tmp_path, 1, random_model(tiny_config()), tokenizer=ByteTokenizer(), meta={}, state={}
    )
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"][0, 0] = float("inf")
    save_file(weights, path / "model.safetensors")
    with pytest.raises(ValueError, match="non-finite"):
        checkpoint.load_model(path)


# 3. the loader's memory is bounded, whatever the document lengths ----------------------------------


def test_a_long_single_line_document_is_buffered_in_bounded_pieces(tmp_path):
    (tmp_path / "line.txt").write_text("word " * 100_000)  # 500 kB, no blank line
    loader = PackedLoader(open_source(tmp_path / "line.txt"), ByteTokenizer(), batch_size=2, seq_len=64)
    for _ in range(5):
        loader.next_batch()
    state = loader.state_dict()
    bound = loader.buffer_docs * (lrt.data.sources.MAX_DOCUMENT_CHARS + 1)
    assert sum(map(len, loader.buffer)) <= bound and state["buffer_tokens"].numel() <= bound
    x, _ = loader.next_batch()  # the pieces are the text: whole words between the row's ends
    assert set(ByteTokenizer().decode(x[0].tolist()).split()[1:-1]) == {"word"}


# 4. a checkpoint carries its tokenizer -----------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(f"Passage {i}: the quick brown fox jumps over the lazy dog. " * 8 for i in range(60)))
    return data


def bpe(corpus, out, vocab):
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", str(vocab), "--out", str(out)]) == 0
    return out


def test_resume_refuses_another_tokenizer_and_reads_its_own_copy(tmp_path, corpus, capsys):
    tok_a, tok_b = bpe(corpus, tmp_path / "a.json", 300), bpe(corpus, tmp_path / "b.json", 290)
    out = tmp_path / "run"
    train(out, "--steps", "1", "--data", str(corpus), "--tokenizer", str(tok_a))
    record = checkpoint.read_record(checkpoint.resolve(out))
    assert record["tokenizer"]["sha256"] == hashlib.sha256(tok_a.read_bytes()).hexdigest()
    before = digest(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "2", "--tokenizer", str(tok_b)]) == 2
    one_line_error(capsys, "tokenizer .* differs")
    assert digest(out) == before
    tok_a.write_text(tok_b.read_text())  # the original file changed after training: the copy is the tokenizer
    assert main(["train", "--resume", str(out), "--steps", "2"]) == 0
    _, tok, _ = checkpoint.load_model(out)
    assert tok.vocab_size == checkpoint.load_model(checkpoint.step_dir(out, 1))[1].vocab_size


def test_a_tampered_tokenizer_copy_is_refused(tmp_path, corpus):
    tok = bpe(corpus, tmp_path / "a.json", 300)
    out = tmp_path / "run"
    train(out, "--steps", "1", "--data", str(corpus), "--tokenizer", str(tok))
    copy = checkpoint.resolve(out) / "tokenizer.json"
    copy.write_text(bpe(corpus, tmp_path / "b.json", 290).read_text())
    with pytest.raises(ValueError, match="tokenizer.json does not match"):
        checkpoint.load_model(out)


# 5. learning-rate flags given on resume apply -------------------------------------------------------


def test_learning_rate_flags_given_on_resume_apply(tmp_path):
    cfg = tiny_train_config(tmp_path, optim=OptimConfig(adamw_lr=4e-3, weight_decay=0.0))
    Trainer(cfg).train(progress=False)
    resumed = Trainer(
        TrainConfig(**{**cfg.to_dict(), "steps": 2, "optim": OptimConfig(adamw_lr=1e-3, weight_decay=0.1)}),
        resume=str(tmp_path),
    )
    group = resumed.optimizers[0].param_groups[0]
    assert group["initial_lr"] == 1e-3 and group["weight_decay"] == 0.1
    assert resumed.optimizers[0].state  # the moments were restored


# 6. batched generation stops each row on its own ----------------------------------------------------


def test_each_row_of_a_batch_stops_at_the_window_on_its_own():
    model = random_model(tiny_config(sequence_len=10))
    result = lrt.generate(model, [[1, 2], list(range(3, 12))], 20, temperature=0)
    assert [len(t) for t in result.tokens] == [8, 1] and result.stopped == ["window", "window"]
    alone = lrt.generate(model, [[1, 2]], 20, temperature=0)
    assert alone.tokens[0] == result.tokens[0]


# 7. one training per run folder ----------------------------------------------------------------------


def test_a_second_training_of_the_same_folder_is_refused(tmp_path, capsys):
    cfg = TrainConfig(out=str(tmp_path / "run"), preset="tiny", steps=1, batch_size=2, eval_tokens=128)
    first = Trainer(cfg)
    with pytest.raises(ValueError, match="in use by another training"):
        Trainer(cfg)
    assert main(["train", *TINY, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "in use by another training")
    first.close()
    Trainer(cfg).close()  # released


# 8. a checkpoint references only what is inside its folder -------------------------------------------


@pytest.mark.parametrize("reference", ["../tokenizer.json", "/etc/hostname", "sub/../../x.json"])
def test_references_outside_the_checkpoint_are_refused(tmp_path, reference):
    path = checkpoint.save_checkpoint(
        tmp_path, 1, random_model(tiny_config()), tokenizer=ByteTokenizer(), meta={}, state={}
    )
    record = json.loads((path / "checkpoint.json").read_text())
    record["tokenizer"] = {"kind": "bpe", "file": reference, "sha256": "0" * 64}
    (path / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="outside the checkpoint"):
        checkpoint.load_model(path)


# 9. leftovers of crashes -----------------------------------------------------------------------------


def test_leftover_folders_of_an_interrupted_save_are_not_checkpoints(tmp_path):
    model = random_model(tiny_config())
    checkpoint.save_checkpoint(tmp_path, 1, model, tokenizer=ByteTokenizer(), meta={}, state={})
    root = tmp_path / "checkpoints"
    (root / "step_000009.old").mkdir()
    (root / "step_000008.tmp").mkdir()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000001"]
    assert checkpoint.resolve(tmp_path).name == "step_000001"


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    model = random_model(tiny_config())
    path = checkpoint.save_checkpoint(tmp_path, 1, model, tokenizer=ByteTokenizer(), meta={}, state={})
    path.rename(path.with_name("step_000001.old"))  # the old copy moved aside, the new one not yet in place
    checkpoint.recover(tmp_path)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000001"]
    checkpoint.load_model(tmp_path)


def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path):
    train(tmp_path / "run", "--steps", "1")
    metrics = tmp_path / "run/metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 2, "kind": "tr')  # killed mid-write
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 0
    assert [r["step"] for r in read_metrics(metrics) if r["kind"] == "train"] == [1, 2]


def test_a_corrupt_metrics_line_names_the_file(tmp_path, capsys):
    train(tmp_path / "run", "--steps", "1")
    metrics = tmp_path / "run/metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["garbage"] + lines) + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 2
    one_line_error(capsys, r"metrics\.jsonl, line 1")
    metrics.write_bytes(b"\xff\xfe" + metrics.read_bytes())  # not UTF-8: the line names the file too
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 2
    one_line_error(capsys, r"metrics\.jsonl is not UTF-8 text")


# Ctrl-C, a full disk ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])  # Ctrl-C; kill, docker, SLURM (issue 25, 13)
def test_ctrl_c_finishes_the_step_saves_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys, signal_name):
    import os
    import signal

    train(tmp_path / "a", "--steps", "4")
    original = Trainer.train_step

    def interrupted_in_step_2(self):
        if self.step == 1:
            os.kill(os.getpid(), getattr(signal, signal_name))  # arrives in the middle of the step
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_in_step_2)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(tmp_path / "b"), "--steps", "4"]) == 130
    one_line_error(
        capsys, r"interrupted: saved step 2 to .*step_000002; continue with lrt train --resume", after_progress=True
    )
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train", "--resume", str(tmp_path / "b")]) == 0
    assert untimed(read_metrics(tmp_path / "b/metrics.jsonl")) == untimed(read_metrics(tmp_path / "a/metrics.jsonl"))


def test_a_full_disk_while_saving_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    from safetensors.torch import save_file

    calls = []

    def fills_up(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the first checkpoint (weights, state) fits; the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(tmp_path / "run"), "--steps", "3", "--save-every", "1"]) == 2
    one_line_error(capsys, "No space left on device", after_progress=True)
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step_000001"]
    checkpoint.load_model(tmp_path / "run")


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    train(tmp_path / "run", "--steps", "2")
    metrics = (tmp_path / "run/metrics.jsonl").read_text()
    newest = checkpoint.resolve(tmp_path / "run")
    weights = (newest / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run/metrics.jsonl").read_text() == metrics  # no second final record
    assert (newest / "model.safetensors").read_bytes() == weights


# issue 25: rewinding a run, symlinks in run folders, children of a killed study ---------------


def test_rewinding_a_run_sets_the_later_trajectory_aside_and_never_deletes_the_new_work(tmp_path, capsys):
    run = tmp_path / "r"
    train(run, "--steps", "10", "--save-every", "5", "--keep", "2", "--eval-every", "5")
    old_metrics = (run / "metrics.jsonl").read_text()
    resume = ["train", "--resume", str(run / "checkpoints/step_000005"), "--steps", "8", "--keep", "1"]
    assert main([*resume, "--eval-every", "5"]) == 0
    assert "rewound to step 5" in capsys.readouterr().err
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step_000008"]  # the new work, newest
    assert checkpoint.resolve(run).name == "step_000008"
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 8
    (aside,) = (run / "abandoned").iterdir()
    assert [p.name for p in checkpoint.list_checkpoints(aside)] == ["step_000010"]  # the old trajectory, whole
    assert (aside / "metrics.jsonl").read_text() == old_metrics
    model, _, _ = checkpoint.load_model(aside / "checkpoints/step_000010")  # still a usable checkpoint
    assert model.config.n_layer > 0


@pytest.mark.parametrize(
    "name", [".lock", "metrics.jsonl", "train_config.json", "checkpoints/step_000002/checkpoint.json"]
)
def test_a_symlink_in_a_run_folder_is_refused_and_its_target_untouched(tmp_path, capsys, name):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    train(run, "--steps", "2")
    # the link's target holds what the file held (readable as it), so only the link is wrong
    victim.write_text((run / name).read_text() if (run / name).exists() else "precious")
    before = victim.read_text()
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 2
    one_line_error(capsys, "is a symbolic link")
    assert victim.read_text() == before


def test_a_symlinked_lock_of_a_study_folder_is_refused(tmp_path, capsys):
    from lrt.train.run_folder import RunFolder

    (tmp_path / "study").mkdir()
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "study/.lock").symlink_to(tmp_path / "victim.txt")
    with pytest.raises(ValueError, match="is a symbolic link"):
        RunFolder(tmp_path / "study", user="lrt study run").acquire()
    assert (tmp_path / "victim.txt").read_text() == "precious"


def test_a_study_child_gets_sigterm_when_the_study_is_killed(tmp_path):
    """The child's training takes SIGTERM as Ctrl-C: it saves and stops, instead of training on
    as an orphan without a lock."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import os, time; from lrt.experiments.study import "
            'die_with_parent; die_with_parent(int(os.environ["LRT_STUDY_PID"])); time.sleep(120)\'], '
            "env={**os.environ, 'LRT_STUDY_PID': str(os.getpid())}); print(c.pid, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    time.sleep(2)  # the child has called prctl
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}") or "Z" in _state(child), "the child outlived the study"


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_study_deletes_a_dead_runs_folder_only_under_its_lock(tmp_path):
    from lrt.experiments import study
    from lrt.train.run_folder import RunFolder

    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("")
    held = RunFolder(folder).acquire()  # a child of a killed study, still saving
    try:
        with pytest.raises(ValueError, match="in use by another training"):
            study.start_over(folder, wait=0.2)
        assert (folder / "metrics.jsonl").exists()
    finally:
        held.release()
    study.start_over(folder, wait=0.2)  # let go of: deleted
    assert not folder.exists()


def test_a_real_file_size_limit_while_saving_is_one_line_and_no_checkpoint(tmp_path):
    """safetensors reports a failed write as SafetensorError, neither OSError nor ValueError: a real
    limit (ulimit -f, which Python turns into EFBIG), not a faked OSError (issue 25, 8)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    command = " ".join([sys.executable, "-m", "lrt", "train", *TINY, "--steps", "1", "--out", str(out)])
    result = subprocess.run(["bash", "-c", f"ulimit -f 300; exec {command}"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"could not write .*model\.safetensors", result.stderr.strip().splitlines()[-1])
    assert checkpoint.list_checkpoints(out) == [] and not list((out / "checkpoints").glob("*.tmp"))


# 10. a malformed checkpoint.json is one line naming it (issue 25, 9) -------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-step run, and a BPE tokenizer file that is not its tokenizer."""
    root = tmp_path_factory.mktemp("tiny_run")
    train(root / "run", "--steps", "1")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"Passage {i}: the quick brown fox jumps over the lazy dog. " * 8 for i in range(20)))
    bpe(corpus, root / "tokenizer.json", 300)
    return root


def _first_tensor_renamed(record):
    """The record with its train_state's first tensor reference naming a tensor that is not in
    train_state.safetensors."""
    text = json.dumps(record).replace('"__tensor__": "state.', '"__tensor__": "state.nowhere.', 1)
    assert "state.nowhere." in text
    return json.loads(text)


def _other_tokenizer_without_hash(record, folder, tiny_run):
    """A BPE tokenizer copy beside the weights, referenced without its content hash: the hash was
    the only check that the copy is the run's tokenizer."""
    (folder / "tokenizer.json").write_bytes((tiny_run / "tokenizer.json").read_bytes())
    return {**record, "tokenizer": {"kind": "bpe", "file": "tokenizer.json"}}


def _changed(key, value):
    return lambda record, folder, tiny_run: {**record, key: value}


def _config(**changes):
    return lambda record, folder, tiny_run: {**record, "config": {**record["config"], **changes}}


ALL = ("eval", "resume", "generate")
MALFORMED_RECORDS = {  # name: (edit, the commands that read it, what the line says)
    "record-a-list": (lambda record, folder, tiny_run: [record], ALL, "not a JSON object"),
    "tokenizer-a-string": (_changed("tokenizer", "byte"), ALL, "tokenizer reference must be a JSON object"),
    "tokenizer-an-int": (_changed("tokenizer", 3), ALL, "tokenizer reference must be a JSON object"),
    "tokenizer-unknown-kind": (_changed("tokenizer", {"kind": "wordpiece"}), ALL, "unknown tokenizer reference"),
    "tokenizer-without-hash": (_other_tokenizer_without_hash, ALL, "tokenizer reference .* has no sha256"),
    "tokenizer-hash-not-a-hash": (
        _changed("tokenizer", {"kind": "bpe", "file": "tokenizer.json", "sha256": 5}),
        ALL,
        "sha256",
    ),
    "config-null": (_changed("config", None), ALL, "config must be a JSON object"),
    "config-missing": (
        lambda record, folder, tiny_run: {k: v for k, v in record.items() if k != "config"},
        ALL,
        "config must be",
    ),
    "config-a-list": (_changed("config", [64, 2]), ALL, "config must be a JSON object"),
    "config-unknown-field": (_config(n_embed=64), ALL, "unknown LRTConfig field"),
    "n_embd-absurd": (_config(n_embd=10**12), ALL, "n_embd must be"),
    "n_embd-negative": (_config(n_embd=-64), ALL, "n_embd must be"),
    "vocab_size-absurd": (_config(vocab_size=10**15), ALL, "vocab_size must be"),
    "train_config-null": (_changed("train_config", None), ALL, "train_config must be a JSON object"),
    "train_config-a-list": (_changed("train_config", ["tiny"]), ALL, "train_config must be a JSON object"),
    "train_config-bad-field": (
        lambda record, folder, tiny_run: {**record, "train_config": {**record["train_config"], "steps": "many"}},
        ALL,
        "train_config is invalid .*steps",
    ),
    "train_config-absurd-model": (
        lambda record, folder, tiny_run: {
            **record,
            "train_config": {**record["train_config"], "model": {"n_embd": 10**12}},
        },
        ALL,
        "n_embd must be",
    ),
    "step-a-string": (_changed("step", "1"), ALL, "step must be an integer >= 0"),
    "step-negative": (_changed("step", -1), ALL, "step must be an integer >= 0"),
    "tokens-a-string": (_changed("tokens", "128"), ALL, "tokens must be an integer >= 0"),
    "train_time-null": (_changed("train_time", None), ALL, "train_time must be a finite number"),
    "train_state-a-string": (_changed("train_state", "state"), ALL, "train_state"),
    "tensor-reference-missing": (
        lambda record, folder, tiny_run: _first_tensor_renamed(record),
        ("resume",),  # evaluation and generation never read the training state
        "refers to tensor 'state.nowhere.",
    ),
    **{  # what evaluation does without, but a resumed run needs
        f"{key}-missing": (
            lambda record, folder, tiny_run, key=key: {k: v for k, v in record.items() if k != key},
            ("resume",),
            "cannot be resumed",
        )
        for key in ("train_config", "tokens", "train_time")
    },
}
COMMANDS = {
    "eval": lambda run: ["eval", "bpb", str(run), "--tokens", "128"],
    "resume": lambda run: ["train", "--resume", str(run), "--steps", "2"],
    "generate": lambda run: ["generate", str(run), "--prompt", "a", "--max-tokens", "2", "--quiet"],
}


@pytest.mark.parametrize("case", MALFORMED_RECORDS)
def test_a_malformed_checkpoint_record_is_one_line_naming_it(tmp_path, tiny_run, capsys, case):
    """Each command that reads the checkpoint refuses the record with one line naming the file
    and what is wrong: no traceback, and nothing in the run folder changes."""
    import shutil

    edit, commands, match = MALFORMED_RECORDS[case]
    run = shutil.copytree(tiny_run / "run", tmp_path / "run")
    folder = checkpoint.resolve(run)
    record = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps(edit(record, folder, tiny_run)))
    before = digest(run)
    capsys.readouterr()
    for command in commands:
        assert main(COMMANDS[command](run)) == 2, command
        one_line_error(capsys, rf"{re.escape(str(folder / 'checkpoint.json'))}.*{match}")
        assert digest(run) == before, command
