"""`lrt recipe paper-d20`: a training stage killed midway resumes from its newest checkpoint
instead of starting a fresh `lrt train` that its own half-trained folder refuses (issue 25)."""

import subprocess
import sys

import pytest

from lrt.experiments.recipe import resume_flags
from lrt.train import checkpoint


def test_a_killed_training_stage_resumes_and_another_runs_folder_is_refused(tmp_path):
    run_dir = tmp_path / "lrt"
    flags = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "2", "--eval-tokens", "64", "--device", "cpu"]
    train = ["train", *flags, "--no-final-decode", "--steps", "4", "--save-every", "2", "--out", str(run_dir)]
    assert resume_flags(train, run_dir) == []  # nothing there: a fresh run
    # the stage killed after its step-2 save: trained to 4, its final checkpoint removed (the kill)
    assert subprocess.run([sys.executable, "-m", "lrt", *train], capture_output=True).returncode == 0
    checkpoint.step_dir(run_dir, 4).rename(tmp_path / "final")
    assert resume_flags(train, run_dir) == ["--resume", str(run_dir)]
    other = [*train[:-5], "8", *train[-4:]]  # another --ratio: other steps
    with pytest.raises(ValueError, match=r"holds a run of other settings \(steps=4 \(the recipe says 8\)\)"):
        resume_flags(other, run_dir)
    resumed = subprocess.run([sys.executable, "-m", "lrt", *train, "--resume", str(run_dir)], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rewound" not in resumed.stderr.decode() and checkpoint.step_dir(run_dir, 4).exists()
