"""Fault injection: training killed with SIGKILL at random moments (in steps, in checkpoint
writes) leaves only loadable checkpoints, and resuming reproduces the uninterrupted run exactly."""

import random
import shutil
import subprocess
import sys
import time

from helpers import untimed
from lrt.train import checkpoint
from lrt.train.curves import read_metrics

RUN = [
    "--preset",
    "tiny",
    "--steps",
    "16",
    "--batch-size",
    "2",
    "--eval-tokens",
    "128",
    "--eval-every",
    "8",
    "--save-every",
    "1",
    "--keep",
    "2",
    "--no-final-decode",
]


def train(out, *extra, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "lrt", "train", *RUN, "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **popen,
    )


def test_kill_9_anywhere_then_resume_reproduces_the_run(tmp_path):
    t0 = time.perf_counter()
    assert train(tmp_path / "reference").wait() == 0
    duration = time.perf_counter() - t0
    reference = untimed(read_metrics(tmp_path / "reference/metrics.jsonl"))
    rng = random.Random(10)
    for i in range(3):
        out = tmp_path / f"killed{i}"
        process = train(out)
        time.sleep(rng.uniform(0.4, 1.0) * duration)  # startup is about half of it: most kills land in training
        process.kill()
        process.wait()
        saved = checkpoint.list_checkpoints(out)
        for path in saved:  # whatever survived is whole
            _, _, record = checkpoint.load_model(path)
            checkpoint.load_train_state(path, record)
        if not saved:  # killed before its first checkpoint: nothing to resume, the folder is started over
            shutil.rmtree(out, ignore_errors=True)
        assert train(out, *(["--resume", str(out)] if saved else [])).wait() == 0
        assert untimed(read_metrics(out / "metrics.jsonl")) == reference, f"kill {i}"
