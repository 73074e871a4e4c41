import pytest
import torch
import torch.nn.functional as F

import lrt
from helpers import pathway_variants, random_model, random_tokens, rel_err, tiny_config, variant_id
from lrt.decoding import decode

T = 8


@pytest.mark.parametrize("variant", pathway_variants(), ids=variant_id)
def test_interleaved_with_S_equal_T_is_the_exact_recurrence(variant):
    """Identity 2, float32."""
    model = random_model(tiny_config(**variant))
    idx = random_tokens(model.config)
    out = model(idx, idx, schedule=lrt.Interleaved(subsets=T))
    assert len(out.per_pass_losses) == T + 1
    assert rel_err(out.logits, decode(model, idx)) <= 1e-5


@pytest.mark.parametrize("variant", pathway_variants()[::3], ids=variant_id)
def test_multirefine_with_T_minus_1_passes_is_the_exact_recurrence(variant):
    """Identity 3."""
    model = random_model(tiny_config(**variant))
    idx = random_tokens(model.config)
    out = model(idx, schedule=lrt.MultiRefine(passes=T - 1))
    assert out.loss is None and len(out.pass_logits) == T
    assert rel_err(out.logits, decode(model, idx)) <= 1e-5


@pytest.mark.parametrize("K", [1, 2, 4])
def test_multirefine_makes_one_more_position_exact_per_pass(K):
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config)
    logits = model(idx, schedule=lrt.MultiRefine(passes=K)).logits
    exact = decode(model, idx)
    assert rel_err(logits[:, : K + 1], exact[:, : K + 1]) < 1e-12
    assert rel_err(logits[:, K + 1 :], exact[:, K + 1 :]) > 1e-6


@pytest.mark.parametrize("S", [1, 2, 3, 5])
def test_position_zero_of_the_last_refinement_is_exact(S):
    """Identity 4 of LRT_SPEC: position 0 never has memory, any S."""
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config)
    out = model(idx, schedule=lrt.Interleaved(subsets=S))
    assert len(out.pass_logits) == S + 1
    assert rel_err(out.logits[:, 0], decode(model, idx)[:, 0]) < 1e-12


@pytest.mark.parametrize("variant", pathway_variants()[::2], ids=variant_id)
def test_interleaved_subset_gradients_equal_backprop_through_time(variant):
    """Identity 4 of the issue, float64: the S = T subset passes, with gradients flowing through
    the buffer, give exactly the gradients of the sequential recurrence."""
    model = random_model(tiny_config(**variant), torch.float64)
    idx, targets = random_tokens(model.config, seed=1), random_tokens(model.config, seed=2)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out = model(idx, targets, schedule=lrt.Interleaved(subsets=T), return_logits=False)
    g_interleaved = grads(torch.stack(out.per_pass_losses[1:]).mean())
    g_sequential = grads(model(idx, targets, schedule=lrt.Sequential()).loss)
    assert g_interleaved.keys() == g_sequential.keys()
    for name, g in g_sequential.items():
        torch.testing.assert_close(g_interleaved[name], g, rtol=0, atol=1e-9, msg=name)
    if variant["injection"] != "none":
        assert any(g_sequential[n].abs().max() > 1e-6 for n in g_sequential if "mem_" in n)


def test_weights_select_the_subset_passes():
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config)
    out = model(idx, idx, schedule=lrt.Interleaved(subsets=2, weights=(0, 1, 1)))
    torch.testing.assert_close(out.loss, (out.per_pass_losses[1] + out.per_pass_losses[2]) / 2)
    plain = model(idx, idx, schedule=lrt.Interleaved(subsets=2))
    torch.testing.assert_close(plain.loss, torch.stack(plain.per_pass_losses).mean())


def test_sequential_loss_is_the_mean_token_loss_of_decoding():
    model = random_model(tiny_config(), torch.float64)
    idx, targets = random_tokens(model.config, seed=1), random_tokens(model.config, seed=2)
    out = model(idx, targets, schedule=lrt.Sequential())
    decoded = decode(model, idx)
    expected = F.cross_entropy(decoded.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-12)
    assert len(out.per_pass_losses) == 1


