import hashlib
import json

import pytest
import torch

import lrt
from helpers import tiny_train_args, tiny_train_config, untimed
from lrt.cli import main
from lrt.train import checkpoint
from lrt.train.config import TrainConfig
from lrt.train.curves import read_metrics
from lrt.train.muon import Muon
from lrt.train.optim import OptimConfig, build_optimizers, lr_multiplier
from lrt.train.trainer import Diverged, Interrupted, Trainer


def tiny(out, **overrides) -> TrainConfig:
    """Six steps of batches of 4, evaluated (on 256 tokens) and saved every third step, every checkpoint kept."""
    six_steps = dict(steps=6, batch_size=4, eval_every=3, eval_tokens=256, save_every=3, keep=10)
    return tiny_train_config(out, **{**six_steps, **overrides})


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "schedule, optimizer, dtype, tables_bf16",
    [
        ("interleaved:2", "muon", "float32", False),
        ("baseline", "adamw", "bfloat16", False),
        ("interleaved:2", "adamw", "float32", True),  # embedding tables kept in bfloat16
    ],
)
def test_resuming_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, schedule, optimizer, dtype, tables_bf16):
    kw = dict(schedule=schedule, optim=OptimConfig(optimizer=optimizer, warmup_steps=2), dtype=dtype)
    kw["embeddings_bf16"] = tables_bf16
    Trainer(tiny(tmp_path / "a", **kw)).train(progress=False)

    original = Trainer.train_step

    def crash_after_step_4(self):
        loss = original(self)
        if self.step == 4:
            raise Crash
        return loss

    monkeypatch.setattr(Trainer, "train_step", crash_after_step_4)
    with pytest.raises(Crash):
        Trainer(tiny(tmp_path / "b", **kw)).train(progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "b")] == ["step_000003"]
    Trainer(tiny(tmp_path / "b", **kw), resume=str(tmp_path / "b")).train(progress=False)

    a, b = read_metrics(tmp_path / "a/metrics.jsonl"), read_metrics(tmp_path / "b/metrics.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a]  # the crashed step 4 was not logged twice
    assert untimed(b) == untimed(a)  # losses and validation BPBs, bit for bit
    tables = checkpoint.load_weights(checkpoint.resolve(tmp_path / "b"))["wte.weight"].dtype
    assert tables == (torch.bfloat16 if tables_bf16 else torch.float32)


def test_bf16_embedding_tables_compute_with_their_rounded_values():
    """embeddings_to_bf16 keeps the tables in bfloat16 and nothing else changes: the model computes
    what a float32 model with the rounded tables computes, decoding included."""
    from helpers import random_model, random_tokens, tiny_config

    reference = random_model(tiny_config(sequence_len=16))
    kept = random_model(tiny_config(sequence_len=16))
    kept.embeddings_to_bf16()
    with torch.no_grad():
        for table in [reference.wte, *reference.value_embeds.values()]:
            table.weight.copy_(table.weight.bfloat16().float())
    assert kept.wte.weight.dtype == torch.bfloat16 and kept.lm_head.weight.dtype == torch.float32
    idx = random_tokens(reference.config, batch=2, length=16)
    with torch.no_grad():
        assert torch.equal(kept(idx), reference(idx))
        assert torch.equal(lrt.decoding.decode(kept, idx), lrt.decoding.decode(reference, idx))


def test_cli_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_train_args(out, steps=3, eval_every=2, final_decode=True)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["val_bpb"] > 0
    assert (out / "curves.png").stat().st_size > 1000 and (out / "metrics.jsonl").exists()
    record = checkpoint.read_record(checkpoint.resolve(out))
    assert record["config"]["injection"] == "kv+residual" and record["train_config"]["schedule"] == "interleaved:2"
    final = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "final"][0]
    assert final["val_bpb_exact"] > 0 and len(final["val_bpb_passes"]) == 3
    # continue the run for two more steps: flags given on resume override its saved config
    assert main(["train", "--resume", str(out), "--steps", "5"]) == 0
    assert checkpoint.resolve(out).name == "step_000005"


