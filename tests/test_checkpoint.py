import pickle

import pytest
import torch

import lrt
from helpers import random_model, tiny_config
from lrt.data.tokenizer import ByteTokenizer
from lrt.train import checkpoint


def _save(run, step, model, state=None, keep=3):
    return checkpoint.save_checkpoint(
        run, step, model, tokenizer=ByteTokenizer(), meta={"note": step}, state=state or {}, keep=keep
    )


def test_round_trip_is_exact(tmp_path):
    model = random_model(tiny_config(projection="layerwise"))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    path = _save(tmp_path, 7, model, {"optimizers": [opt.state_dict()], "rng": checkpoint.rng_state()})
    loaded, tok, record = checkpoint.load_model(tmp_path)
    assert record["step"] == 7 and record["note"] == 7 and isinstance(tok, ByteTokenizer)
    assert loaded.config == model.config
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.equal(b), n
    state = checkpoint.load_train_state(path, record)
    restored = torch.optim.AdamW(loaded.parameters())
    restored.load_state_dict(state["optimizers"][0])
    for p_old, p_new in zip(opt.state.values(), restored.state.values()):
        assert p_old["exp_avg"].equal(p_new["exp_avg"]) and p_old["step"].equal(p_new["step"])


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.rand(3).equal(a)


def test_flatten_keeps_integer_keys_and_nesting():
    tree = {"state": {0: {"m": torch.ones(2)}, 5: {"m": torch.zeros(1)}}, "groups": [{"lr": 0.1, "params": [0, 5]}]}
    tensors = {}
    flat = checkpoint.flatten_tensors(tree, tensors, "x")
    back = checkpoint.unflatten_tensors(flat, tensors)
    assert set(back["state"]) == {0, 5} and back["state"][0]["m"].equal(torch.ones(2))
    assert back["groups"] == tree["groups"]


def test_keeps_the_last_n_and_resolves_the_newest(tmp_path):
    model = lrt.LRT(tiny_config())
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    assert checkpoint.resolve(tmp_path).name == "step_000004"


def test_steps_sort_as_numbers_and_kept_steps_are_never_pruned(tmp_path):
    """Past step 999,999 the names grow a digit: the newest is still the largest step. Steps a
    run keeps (a study's branch points) survive pruning and do not count against keep."""
    model = lrt.LRT(tiny_config())
    for step in (5, 999_999, 1_000_000, 1_000_001):
        checkpoint.save_checkpoint(
            tmp_path, step, model, tokenizer=ByteTokenizer(), meta={}, state={}, keep=2, kept=frozenset({5})
        )
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000005", "step_1000000", "step_1000001"]
    assert checkpoint.resolve(tmp_path).name == "step_1000001"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # pruned folders are gone, not left renamed


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = random_model(tiny_config())
    _save(tmp_path, 1, model)
    before = (tmp_path / "checkpoints/step_000001/model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    for step in (1, 2):  # rewriting the same step, and writing a new one
        with pytest.raises(OSError):
            _save(tmp_path, step, model)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000001"]
    assert (tmp_path / "checkpoints/step_000001/model.safetensors").read_bytes() == before
    checkpoint.load_model(tmp_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _save(tmp_path, 1, random_model(tiny_config()), {"rng": checkpoint.rng_state()})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    path = checkpoint.resolve(tmp_path)
    _, _, record = checkpoint.load_model(path)
    checkpoint.load_train_state(path, record)


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda p: p.joinpath("model.safetensors").write_bytes(p.joinpath("model.safetensors").read_bytes()[:1000]),
            "corrupt or truncated",
        ),
        (lambda p: p.joinpath("checkpoint.json").write_text('{"format": "lrt-check'), "checkpoint.json unreadable"),
        (lambda p: p.joinpath("checkpoint.json").write_text('{"format": "other"}'), "has format"),
    ],
    ids=["truncated-weights", "truncated-json", "foreign-json"],
)
def test_damaged_checkpoints_raise_clear_errors(tmp_path, damage, match):
    path = _save(tmp_path, 1, random_model(tiny_config()))
    damage(path)
    with pytest.raises(ValueError, match=match):
        checkpoint.load_model(path)


def test_weights_that_do_not_match_the_config(tmp_path):
    path = _save(tmp_path, 1, random_model(tiny_config()))
    record = checkpoint.read_record(path)
    record["config"]["n_layer"] = 2
    path.joinpath("checkpoint.json").write_text(__import__("json").dumps(record))
    with pytest.raises(ValueError, match="weights do not match its config"):
        checkpoint.load_model(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.resolve(tmp_path)


def _stepped_adamw(model):
    """An AdamW after one step, with no state for the first parameter (as if it had no gradient)."""
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    next(model.parameters()).grad = None
    opt.step()
    model.zero_grad(set_to_none=True)
    return opt


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP's, saving without a process group
def test_optimizer_shards_round_trip_through_checkpoint_json(tmp_path):
    """The DCP layout on one process (no process group): tensors in optimizer/, the state dict in
    train_state as {"__shard__": name} references, read back into another optimizer's tensors."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = random_model(tiny_config())
    saved = get_optimizer_state_dict(model, [_stepped_adamw(model)])
    tmp = checkpoint.begin(tmp_path, 1)
    state = {"optimizer": checkpoint.save_optimizer_shards(tmp, saved)}
    path = checkpoint.save_checkpoint(tmp_path, 1, model, tokenizer=ByteTokenizer(), meta={}, state=state, begun=True)
    assert not list((tmp_path / "checkpoints").glob("*.tmp")) and (path / "optimizer").is_dir()
    state = checkpoint.load_train_state(path, checkpoint.read_record(path))
    # a new optimizer's: step 1 and zero moments, for every parameter
    template = get_optimizer_state_dict(model, [torch.optim.AdamW(model.parameters())])
    loaded = checkpoint.load_optimizer_shards(checkpoint.optimizer_shards(path, state), state["optimizer"], template)
    assert loaded["param_groups"][0]["betas"] == list(saved["param_groups"][0]["betas"])
    assert loaded["state"].keys() == saved["state"].keys() != template["state"].keys()
    for name, moments in saved["state"].items():
        for key, tensor in moments.items():
            assert loaded["state"][name][key].equal(tensor), (name, key)


def test_non_finite_optimizer_shards_are_refused():
    state = {"state": {"w": {"exp_avg": torch.tensor([1.0, float("nan")])}}, "param_groups": [{"lr": 0.1}]}
    with pytest.raises(ValueError, match=r"refusing to save step 5: non-finite optimizer state in optimizer\.state\.w"):
        checkpoint.refuse_non_finite_shards(state, 5)