def test_chunked_limits():
    model = random_model(tiny_config())
    idx = random_tokens(model.config)
    assert rel_err(model(idx, schedule=lrt.Chunked(chunk=1)).logits, decode(model, idx)) <= 1e-5
    assert rel_err(model(idx, schedule=lrt.Chunked(chunk=T)).logits, model(idx)) <= 1e-5


def test_chunked_feeds_memory_only_across_boundaries():
    """Chunk C: the first position of each chunk gets the previous chunk's last source state."""
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config)
    chunked = model(idx, schedule=lrt.Chunked(chunk=4)).logits
    zero = model(idx)
    torch.testing.assert_close(chunked[:, :4], zero[:, :4], rtol=0, atol=1e-12)
    assert rel_err(chunked[:, 4], zero[:, 4]) > 1e-6


def test_baseline_schedule_is_the_zero_memory_forward():
    model = random_model(tiny_config())
    idx = random_tokens(model.config)
    out = model(idx, idx)
    torch.testing.assert_close(out.logits, model(idx), rtol=0, atol=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()))


def test_interleaved_handles_lengths_not_divisible_by_S():
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config, length=7)
    out = model(idx, idx, schedule=lrt.Interleaved(subsets=3))
    assert out.logits.shape == (2, 7, model.config.vocab_size)
    assert rel_err(model(idx, schedule=lrt.Interleaved(subsets=7)).logits, decode(model, idx)) < 1e-12


def test_ignored_targets_do_not_count():
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config)
    targets = idx.clone()
    targets[:, 5:] = -1
    out = model(idx, targets, schedule=lrt.Interleaved(subsets=2))
    merged_ce = F.cross_entropy(out.pass_logits[0][1][:, :5].flatten(0, 1), idx[:, :5].flatten())
    torch.testing.assert_close(out.per_pass_losses[0], merged_ce)


def test_return_logits_false_keeps_the_loss():
    model = random_model(tiny_config(), torch.float64)
    idx = random_tokens(model.config)
    a = model(idx, idx, schedule=lrt.Interleaved())
    b = model(idx, idx, schedule=lrt.Interleaved(), return_logits=False)
    assert b.logits is None and b.pass_logits == []
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


def test_a_custom_schedule_from_steps():
    """Schedules are data: 'interleaved without the init pass, evens then odds' is a few lines."""

    class EvensThenOdds(lrt.Schedule):
        def plan(self, T):
            return [[lrt.Step(range(0, T, 2), "zero")], [lrt.Step(range(1, T, 2))]]

    with pytest.raises(ValueError, match="attends to positions nothing has computed"):
        model = random_model(tiny_config())
        model(random_tokens(model.config), schedule=EvensThenOdds())

    class ChunkPairs(lrt.Schedule):
        def plan(self, T):
            return [[lrt.Step(range(t, min(t + 2, T)), "boundary") for t in range(0, T, 2)]]

    model = random_model(tiny_config())
    idx = random_tokens(model.config)
    assert rel_err(model(idx, schedule=ChunkPairs()).logits, model(idx, schedule=lrt.Chunked(chunk=2)).logits) == 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: lrt.Interleaved(subsets=0), "subsets must be an integer >= 1"),
        (lambda: lrt.Interleaved(subsets=2.0), "subsets must be an integer"),
        (lambda: lrt.MultiRefine(passes=0), "passes must be an integer >= 1"),
        (lambda: lrt.Chunked(chunk=-1), "chunk must be an integer >= 1"),
        (lambda: lrt.Interleaved(weights=(1, -1, 1)), "weights must be non-negative"),
        (lambda: lrt.Step(range(3), "sometimes"), "Step.memory must be one of"),
    ],
)
def test_bad_schedules_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_checks_against_the_sequence():
    model = random_model(tiny_config())
    idx = random_tokens(model.config)
    with pytest.raises(ValueError, match=r"subsets must be in 1\.\.8"):
        model(idx, schedule=lrt.Interleaved(subsets=9))
    with pytest.raises(ValueError, match="one weight per pass"):
        model(idx, idx, schedule=lrt.Interleaved(subsets=2, weights=(1, 1)))