def _digest(run):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    assert main(tiny_train_args(out)) == 0
    return out


def _bad_inputs(tmp, good):
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes(b"caf\xe9")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"]}), tmp / "no_text.parquet")
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.json").write_text("{")
    return {
        "missing data": (["--data", str(tmp / "nope")], "does not exist"),
        "empty data": (["--data", str(tmp / "empty.txt")], "holds no text"),
        "not utf-8": (["--data", str(tmp / "latin1.txt")], "not UTF-8"),
        "no text column": (["--data", str(tmp / "no_text.parquet")], "no 'text' column"),
        "unknown preset": (["--preset", "huge"], "preset must be one of"),
        "unknown schedule": (["--schedule", "gauss-seidel"], "schedule must be one of"),
        "seq len too short": (["--seq-len", "1"], "seq_len must be an integer >= 2"),
        "subsets beyond seq len": (["--seq-len", "8", "--schedule", "interleaved:9"], r"subsets must be in 1\.\.8"),
        "bad schedule parameter": (["--schedule", "chunked:0"], "chunk must be an integer >= 1"),
        "unknown device": (["--device", "tpu:x"], "not a device torch knows"),
        "corrupt checkpoint": (["--resume", str(corrupt)], "corrupt"),
        "config mismatch": (
            ["--resume", str(good), "--set", "n_embd=128", "--set", "n_head=1", "--set", "n_kv_head=1"],
            "config does not match",
        ),
        "existing run": (["--out", str(good)], "holds another run"),
        "unknown model field": (["--set", "n_layers=3"], "unknown model field"),
    }


def test_bad_input_gives_one_line_and_exit_2_and_never_touches_a_good_checkpoint(tmp_path, good_run, capsys):
    before = _digest(good_run)
    for name, (args, match) in _bad_inputs(tmp_path, good_run).items():
        base = ["train", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / name.replace(" ", "_"))]
        code = main(base + args)
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert __import__("re").search(match, err), (name, err)
    assert _digest(good_run) == before


def test_gradient_accumulation_equals_one_larger_batch(tmp_path):
    """2 micro-batches of 2 rows take the same step as one batch of the same 4 rows."""
    a = Trainer(tiny(tmp_path / "a", batch_size=4, grad_accum=1, optim=OptimConfig(optimizer="adamw")))
    b = Trainer(tiny(tmp_path / "b", batch_size=2, grad_accum=2, optim=OptimConfig(optimizer="adamw")))
    b.model.load_state_dict(a.model.state_dict())
    a.train_step()
    b.train_step()
    assert a.tokens == b.tokens
    for (name, pa_), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(pa_, pb, rtol=0, atol=1e-6, msg=name)


def test_learning_rate_schedule():
    cfg = OptimConfig(warmup_steps=4, warmdown_ratio=0.5, final_lr_frac=0.1)
    lrs = [lr_multiplier(s, 20, cfg) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4:10] == [1.0] * 6
    assert lrs[10] == 1.0 and lrs[-1] == pytest.approx(0.1 + 0.9 / 10)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))
    assert [lr_multiplier(s, 10, OptimConfig(warmdown_ratio=0.0)) for s in (0, 9)] == [1.0, 1.0]


