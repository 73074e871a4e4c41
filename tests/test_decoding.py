import pytest
import torch

import lrt
from helpers import random_model, random_tokens, rel_err, tiny_config
from lrt import decoding
from lrt.decoding import Decoder, decode, new_state, prefill, step


@pytest.mark.parametrize("projection", ["shared", "layerwise"])
def test_batched_decoding_equals_decoding_each_sequence_alone(projection):
    """Identity 5."""
    model = random_model(tiny_config(projection=projection))
    idx = random_tokens(model.config, batch=4)
    batched = decode(model, idx)
    for b in range(4):
        assert rel_err(batched[b : b + 1], decode(model, idx[b : b + 1])) <= 1e-5


def test_step_by_step_equals_decode_and_carries_one_memory_vector():
    model = random_model(tiny_config())
    idx = random_tokens(model.config, batch=3)
    state = new_state(model, batch_size=3, max_len=8)
    logits = []
    for t in range(8):
        logits.append(step(model, idx[:, t], state))
        assert state.memory.shape == (3, model.config.n_embd)
        assert state.pos.tolist() == [t + 1] * 3
    torch.testing.assert_close(torch.stack(logits, 1), decode(model, idx), rtol=0, atol=0)


def test_state_memory_is_the_normed_source_state():
    model = random_model(tiny_config(source_layer=3), torch.float64)
    idx = random_tokens(model.config, batch=1)
    state = new_state(model, 1, 8)
    step(model, idx[:, 0], state)
    h, _ = model.forward_positions(idx[:, :1], torch.arange(1), None, lrt.model.KVBuffer(3, 1), full=True)
    torch.testing.assert_close(state.memory, torch.nn.functional.rms_norm(h, (32,))[:, 0])


def test_zero_memory_state_never_holds_memory():
    model = random_model(tiny_config())
    state = new_state(model, 2, 4, zero_memory=True)
    step(model, torch.tensor([1, 2]), state)
    assert state.memory is None


def test_step_errors():
    model = random_model(tiny_config())
    state = new_state(model, 2, 2)
    with pytest.raises(ValueError, match=r"tokens must have shape \(2,\)"):
        step(model, torch.tensor([1, 2, 3]), state)
    step(model, torch.tensor([1, 2]), state)
    step(model, torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="state is full"):
        step(model, torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="batch_size"):
        new_state(model, 0, 4)


def test_a_static_state_decodes_like_the_dynamic_one():
    """The static step attends to the whole cache (masked by position) and writes memory and
    positions in place: the same function, with fixed shapes and addresses."""
    model = random_model(tiny_config(sequence_len=16), torch.float64)
    idx = random_tokens(model.config, batch=3, length=12)
    state = new_state(model, 3, 13, static=True)
    assert (state.max_len, state.cache.length) == (13, 16)  # the cache rounded up: few graphs for all lengths
    addresses = [t.data_ptr() for t in (state.memory, state.pos, *state.cache.k, *state.cache.v)]
    logits = torch.stack([step(model, idx[:, t], state) for t in range(12)], 1)
    assert rel_err(logits, decode(model, idx)) < 1e-12
    assert addresses == [t.data_ptr() for t in (state.memory, state.pos, *state.cache.k, *state.cache.v)]


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_the_compiled_step_follows_the_reference_token_by_token(device):
    """200 greedy tokens: the compiled static step's logits (a CUDA graph on GPU) equal the eager
    dynamic step's within 1e-5 (float32) at every token and pick the same tokens; generate() with
    prompts of different lengths gives the same tokens on both paths."""
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch._dynamo.utils.counters.clear()
    config = tiny_config(sequence_len=256, n_embd=64)  # 16-dim heads: FlexAttention's least on CUDA
    reference = Decoder(random_model(config, std=0.1).to(device))
    fast = Decoder(random_model(config, std=0.1).to(device), compile=True)
    state_ref, state_fast = reference.new_state(2, 256), fast.new_state(2, 256)
    assert state_fast.static and not state_ref.static
    tokens = torch.tensor([5, 40], device=device)
    for t in range(200):
        expected, got = reference.step(tokens, state_ref), fast.step(tokens, state_fast)
        assert (got - expected).abs().max() <= 1e-5, f"token {t}"
        tokens = expected.argmax(-1)
        assert torch.equal(got.argmax(-1), tokens), f"token {t}"
    prompts = [[5, 9, 2, 33, 7, 1], [40, 3, 11]]
    assert fast.generate(prompts, 50, temperature=0).tokens == reference.generate(prompts, 50, temperature=0).tokens
    if device == "cuda":  # the step really ran as a CUDA graph (inductor counts each fallback)
        assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0


def test_generate_compiles_its_step_by_default_on_cuda_only():
    """The CUDA-graph step is 7-8x faster per token on a GPU; on a CPU compiling does not pay."""
    assert decoding.compiled_by_default(torch.device("cuda"))
    assert not decoding.compiled_by_default(torch.device("cpu"))


def test_the_engine_owns_the_compiled_step_and_the_model_stays_pure():
    """A Decoder's states are static iff it compiles (unless told); the model carries no run-time
    state, and a model another engine compiled for still decodes eagerly through the functions."""
    model = random_model(tiny_config())
    eager, compiled = Decoder(model), Decoder(model, compile=True)  # torch.compile is lazy: nothing compiles here
    assert not eager.compiles and eager.mode is None and compiled.compiles and compiled.mode == "default"
    assert not eager.new_state(2, 4).static and compiled.new_state(2, 4).static
    assert not compiled.new_state(2, 4, static=False).static and eager.new_state(2, 4, static=True).static
    assert eager.new_state(1).max_len == model.config.sequence_len
    assert not new_state(model, 2, 4).static and not prefill(model, [[1, 2]], 4).state.static
    assert compiled.prefill([[1, 2]], 4).state.static
    assert not any(hasattr(model, name) for name in ("compiled_step", "compiled_blocks", "generate", "step"))
    assert "decoding" not in vars(lrt.model)
    with pytest.raises(ValueError, match="give it with compile=True"):
        Decoder(model, mode="reduce-overhead")