@pytest.mark.parametrize(
    "schedule, spec",
    [
        (lrt.Baseline(), "baseline"),
        (lrt.Interleaved(subsets=4), "interleaved:4"),
        (lrt.MultiRefine(passes=3), "multirefine:3"),
        (lrt.Chunked(chunk=64), "chunked:64"),
        (lrt.Sequential(), "sequential"),
    ],
)
def test_schedules_serialise_to_spec_strings_and_back(schedule, spec):
    assert schedule.spec == spec and lrt.parse_schedule(spec) == schedule


def test_a_spec_without_its_parameter_takes_the_default():
    assert lrt.parse_schedule("interleaved") == lrt.Interleaved(subsets=2)
    assert lrt.parse_schedule(" chunked ").spec == "chunked:64"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("gauss-seidel", "schedule must be one of baseline, interleaved"),
        ("interleaved:two", "subsets must be an integer, got 'two'"),
        ("interleaved:0", "subsets must be an integer >= 1"),
        ("baseline:2", "takes no parameter"),
        ("chunked:8:8", "takes one parameter"),
    ],
)
def test_bad_schedule_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        lrt.parse_schedule(spec)


def test_only_built_in_unweighted_schedules_have_a_spec():
    class Custom(lrt.Schedule):
        def plan(self, T):
            return [[lrt.Step(range(T), "zero")]]

    with pytest.raises(ValueError, match="custom schedule"):
        Custom().spec
    with pytest.raises(ValueError, match="pass weights"):
        lrt.Interleaved(weights=(1, 1, 1)).spec


BOS = 7


def rows_with_documents(config, batch=3):
    """Rows of packed documents: <|bos|> at the start and inside, as the loader packs them."""
    idx = random_tokens(config, batch=batch)
    idx[idx == BOS] = BOS + 1
    idx[:, 0] = BOS
    idx[0, 3], idx[1, 5], idx[2, 1] = BOS, BOS, BOS
    return idx


@pytest.mark.parametrize("variant", pathway_variants()[::2], ids=variant_id)
def test_memory_reset_at_bos_keeps_the_identities(variant):
    """LRT_SPEC section 7: with reset_memory_at_bos, a <|bos|> position gets m = 0 in every
    schedule and in decoding; interleaved S = T still equals decoding, which equals the naive
    reference (which resets its memory there), and a batch decodes as each row alone."""
    from reference import reference_logits

    model = random_model(tiny_config(**variant, reset_memory_at_bos=True, bos_id=BOS), torch.float64)
    idx = rows_with_documents(model.config)
    decoded = decode(model, idx)
    assert rel_err(model(idx, schedule=lrt.Interleaved(subsets=T)).logits, decoded) < 1e-12
    assert rel_err(model(idx, schedule=lrt.MultiRefine(passes=T - 1)).logits, decoded) < 1e-12
    assert rel_err(model(idx, schedule=lrt.Chunked(chunk=1)).logits, decoded) < 1e-12
    assert rel_err(decoded, reference_logits(model, idx)) < 1e-12
    for b in range(idx.size(0)):
        assert rel_err(decoded[b : b + 1], decode(model, idx[b : b + 1])) < 1e-12


def test_memory_reset_changes_only_what_follows_a_document_boundary():
    config = tiny_config(reset_memory_at_bos=True, bos_id=BOS)
    model = random_model(config, torch.float64)
    plain = random_model(tiny_config(bos_id=BOS), torch.float64)
    plain.load_state_dict(model.state_dict())
    idx = rows_with_documents(config)
    with_reset, without = decode(model, idx), decode(plain, idx)
    assert rel_err(with_reset[0, :3], without[0, :3]) == 0  # before the first inner <|bos|>: the same
    assert rel_err(with_reset[0, 3:], without[0, 3:]) > 1e-6  # from it on, memory no longer crosses


def test_memory_reset_needs_the_bos_id():
    with pytest.raises(ValueError, match="bos_id must be the <|bos|> token id"):
        tiny_config(reset_memory_at_bos=True)