def test_auto_optimizer_is_adamw_on_cpu_and_muon_when_asked():
    model = lrt.LRT(lrt.LRTConfig(vocab_size=32, sequence_len=8, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    (auto,) = build_optimizers(model, OptimConfig())  # the model is on a CPU
    assert isinstance(auto, torch.optim.AdamW) and auto.param_groups[0]["lr"] == OptimConfig().adamw_lr
    assert sum(p.numel() for g in auto.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    adam, muon = build_optimizers(model, OptimConfig(optimizer="muon"))
    assert isinstance(muon, Muon) and all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    with pytest.raises(ValueError, match="optimizer must be"):
        OptimConfig(optimizer="sgd")


def _run(out, overlap: bool, **overrides) -> list[dict]:
    trainer = Trainer(tiny(out, **overrides))
    trainer.overlap = overlap  # as on a GPU: a step's numbers are read while the next step runs
    trainer.train(progress=False)
    return read_metrics(out / "metrics.jsonl")


def test_reading_a_step_while_the_next_runs_logs_and_saves_what_reading_at_once_does(tmp_path):
    at_once = _run(tmp_path / "a", overlap=False, steps=7, eval_every=4, save_every=3)
    overlapped = _run(tmp_path / "b", overlap=True, steps=7, eval_every=4, save_every=3)
    assert untimed(overlapped) == untimed(at_once)
    steps = [[p.name for p in checkpoint.list_checkpoints(tmp_path / run)] for run in "ab"]
    assert steps[0] == steps[1] == ["step_000003", "step_000006", "step_000007"]
    assert all(r["tokens_per_s"] > 0 and "mfu" not in r for r in overlapped if r["kind"] == "train")


def test_a_diverged_step_read_late_is_still_never_logged_or_saved(tmp_path):
    trainer = Trainer(
        tiny(tmp_path / "run", steps=6, save_every=0, optim=OptimConfig(optimizer="adamw", adamw_lr=1e30))
    )
    trainer.overlap = True
    with pytest.raises(Diverged, match="non-finite .* at step (\\d+)") as stopped:
        trainer.train(progress=False)
    bad = int(stopped.value.args[0].split("at step ")[1].split(";")[0])
    logged = [r["step"] for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["kind"] == "train"]
    assert logged == list(range(1, bad)) and checkpoint.list_checkpoints(tmp_path / "run") == []


def test_gradient_clipping_clips_only_above_the_limit_and_logs_the_norm(tmp_path):
    free = _run(tmp_path / "free", overlap=False, steps=3)
    loose = _run(tmp_path / "loose", overlap=False, steps=3, optim=OptimConfig(optimizer="adamw", grad_clip=1e9))
    tight = _run(tmp_path / "tight", overlap=False, steps=3, optim=OptimConfig(optimizer="adamw", grad_clip=1e-4))
    train = lambda rs: [r for r in rs if r["kind"] == "train"]  # noqa: E731
    assert [r["loss"] for r in train(loose)] == [r["loss"] for r in train(free)]  # a limit never reached
    assert "grad_norm" not in train(free)[0] and train(loose)[0]["grad_norm"] > 1e-4
    assert train(tight)[0]["grad_norm"] == train(loose)[0]["grad_norm"]  # the norm before clipping
    assert train(tight)[1]["loss"] != train(loose)[1]["loss"]  # AdamW's steps differ once clipped


def test_metrics_give_each_steps_speed_and_mfu_against_the_peak_given(tmp_path):
    trainer = Trainer(tiny(tmp_path / "run", steps=2, peak_tflops=0.5))
    trainer.train(progress=False)
    for r in (r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["kind"] == "train"):
        seconds = trainer.tokens_per_step / r["tokens_per_s"]
        assert r["mfu"] == pytest.approx(trainer.flops_per_step / seconds / 0.5e12)


def test_ctrl_c_read_late_saves_the_step_after_and_stops(tmp_path, monkeypatch):
    original = Trainer.train_step

    def ctrl_c_in_step_2(self):
        if self.step == 1:
            self.interrupted.set()
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_in_step_2)
    trainer = Trainer(tiny(tmp_path / "run", steps=6, eval_every=100, save_every=0))
    trainer.overlap = True
    with pytest.raises(Interrupted, match="saved step 3"):  # seen with step 2's numbers, after step 3 started
        trainer.train(progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step_000003"]
