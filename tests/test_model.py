import pytest
import torch

import lrt
from helpers import pathway_variants, random_model, random_tokens, rel_err, tiny_config, variant_id
from lrt.attention import KVBuffer
from lrt.decoding import decode
from reference import reference_logits


@pytest.mark.parametrize("variant", pathway_variants(), ids=variant_id)
def test_decoding_matches_the_naive_reference(variant):
    """The exact recurrence of the package (decode) against loops written from LRT_SPEC, float64."""
    model = random_model(tiny_config(**variant), torch.float64)
    idx = random_tokens(model.config)
    ref = reference_logits(model, idx)
    assert rel_err(decode(model, idx), ref) < 1e-12


@pytest.mark.parametrize("value_embeds", ["none", "alternating", "all"])
@pytest.mark.parametrize("residual_scalars", [True, False])
def test_zero_memory_forward_matches_the_naive_reference(value_embeds, residual_scalars):
    model = random_model(tiny_config(value_embeds=value_embeds, residual_scalars=residual_scalars), torch.float64)
    idx = random_tokens(model.config)
    assert rel_err(model(idx), reference_logits(model, idx, memory=False)) < 1e-12


def test_target_layer_subset_matches_the_naive_reference():
    model = random_model(tiny_config(target_layers=(2,), projection="layerwise"), torch.float64)
    idx = random_tokens(model.config)
    assert rel_err(decode(model, idx), reference_logits(model, idx)) < 1e-12


@pytest.mark.parametrize("variant", pathway_variants(), ids=variant_id)
def test_zero_memory_forward_equals_stepping_with_memory_off(variant):
    """Identity 1, float32."""
    model = random_model(tiny_config(**variant))
    idx = random_tokens(model.config)
    assert rel_err(model(idx), decode(model, idx, zero_memory=True)) <= 1e-5


@pytest.mark.parametrize("injection", ["kv+residual", "kv", "residual"])
def test_memory_none_is_m_equal_zero_fed_through_the_pathway(injection):
    model = random_model(tiny_config(injection=injection), torch.float64)
    idx = random_tokens(model.config)
    T = idx.size(1)
    pos = torch.arange(T)
    zeros = torch.zeros(idx.size(0), T, model.config.n_embd, dtype=torch.float64)
    h_none, s_none = model.forward_positions(idx, pos, None, KVBuffer(3, T), full=True)
    h_zero, s_zero = model.forward_positions(idx, pos, zeros, KVBuffer(3, T), full=True)
    torch.testing.assert_close(h_none, h_zero, rtol=0, atol=1e-14)
    torch.testing.assert_close(s_none, s_zero, rtol=0, atol=1e-14)


def test_gates_are_not_skipped_under_zero_memory():
    """With m = 0 the own-key gate still scales the layer's keys and values (LRT_SPEC 2)."""
    model = random_model(tiny_config(injection="kv"), torch.float64)
    idx = random_tokens(model.config)
    before = model(idx)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.mem_gate.weight.mul_(3.0)
    assert rel_err(model(idx), before) > 1e-3


def test_init_is_nanochat_and_neutral():
    model = lrt.LRT(tiny_config())
    for block in model.blocks:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert not block.attn.mem_gate.weight.any()
        assert block.mem_scale.item() == pytest.approx(0.1)
        assert block.resid_scale.item() == 1.0 and block.x0_scale.item() == pytest.approx(0.1)
    w = model.blocks[0].attn.c_q.weight
    assert w.abs().max() <= (3 / 32) ** 0.5 and w.std().item() == pytest.approx(32**-0.5, rel=0.1)


def test_built_on_meta_and_initialised_in_place():
    """The large-model path (meta, to_empty, init_weights) initialises every parameter, and gives
    the weights a direct build on the device gives under the same seed (no default init is paid)."""
    torch.manual_seed(0)
    direct = lrt.LRT(tiny_config(), device="cpu")
    with torch.device("meta"):
        model = lrt.LRT(tiny_config())
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    torch.manual_seed(0)
    model.init_weights()
    for (name, p), q in zip(model.named_parameters(), direct.parameters()):
        assert torch.equal(p, q), name


