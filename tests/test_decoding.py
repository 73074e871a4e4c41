import pytest
import torch

import lrt
from helpers import random_model, random_tokens, rel_err, tiny_config


@pytest.mark.parametrize("projection", ["shared", "layerwise"])
def test_batched_decoding_equals_decoding_each_sequence_alone(projection):
    """Identity 5."""
    model = random_model(tiny_config(projection=projection))
    idx = random_tokens(model.config, batch=4)
    batched = model.decode(idx)
    for b in range(4):
        assert rel_err(batched[b : b + 1], model.decode(idx[b : b + 1])) <= 1e-5


def test_step_by_step_equals_decode_and_carries_one_memory_vector():
    model = random_model(tiny_config())
    idx = random_tokens(model.config, batch=3)
    state = model.new_state(batch_size=3, max_len=8)
    logits = []
    for t in range(8):
        logits.append(model.step(idx[:, t], state))
        assert state.memory.shape == (3, model.config.n_embd)
        assert state.pos.tolist() == [t + 1] * 3
    torch.testing.assert_close(torch.stack(logits, 1), model.decode(idx), rtol=0, atol=0)


def test_state_memory_is_the_normed_source_state():
    model = random_model(tiny_config(source_layer=3), torch.float64)
    idx = random_tokens(model.config, batch=1)
    state = model.new_state(1, 8)
    model.step(idx[:, 0], state)
    h, _ = model.forward_positions(idx[:, :1], torch.arange(1), None, lrt.model.KVBuffer(3, 1), full=True)
    torch.testing.assert_close(state.memory, torch.nn.functional.rms_norm(h, (32,))[:, 0])


def test_zero_memory_state_never_holds_memory():
    model = random_model(tiny_config())
    state = model.new_state(2, 4, zero_memory=True)
    model.step(torch.tensor([1, 2]), state)
    assert state.memory is None


def test_step_errors():
    model = random_model(tiny_config())
    state = model.new_state(2, 2)
    with pytest.raises(ValueError, match=r"tokens must have shape \(2,\)"):
        model.step(torch.tensor([1, 2, 3]), state)
    model.step(torch.tensor([1, 2]), state)
    model.step(torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="state is full"):
        model.step(torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="batch_size"):
        model.new_state(0, 4)
