"""The fast paths compute the same function as the reference path (issue 5, "must hold")."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

import lrt
from helpers import random_model, random_tokens, rel_err, tiny_config
from lrt import attention
from lrt.attention import PassContext, resolve_attention, span_block_mask
from lrt.flops import memory_projection_params, training_flops_per_sequence
from lrt.model import compile_model
from lrt.runtime import keep_freed_memory


def dense_reference(q, k, v, positions, window):
    """One masked SDPA over all keys, in float64: the definition of a subset pass's attention."""
    key_pos = torch.arange(k.size(2))
    allowed = key_pos <= positions[:, None]
    if window is not None:
        allowed &= positions[:, None] - key_pos <= window
    q, k, v = (t.double() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


def attend_span(span, keys, values, q, window, backend):
    pos = torch.arange(span.start, span.stop, span.step)
    ctx = PassContext(pos, span, False, None, keys.size(2), False, None, None, backend=backend)
    ctx.prepare([window])
    with torch.no_grad():
        merged = ctx.merge((keys.clone(), values.clone()), keys[:, :, pos], values[:, :, pos])
        return ctx.attend(window, q, *merged)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("window", [None, 5, 40])
@pytest.mark.parametrize(
    "span",
    [range(0, 300, 2), range(1, 300, 2), range(3, 300, 4), range(17, 300, 1), range(0, 7, 1), range(120, 200, 1)],
)
def test_subset_attention_equals_one_dense_masked_call(backend, window, span):
    """Blocked SDPA (query blocks over key slices) and FlexAttention (block mask) on random inputs,
    strided and contiguous spans, with and without sliding windows, GQA, against float64."""
    g = torch.Generator().manual_seed(len(span) + span.start)
    T, n = 300, len(span)
    keys, values = torch.randn(2, 2, T, 16, generator=g), torch.randn(2, 2, T, 16, generator=g)
    q = torch.randn(2, 4, n, 16, generator=g)
    pos = torch.arange(span.start, span.stop, span.step)
    out = attend_span(span, keys, values, q, window, backend)
    assert rel_err(out.double(), dense_reference(q, keys, values, pos, window)) < 1e-5


def test_flex_block_mask_skips_invisible_blocks():
    """The block mask is sparse in the shape the span implies: the first query tile of positions
    1, 3, ..., 255 sees only the first two key tiles of 128."""
    mask = span_block_mask(1, 2, 512, 1024, None, "cpu")
    dense = mask.to_dense()[0, 0]  # (query tiles, key tiles) of 128
    assert dense.shape == (4, 8)
    assert dense[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert dense.sum().item() == 2 + 4 + 6 + 8


def test_spans_of_one_shape_share_one_compiled_flex_graph():
    """A span's start and stride reach compiled FlexAttention as inputs, not constants: eight chunks
    of one length compile once (a chunked pass or an exact prefill, a new start per call, would
    otherwise recompile until dynamo's limit), and each equals the dense reference."""
    torch._dynamo.utils.counters.clear()
    flex = torch.compile(flex_attention, dynamic=False)
    g = torch.Generator().manual_seed(0)
    keys, values, q = (torch.randn(1, 2, n, 16, generator=g) for n in (256, 256, 32))
    for start in range(0, 256, 32):
        pos = torch.arange(start, start + 32)
        out = flex(q, keys, values, block_mask=span_block_mask(start, 1, 32, 256, None, "cpu"))
        assert rel_err(out.double(), dense_reference(q, keys, values, pos, None)) < 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize(
    "schedule",
    [
        lrt.Interleaved(subsets=2),
        lrt.Interleaved(subsets=3),
        lrt.MultiRefine(passes=2),
        lrt.Chunked(chunk=3),
        lrt.Sequential(),
    ],
)
def test_flex_backend_computes_the_model_of_the_sdpa_backend(schedule):
    config = tiny_config(sequence_len=12)
    model, idx = random_model(config), random_tokens(config)
    with torch.no_grad():
        reference = model(idx, idx, schedule=schedule)
        model.attention = "flex"
        fast = model(idx, idx, schedule=schedule)
    assert rel_err(fast.logits, reference.logits) < 1e-5
    assert abs(fast.loss.item() - reference.loss.item()) < 1e-5


def test_two_models_with_different_backends_share_a_process(monkeypatch):
    """The backend belongs to the model: an sdpa model and a flex model with the same weights run
    in turn in one process; each runs its own backend (FlexAttention calls are counted), neither
    changes the other's, and they compute the same function."""
    config = tiny_config(sequence_len=16)
    sdpa_model = random_model(config)
    sdpa_model.attention = "sdpa"
    flex_model = lrt.LRT(config, attention="flex")
    flex_model.load_state_dict(sdpa_model.state_dict())
    calls, original = [], attention.flex_attend
    monkeypatch.setattr(attention, "flex_attend", lambda *args: calls.append(1) or original(*args))
    idx, schedule = random_tokens(config), lrt.Interleaved(subsets=2)
    with torch.no_grad():
        for _ in range(2):
            before = len(calls)
            a = sdpa_model(idx, schedule=schedule).logits
            assert len(calls) == before  # the sdpa model never reaches FlexAttention
            b = flex_model(idx, schedule=schedule).logits
            assert len(calls) > before
            assert rel_err(b, a) < 1e-5
    assert (sdpa_model.attention, flex_model.attention) == ("sdpa", "flex")


def test_flex_backend_refuses_to_train_on_cpu():
    config = tiny_config()
    model, idx = lrt.LRT(tiny_config(), attention="flex"), random_tokens(config)
    with pytest.raises(ValueError, match="cannot train on CPU"):
        model(idx, idx, schedule=lrt.Interleaved(subsets=2))


def test_unknown_attention_backend_is_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        lrt.LRT(tiny_config(), attention="flash")
    model = lrt.LRT(tiny_config())
    with pytest.raises(ValueError, match="attention must be one of"):
        model.attention = "flash"
    assert model.attention == "auto"
    with pytest.raises(ValueError, match="attention must be one of"):
        lrt.TrainConfig(attention="flash")


def test_auto_backend_follows_the_device():
    assert resolve_attention("auto", torch.device("cpu")) == "sdpa"
    assert resolve_attention("auto", torch.device("cuda")) == "flex"
    assert resolve_attention("sdpa", torch.device("cuda")) == "sdpa"


def test_bfloat16_autocast_trains_like_float32():
    """Under autocast the attention inputs share the matmul dtype; the loss and the gradients stay
    close to float32's (bf16 rounding only)."""
    config = tiny_config(sequence_len=16)
    model, idx = random_model(config, std=0.1), random_tokens(config)
    schedule = lrt.Interleaved(subsets=2)
    losses, grads = [], []
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(idx, idx, schedule=schedule).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert abs(losses[1] - losses[0]) < 0.02 * losses[0]
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_training_flops_count_every_pass_and_skip_zero_memory_projections():
    config = tiny_config(sequence_len=16)
    base = lrt.LRTConfig(**{**config.to_dict(), "injection": "none"})
    T = 16
    baseline = training_flops_per_sequence(base, lrt.Baseline(), T)
    zero_pass = training_flops_per_sequence(config, lrt.Baseline(), T)
    interleaved = training_flops_per_sequence(config, lrt.Interleaved(subsets=2), T)
    memory_pass_extra = 6 * memory_projection_params(config) * T
    assert memory_projection_params(config) == 2 * config.kv_dim * config.n_embd  # one shared Wk, Wv
    assert zero_pass > baseline  # the gates and the residual scalars still run
    assert interleaved == pytest.approx(2 * zero_pass + memory_pass_extra)
    layerwise = lrt.LRTConfig(**{**config.to_dict(), "projection": "layerwise"})
    assert memory_projection_params(layerwise) == config.n_layer * memory_projection_params(config)


def test_keep_freed_memory_reports_whether_it_applied():
    assert isinstance(keep_freed_memory(), bool)


# on a GPU: FlexAttention's backward and torch.compile against the reference path ---------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def loss_and_grads(model, idx, schedule, backend="sdpa", forward=None):
    model.zero_grad(set_to_none=True)
    model.attention = backend
    loss = (model if forward is None else forward)(idx, idx, schedule=schedule, return_logits=False).loss
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@cuda
@pytest.mark.parametrize("schedule", [lrt.Interleaved(subsets=2), lrt.Interleaved(subsets=4), lrt.Chunked(chunk=64)])
def test_cuda_flex_training_matches_sdpa(schedule):
    torch.backends.cuda.matmul.allow_tf32 = False
    config = tiny_config(sequence_len=256, n_embd=64, short_window=40)
    model = random_model(config, std=0.1).cuda()
    idx = random_tokens(config, batch=4).cuda()
    ref_loss, ref_grads = loss_and_grads(model, idx, schedule, "sdpa")
    loss, grads = loss_and_grads(model, idx, schedule, "flex")
    assert abs(loss - ref_loss).item() < 1e-4 * ref_loss.item()
    assert rel_err(grads, ref_grads) < 1e-3


@cuda
def test_cuda_compiled_model_matches_eager():
    torch.backends.cuda.matmul.allow_tf32 = False
    config = tiny_config(sequence_len=256, n_embd=64)
    model = random_model(config, std=0.1).cuda()
    idx = random_tokens(config, batch=4).cuda()
    schedule = lrt.Interleaved(subsets=2)
    ref_loss, ref_grads = loss_and_grads(model, idx, schedule, "sdpa")
    loss, grads = loss_and_grads(model, idx, schedule, "flex", forward=compile_model(model))
    assert abs(loss - ref_loss).item() < 1e-4 * ref_loss.item()
    assert rel_err(grads, ref_grads) < 1e-3


@pytest.mark.parametrize("schedule", [lrt.Interleaved(subsets=2), lrt.Chunked(chunk=3), lrt.MultiRefine(passes=2)])
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less(schedule):
    """Blocks are pure functions of their inputs (the key/value buffer is passed in and returned),
    so recomputing them in backward sees the buffer as it was: the gradients are bit for bit the
    same, and backward keeps only the blocks' inputs."""
    from lrt.experiments.bench import activation_bytes

    config = tiny_config(sequence_len=12)
    model, idx = random_model(config, torch.float64), random_tokens(config)
    results = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        kept = activation_bytes(model, lambda: model(idx, idx, schedule=schedule, return_logits=False).loss)
        results.append((kept, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (kept_plain, plain), (kept_checkpointed, checkpointed) = results
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0, msg=name)
    assert kept_checkpointed < 0.6 * kept_plain


@pytest.mark.slow
def test_compiled_blocks_compute_the_eager_model_on_cpu():
    """Regional compilation on the CPU (inductor): about two minutes of compiling."""
    config = tiny_config(sequence_len=16)
    model, idx = random_model(config, std=0.1), random_tokens(config)
    schedule = lrt.Interleaved(subsets=2)
    ref_loss, ref_grads = loss_and_grads(model, idx, schedule)
    loss, grads = loss_and_grads(model, idx, schedule, forward=compile_model(model))
    assert abs(loss - ref_loss).item() < 1e-5 * ref_loss.item()
    assert rel_err(grads, ref_grads) < 1e-4


def test_compiled_functions_get_room_for_every_graph_and_the_setting_comes_back():
    """Past dynamo's default of 8 graphs a compiled function runs eagerly without a word; the
    compiled blocks and decoding step run inside room_for_graphs (two models in one process need
    more than 8), which restores the process's setting when it ends."""
    from lrt.runtime import GRAPHS_PER_FUNCTION, room_for_graphs

    def graphs(n, room):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        fn = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
        with room_for_graphs() if room else contextlib.nullcontext():
            for length in range(1, n + 1):
                fn(torch.ones(length))
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]

    before = torch._dynamo.config.recompile_limit
    assert graphs(12, room=False) == before < 12
    assert graphs(12, room=True) == 12 <= GRAPHS_PER_FUNCTION
    assert torch._dynamo.config.recompile_limit == before
