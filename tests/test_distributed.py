"""`torchrun --nproc_per_node 2` on CPU (gloo): DDP and FSDP2 train what one process trains,
resume exactly after a kill (on 2 ranks or on one process, the optimizer from the shards each rank
wrote), evaluate what one process evaluates, and bad launches stop with one line (issue 11)."""

import contextlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import LM_ITEMS, MC_ITEMS, SCHEMA_ITEMS, write_core_bundle
from lrt.train import checkpoint

T = 32  # every document is exactly one row: [BOS] + T characters
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def lrt(*args, nproc: int = 1, **popen):
    """`lrt ...` on one process, or under torchrun with nproc processes."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    return [sys.executable, *launcher, "-m", "lrt", *args]


def run(*args, nproc: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(lrt(*args, nproc=nproc), capture_output=True, text=True, env=ENV)


def kill_launch(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks. torchrun starts each rank in a session of its own, where a
    killpg of torchrun's group does not reach: the ranks would train on, orphaned, to the end."""
    ranks = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    for pid in [process.pid, *map(int, ranks)]:
        with contextlib.suppress(ProcessLookupError):  # a rank that just stopped
            os.kill(pid, signal.SIGKILL)
    process.wait()


def metrics(out, kinds=("train", "eval")):
    return [
        (r["kind"], r["step"], r.get("loss", r.get("val_bpb")))
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["kind"] in kinds
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Parquet documents of one row each, two per row group: rank r of 2 reads groups r, r+2, ...,
    so 2 ranks x 2 rows see exactly the 4 rows one process reads per step."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)

    def doc():
        return "".join(rng.choice("abcdefghij klmnop") for _ in range(T))

    pq.write_table(pa.table({"text": [doc() for _ in range(400)]}), root / "train.parquet", row_group_size=2)
    pq.write_table(pa.table({"text": [doc() for _ in range(16)]}), root / "val.parquet", row_group_size=4)
    return root


def train_args(data, out, *extra):
    return [
        "train",
        "--preset",
        "tiny",
        "--seq-len",
        str(T),
        "--eval-every",
        "2",
        "--eval-tokens",
        "256",
        "--data",
        str(data / "train.parquet"),
        "--val-data",
        str(data / "val.parquet"),
        "--no-final-decode",
        "--out",
        str(out),
        *extra,
    ]


def assert_close(a, b, tol=1e-5):
    assert [(k, s) for k, s, _ in a] == [(k, s) for k, s, _ in b]
    assert all(abs(x - y) <= tol * abs(x) for (_, _, x), (_, _, y) in zip(a, b)), (a, b)


@pytest.mark.parametrize(
    "schedule, extra", [("baseline", []), ("interleaved:2", []), ("interleaved:2", ["--embeddings-bf16"])], ids=str
)
def test_ddp_on_two_ranks_trains_what_one_process_trains(data, tmp_path, schedule, extra):
    flags = ["--steps", "4", "--schedule", schedule, *extra]
    one = run(*train_args(data, tmp_path / "one", "--batch-size", "4", *flags))
    assert one.returncode == 0, one.stderr
    two = run(*train_args(data, tmp_path / "two", "--batch-size", "2", *flags), nproc=2)
    assert two.returncode == 0, two.stderr
    assert_close(metrics(tmp_path / "two"), metrics(tmp_path / "one"))
    assert "2 process(es), 128 tokens" in two.stderr  # tokens count the whole world's step


@pytest.mark.parametrize("extra", [[], ["--embeddings-bf16"]], ids=str)
def test_fsdp2_on_two_ranks_trains_what_one_process_trains(data, tmp_path, extra):
    """bf16 embedding tables beside float32 matrices: FSDP2 shards the tables as units of their own."""
    one = run(*train_args(data, tmp_path / "one", "--steps", "4", "--batch-size", "4", *extra))
    two = run(
        *train_args(data, tmp_path / "fsdp", "--steps", "4", "--batch-size", "2", "--parallel", "fsdp", *extra), nproc=2
    )
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert_close(metrics(tmp_path / "fsdp"), metrics(tmp_path / "one"))
    model, _, _ = checkpoint.load_model(tmp_path / "fsdp")  # saved whole, in the single-file layout
    assert model.config.n_layer == 2
    tables = {model.wte.weight.dtype, *(e.weight.dtype for e in model.value_embeds.values())}
    assert tables == {torch.bfloat16 if extra else torch.float32}


def test_muon_shared_across_two_ranks_trains_what_one_process_trains(data, tmp_path):
    """lrt's Muon divides each stack of same-shape matrices among the ranks and all-gathers the
    results (whole matrices under DDP, row shards under FSDP2); one process runs it alone (issue 22)."""
    args = ("--steps", "3", "--optimizer", "muon")
    one = run(*train_args(data, tmp_path / "one", *args, "--batch-size", "4"))
    assert one.returncode == 0, one.stderr[-3000:]
    for parallel in ("ddp", "fsdp"):
        two = run(*train_args(data, tmp_path / parallel, *args, "--batch-size", "2", "--parallel", parallel), nproc=2)
        assert two.returncode == 0, two.stderr[-3000:]
        assert_close(metrics(tmp_path / parallel), metrics(tmp_path / "one"), tol=1e-4)


@pytest.mark.parametrize("extra", [[], ["--embeddings-bf16"]], ids=str)
def test_fsdp2_in_bfloat16_trains_what_ddp_in_bfloat16_trains(data, tmp_path, extra):
    """FSDP2's mixed precision rebuilds each block's inputs to cast them (issue 22, bug 1)."""
    args = ("--steps", "3", "--batch-size", "2", "--dtype", "bfloat16", *extra)
    ddp = run(*train_args(data, tmp_path / "ddp", *args), nproc=2)
    fsdp = run(*train_args(data, tmp_path / "fsdp", *args, "--parallel", "fsdp"), nproc=2)
    assert ddp.returncode == 0 and fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert_close(metrics(tmp_path / "fsdp"), metrics(tmp_path / "ddp"), tol=2e-2)  # bf16 casts in other places


@pytest.mark.parametrize("rows", [33, 1])
def test_fsdp2_validates_rows_the_ranks_cannot_share_evenly(data, tmp_path, rows):
    """Every block forward of FSDP2 is a collective: a rank with fewer validation rows (or none)
    must not leave the other waiting (issue 22, bug 2)."""
    val = tmp_path / "val.parquet"
    pq.write_table(pq.read_table(data / "train.parquet").slice(0, rows), val, row_group_size=4)
    args = ("--steps", "2", "--eval-tokens", str(rows * T), "--val-data", str(val))
    one = run(*train_args(data, tmp_path / "one", "--batch-size", "4", *args))
    fsdp = subprocess.run(
        lrt(*train_args(data, tmp_path / "fsdp", "--batch-size", "2", "--parallel", "fsdp", *args), nproc=2),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert one.returncode == 0 and fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert_close(metrics(tmp_path / "fsdp"), metrics(tmp_path / "one"))


@pytest.mark.parametrize("parallel, extra", [("ddp", []), ("fsdp", []), ("fsdp", ["--embeddings-bf16"])], ids=str)
def test_a_run_killed_under_torchrun_resumes_to_the_uninterrupted_losses(data, tmp_path, parallel, extra):
    """The optimizer comes back from every rank's shard (checkpoints of torchrun runs are sharded)."""
    args = ("--steps", "8", "--batch-size", "2", "--save-every", "1", "--keep", "3", "--parallel", parallel, *extra)
    reference = run(*train_args(data, tmp_path / "reference", *args), nproc=2)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen(
        lrt(*train_args(data, out, *args), nproc=2),
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not checkpoint.step_dir(out, 3).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_launch(process)  # torchrun and both ranks, mid-training
    assert 3 <= int(checkpoint.resolve(out).name[len("step_") :]) < 8  # killed before the end
    resumed = run("train", "--resume", str(out), nproc=2)
    assert resumed.returncode == 0, resumed.stderr
    assert_close(metrics(out), metrics(tmp_path / "reference"), tol=0)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_another_world_size_resumes_model_and_optimizer(data, tmp_path, parallel):
    """Two ranks' optimizer shards, resharded by DCP for one process without a process group:
    the run continues to the losses of the uninterrupted one (float rounding of other batch shapes).
    The losses of step 6 on and the final BPB come after updates the restored moments make."""
    args = ("--batch-size", "1", "--total-batch-size", str(2 * T))
    two = run(*train_args(data, tmp_path / "two", "--steps", "4", "--parallel", parallel, *args), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run("train", "--resume", str(tmp_path / "two"), "--steps", "6", "--parallel", "none")  # 2 micro-batches
    assert one.returncode == 0, one.stderr[-3000:]
    reference = run(*train_args(data, tmp_path / "ref", "--steps", "6", "--parallel", parallel, *args), nproc=2)
    assert reference.returncode == 0
    assert_close(metrics(tmp_path / "two", kinds=("train",)), metrics(tmp_path / "ref", kinds=("train",)))
    assert_close(metrics(tmp_path / "two", kinds=("final",))[-1:], metrics(tmp_path / "ref", kinds=("final",)))


@pytest.fixture(scope="module")
def sharded_runs(data, tmp_path_factory):
    """Runs of 2 steps on 2 ranks, under DDP and under FSDP2, checkpointed at both steps."""
    root = tmp_path_factory.mktemp("sharded")
    for parallel in ("ddp", "fsdp"):
        args = ("--steps", "2", "--batch-size", "2", "--save-every", "1", "--parallel", parallel)
        result = run(*train_args(data, root / parallel, *args), nproc=2)
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_resuming_on_another_world_size_says_that_the_global_batch_changes(sharded_runs, tmp_path):
    args = ("--out", str(tmp_path / "fork"), "--steps", "3", "--parallel", "none")
    fork = run("train", "--resume", str(sharded_runs / "ddp"), *args)
    assert fork.returncode == 0, fork.stderr[-3000:]
    assert "global batch changes from 128 to 64 tokens per step" in fork.stderr  # 2 ranks x 2 rows of 32, now 1


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_write_the_optimizer_in_shards_one_process_reads_without_unpickling(
    sharded_runs, parallel, monkeypatch
):
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from lrt import LRT, LRTConfig
    from lrt.train.config import TrainConfig
    from lrt.train.optim import build_optimizers

    path = checkpoint.resolve(sharded_runs / parallel)
    shards = sorted(p.name for p in (path / "optimizer").iterdir())
    assert shards == [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]  # each rank its own
    assert not [k for k in load_file(path / "train_state.safetensors") if "optimizer" in k]
    for unpickle in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(*unpickle, lambda *a, **k: pytest.fail("unpickling"))
    record = checkpoint.read_record(path)
    state = checkpoint.load_train_state(path, record)
    model = LRT(LRTConfig.from_dict(record["config"]))
    template = get_optimizer_state_dict(
        model, build_optimizers(model, TrainConfig.from_dict(record["train_config"]).optim)
    )
    loaded = checkpoint.load_optimizer_shards(checkpoint.optimizer_shards(path, state), state["optimizer"], template)
    assert {s["step"].item() for s in loaded["state"].values()} == {2.0}  # a fresh template holds step 1
    assert all(s["exp_avg_sq"].isfinite().all() and s["exp_avg_sq"].any() for s in loaded["state"].values())


def _missing_shard(path):
    (path / "optimizer/shard-00002-model-00001-of-00001.safetensors").unlink()


def _truncated_shard(path):
    shard = path / "optimizer/shard-00001-model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])


def _reference_outside(path):
    record = json.loads((path / "checkpoint.json").read_text())
    record["train_state"] = json.loads(
        json.dumps(record["train_state"]).replace('["dcp", "optimizer"]', '["dcp", ".."]')
    )
    (path / "checkpoint.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: shutil.rmtree(p / "optimizer"), r"is incomplete: its optimizer shards \(optimizer/\) are missing"),
        (_missing_shard, r"is incomplete: its optimizer shards hold \d+ of the values of optimizer\.state\."),
        (_truncated_shard, "optimizer shards are corrupt or truncated"),
        (_reference_outside, "leads outside the checkpoint folder"),
    ],
    ids=["missing-folder", "missing-shard", "truncated-shard", "outside"],
)
def test_a_damaged_sharded_optimizer_is_one_line_naming_the_checkpoint(sharded_runs, tmp_path, capsys, damage, match):
    from lrt.cli import main

    shutil.copytree(sharded_runs / "fsdp", tmp_path / "run")
    path = checkpoint.resolve(tmp_path / "run")
    damage(path)
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "3", "--parallel", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lrt train: error: checkpoint") and str(path) in err, err
    assert re.search(match, err), err


def test_one_process_and_two_ranks_read_one_data_stream_and_resume_across_world_sizes(tmp_path):
    """The bundled corpus (documents of every length, packed across rows): at the same total batch,
    one process and two ranks train on the same rows, and a run moved from two ranks to one
    continues exactly (issue 22: one global data stream; bug 4)."""
    args = ("train", "--preset", "tiny", "--eval-every", "2", "--eval-tokens", "256", "--no-final-decode")
    total = ("--total-batch-size", str(4 * 64))
    one = run(*args, *total, "--steps", "4", "--batch-size", "4", "--out", str(tmp_path / "one"))
    two = run(*args, *total, "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "two"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert_close(metrics(tmp_path / "two"), metrics(tmp_path / "one")[: len(metrics(tmp_path / "two"))])
    moved = run("train", "--resume", str(tmp_path / "two"), "--steps", "4", "--batch-size", "4")
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert_close(metrics(tmp_path / "two", kinds=("train",)), metrics(tmp_path / "one", kinds=("train",)))


def test_a_parquet_file_of_one_row_group_feeds_every_rank(tmp_path):
    """No rank owns row groups any more: one group is not left to rank 0 while rank 1 spins (bug 3)."""
    pq.write_table(
        pa.table({"text": [f"document {i} " + "z" * (i % 30) for i in range(300)]}), tmp_path / "one.parquet"
    )
    result = subprocess.run(
        lrt(*train_args(tmp_path, tmp_path / "run", "--steps", "2", "--batch-size", "2"), nproc=2)
        + ["--data", str(tmp_path / "one.parquet"), "--val-data", str(tmp_path / "one.parquet")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [s for k, s, _ in metrics(tmp_path / "run", kinds=("train",))] == [1, 2]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert run(*train_args(data, out, "--steps", "2", "--batch-size", "4")).returncode == 0
    return out


def test_two_ranks_evaluate_what_one_process_evaluates(trained, tmp_path):
    bundle = write_core_bundle(
        tmp_path / "bundle",
        {
            "mc": ("multiple_choice", 1, MC_ITEMS),
            "schema": ("schema", 0, SCHEMA_ITEMS),
            "lm": ("language_modeling", 1, LM_ITEMS),
        },
    )
    for nproc in (1, 2):
        bpb = run(
            "eval", "bpb", str(trained), "--tokens", "320", "--json", str(tmp_path / f"bpb{nproc}.json"), nproc=nproc
        )
        core = run(
            "eval",
            "core",
            str(trained),
            "--bundle",
            str(bundle),
            "--json",
            str(tmp_path / f"core{nproc}.json"),
            nproc=nproc,
        )
        assert bpb.returncode == 0 and core.returncode == 0, bpb.stderr + core.stderr
    one, two = (json.loads((tmp_path / f"bpb{n}.json").read_text()) for n in (1, 2))
    for key in ("zero", "parallel", "exact"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key  # float32 logits of other batch shapes
    assert two["parallel_passes"] == pytest.approx(one["parallel_passes"], rel=1e-6)
    one, two = (json.loads((tmp_path / f"core{n}.json").read_text()) for n in (1, 2))
    assert one["tasks"] == two["tasks"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--batch-size", "3", "--total-batch-size", str(8 * T)], r"not a multiple of world size 2 x batch size 3"),
        (["--backend", "nccl"], "backend nccl needs GPUs"),
        (["--device", "cuda"], "not available on this machine"),
    ],
)
def test_bad_launches_stop_every_rank_with_one_line(data, tmp_path, extra, match):
    result = run(*train_args(data, tmp_path / "run", "--steps", "1", *extra), nproc=2)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("lrt train:")]
    assert len(ours) == 1 and __import__("re").search(match, ours[0]), result.stderr
    assert "exitcode  : 2" in result.stderr  # torchrun's summary: each rank exited with 2
    assert "/lrt/" not in "".join(line for line in result.stderr.splitlines() if 'File "' in line)  # no lrt traceback


def test_resuming_into_an_incompatible_world_size_is_one_line(data, tmp_path):
    assert (
        run(
            *train_args(data, tmp_path / "run", "--steps", "1", "--batch-size", "1", "--total-batch-size", str(2 * T)),
            nproc=2,
        ).returncode
        == 0
    )
    result = run("train", "--resume", str(tmp_path / "run"), "--batch-size", "2", "--steps", "2", nproc=2)
    ours = [line for line in result.stderr.splitlines() if line.startswith("lrt train:")]
    assert result.returncode != 0 and len(ours) == 1 and "not a multiple of world size 2" in ours[0]


def test_parallel_modes_need_torchrun(capsys):
    from lrt.cli import main

    assert main(["train", "--preset", "tiny", "--parallel", "fsdp", "--steps", "1"]) == 2
    assert "needs several processes" in capsys.readouterr().err


def test_the_paper_recipe_runs_end_to_end_in_smoke_mode(tmp_path):
    """Tokenizer on parquet shards, baseline and LRT at equal training FLOPs under torchrun (2
    ranks, gloo), eval bpb and eval core of both: the chain the d20 recipe runs on GPUs."""
    result = run("recipe", "paper-d20", "--smoke", "--out", str(tmp_path / "recipe"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "recipe/report.json").read_text())
    base, lrt_run = report["runs"]["baseline"], report["runs"]["lrt"]
    assert 1.9 < base["steps"] / lrt_run["steps"] < 2.2  # LRT trains half the steps on the same FLOPs
    assert base["bpb"]["zero"] > 0 and lrt_run["bpb"]["exact"] > 0 and "core" in lrt_run["core"]
    assert "val BPB (exact memory for LRT)" in result.stdout
    again = run("recipe", "paper-d20", "--smoke", "--out", str(tmp_path / "recipe"))  # every stage is done
    assert again.returncode == 0 and again.stderr.count("[done]") == 7
