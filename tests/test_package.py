"""The package's shape: an import without side effects, configuration said once (presets, flags
derived from the config dataclasses), old checkpoints' training configs still read."""

import dataclasses
import subprocess
import sys

import pytest

import lrt
from lrt.cli import build_parser, train_config_from_args
from lrt.presets import get_preset
from lrt.train.config import TrainConfig, flag_fields
from lrt.train.optim import OptimConfig


def test_import_lrt_leaves_matplotlib_alone():
    code = "import sys, lrt; import lrt.train.curves, lrt.train.trainer, lrt.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_flagged_config_field_is_a_train_flag():
    bare = build_parser().parse_args(["train"])  # no flag has a parser default: the config holds them
    assert set(vars(bare)) == {"command", "run", "resume"}
    flagged = [f.name for f, _ in flag_fields(TrainConfig)] + [f"optim.{f.name}" for f, _ in flag_fields(OptimConfig)]
    unflagged = {f.name for f in dataclasses.fields(TrainConfig)} - {n for n in flagged if "." not in n}
    assert unflagged == {"model", "optim"}  # --set KEY=VALUE, and the optimizer's own fields
    args = build_parser().parse_args(
        [
            "train",
            "--seq-len",
            "32",
            "--matrix-lr",
            "0.01",
            "--no-final-decode",
            "--compile",
            "--schedule",
            "multirefine",
            "--warmdown-ratio",
            "0.5",
        ]
    )
    cfg = train_config_from_args(args)
    assert (cfg.seq_len, cfg.optim.matrix_lr, cfg.final_decode, cfg.compile) == (32, 0.01, False, True)
    assert cfg.schedule == "multirefine:1" and cfg.optim.warmdown_ratio == 0.5
    assert cfg.batch_size == TrainConfig().batch_size  # not given: the config's default


def test_flags_given_on_resume_override_only_themselves():
    base = TrainConfig(steps=7, schedule="interleaved:4", optim=OptimConfig(adamw_lr=1e-3)).to_dict()
    cfg = train_config_from_args(build_parser().parse_args(["train", "--steps", "9"]), base)
    assert (cfg.steps, cfg.schedule, cfg.optim.adamw_lr) == (9, "interleaved:4", 1e-3)


def test_training_configs_of_older_checkpoints_still_read():
    old = {**TrainConfig().to_dict(), "schedule": "interleaved", "subsets": 4, "passes": 1, "chunk": 64}
    assert TrainConfig.from_dict(old).schedule == "interleaved:4"
    assert TrainConfig.from_dict({**old, "schedule": "chunked", "chunk": 16}).make_schedule() == lrt.Chunked(chunk=16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="interleaved:x"), "subsets must be an integer"),
        (dict(preset="d0"), "preset must be one of"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(optim={"optimizer": "sgd"}), "optimizer must be one of"),
    ],
)
def test_bad_train_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_one_preset_table_for_training_and_bench():
    d20 = get_preset("d20")
    assert d20.shape == dict(n_layer=20, n_embd=1280, n_head=10, n_kv_head=10, sequence_len=2048)
    assert d20.config().vocab_size == 32768 and d20.bench_batch == 8
    small = TrainConfig(preset="small").model_config(vocab_size=257)
    assert small == get_preset("small").config()  # the demo trains the model `lrt bench --config small` measures