def test_zero_memory_lrt_at_init_is_the_baseline_transformer():
    """Neutral gates: before training, the LRT with m = 0 computes the plain transformer's function."""
    torch.manual_seed(0)
    lrt_model = lrt.LRT(tiny_config())
    with torch.no_grad():
        for name, p in lrt_model.named_parameters():
            if "c_proj" in name:
                p.normal_(0, 0.3)
    base = lrt.LRT(tiny_config(injection="none"))
    missing, unexpected = base.load_state_dict(lrt_model.state_dict(), strict=False)
    assert not missing and all("mem_" in k for k in unexpected)
    idx = random_tokens(base.config)
    torch.testing.assert_close(lrt_model(idx), base(idx), rtol=0, atol=0)


def test_injection_none_is_the_plain_transformer():
    model = random_model(tiny_config(injection="none"))
    assert lrt.parameter_counts(model).pathway == 0
    assert not [n for n, _ in model.named_parameters() if "mem_" in n]
    idx = random_tokens(model.config)
    assert rel_err(decode(model, idx), model(idx)) <= 1e-5


def test_memory_changes_the_function():
    model = random_model(tiny_config())
    idx = random_tokens(model.config)
    assert rel_err(decode(model, idx), model(idx)) > 1e-2


def test_paper_backbone_parameter_accounting():
    """d20, vocab 32768, value embeddings on every layer: ~1.3B; LRT-shared adds 0.2-0.5%."""
    d20 = dict(vocab_size=32768, value_embeds="all")
    shared = lrt.parameter_counts(lrt.LRTConfig.from_depth(20, **d20))
    layerwise = lrt.parameter_counts(lrt.LRTConfig.from_depth(20, projection="layerwise", **d20))
    base = lrt.parameter_counts(lrt.LRTConfig.from_depth(20, injection="none", **d20))
    assert 1.30e9 < base.total < 1.33e9 and base.pathway == 0
    assert shared.total - base.total == shared.pathway
    assert 0.002 <= shared.share <= 0.005
    assert 2 * 1280 * 1280 < shared.pathway < 1.01 * 2 * 1280 * 1280
    assert layerwise.pathway > 19 * shared.pathway
    assert "recurrent pathway" in str(shared)


def test_parameter_counts_of_a_model_and_of_its_config_agree():
    cfg = tiny_config(projection="layerwise")
    assert lrt.parameter_counts(cfg) == lrt.parameter_counts(lrt.LRT(cfg))


def test_long_decoding_past_the_training_length():
    """RoPE is computed per position, so decoding may run past sequence_len."""
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config, length=13)
    assert rel_err(decode(model, idx), reference_logits(model, idx)) < 1e-12


@pytest.mark.parametrize(
    "idx, targets, match",
    [
        (torch.zeros(3, dtype=torch.long), None, "idx must be"),
        (torch.zeros(2, 3), None, "idx must be"),
        (torch.zeros(2, 0, dtype=torch.long), None, "idx must be"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), "targets must"),
    ],
)
def test_bad_input_raises(idx, targets, match):
    model = lrt.LRT(tiny_config())
    with pytest.raises(ValueError, match=match):
        model(idx, targets)


def test_training_forward_computes_no_logits_beyond_its_loss():
    """With targets, the head runs once per step for the loss; the logits of the output are
    computed only when read (and only then), in the grad and autocast modes of the forward."""
    model = random_model(tiny_config(vocab_size=64))
    idx = random_tokens(model.config)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    out = model(idx, idx, schedule=lrt.Interleaved(subsets=2))
    assert len(calls) == 3  # one per step of the three passes
    logits = out.logits
    assert len(calls) == 4 and out.logits is logits  # computed once, when read
    with torch.no_grad():
        reference = model(idx, schedule=lrt.Interleaved(subsets=2)).logits
    assert torch.equal(logits, reference) and logits.requires_grad and not reference.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        read_inside = model(idx, schedule=lrt.Interleaved(subsets=2)).logits
        read_later = model(idx, schedule=lrt.Interleaved(subsets=2))
    assert torch.equal(read_later.logits, read_inside)  # read after the autocast block, computed as inside it
    assert not torch.equal(model(idx, schedule=lrt.Interleaved(subsets=2)).logits, read_inside)  # float32 differs
