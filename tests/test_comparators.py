"""The paper's comparators: a looped transformer and PonderLM-2, against the naive float64
reference, their own identities (a loop of one is the baseline; Jacobi converges to the exact
recurrence), decoding, FLOPs and bad configurations."""

import dataclasses
import json

import pytest
import torch

import lrt
from helpers import random_model, random_tokens, rel_err, tiny_config, tiny_train_args
from lrt.cli import main
from lrt.decoding import decode, generate
from lrt.flops import head_params, keys_attended, stack_params, training_flops_per_sequence
from lrt.schedules import Baseline, Interleaved, Jacobi, Sequential, check_schedule_for
from reference import reference_logits


def looped(loops, **overrides):
    return tiny_config(injection="none", loops=loops, **overrides)


def pondering(thoughts=1, **overrides):
    return tiny_config(injection="none", latent_thoughts=thoughts, **overrides)


# the looped transformer ----------------------------------------------------------------------------


@pytest.mark.parametrize("loops", [1, 2, 3])
def test_looped_forward_and_decoding_match_the_naive_reference(loops):
    model = random_model(looped(loops), torch.float64)
    idx = random_tokens(model.config)
    expected = reference_logits(model, idx)
    with torch.no_grad():
        assert rel_err(model(idx), expected) < 1e-10
        assert rel_err(decode(model, idx), expected) < 1e-10  # one KV cache per loop


def test_one_loop_is_the_baseline_exactly():
    base = random_model(tiny_config(injection="none"), torch.float64)
    one = lrt.LRT(looped(1)).double()
    one.load_state_dict(base.state_dict())
    idx = random_tokens(base.config)
    assert torch.equal(one(idx), base(idx))


def test_loops_share_one_set_of_weights_and_apply_it_again():
    base, twice = tiny_config(injection="none"), looped(2)
    assert lrt.parameter_counts(twice) == lrt.parameter_counts(base)
    model = random_model(twice, torch.float64)
    idx = random_tokens(twice)
    with torch.no_grad():
        once = lrt.LRT(base).double()
        once.load_state_dict(model.state_dict())
        assert rel_err(model(idx), once(idx)) > 1e-3  # the second pass through the stack changes the function


def test_looped_flops_count_the_stack_once_per_loop():
    base, three = tiny_config(injection="none"), looped(3)
    T = base.sequence_len
    b, t = training_flops_per_sequence(base, Baseline(), T), training_flops_per_sequence(three, Baseline(), T)
    attention = 12 * base.n_head * base.head_dim * sum(keys_attended(base, s) for s in range(T))
    assert t - b == pytest.approx(2 * (6 * stack_params(base) * T + attention))


# PonderLM-2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("thoughts", [1, 2])
def test_ponder_exact_reading_and_decoding_match_the_naive_reference(thoughts):
    model = random_model(pondering(thoughts), torch.float64)
    idx = random_tokens(model.config)
    expected = reference_logits(model, idx)
    with torch.no_grad():
        assert rel_err(lrt.read(model, idx, "exact").logits, expected) < 1e-10
        assert rel_err(decode(model, idx), expected) < 1e-10


@pytest.mark.parametrize("thoughts", [1, 2])
def test_jacobi_makes_one_more_thought_exact_per_pass_and_reaches_the_exact_recurrence(thoughts):
    model = random_model(pondering(thoughts), torch.float64)
    idx = random_tokens(model.config)
    T, K = idx.size(1), thoughts
    with torch.no_grad():
        exact = lrt.read(model, idx, "exact").logits
        for n in range(1, K * (T - 1)):
            jacobi = lrt.read(model, idx, lrt.Memory("parallel", Jacobi(n))).logits
            # each pass makes one more thought exact: after K + n, those of the first (K + n) // K tokens
            done = (K + n) // K
            assert rel_err(jacobi[:, :done], exact[:, :done]) < 1e-10
            assert rel_err(jacobi[:, done:], exact[:, done:]) > 1e-6  # and the later ones not yet
        assert rel_err(lrt.read(model, idx, lrt.Memory("parallel", Jacobi(K * (T - 1)))).logits, exact) < 1e-10
        fixed = lrt.read(model, idx, "fixed-point:0")
        assert rel_err(fixed.logits, exact) < 1e-10 and fixed.forwards <= K * T + 1
        # a pass cap stops the fixed point where Jacobi with as many passes stops
        capped = lrt.read(model, idx, lrt.Memory("fixed-point", tol=0.0, max_passes=K + 2))
        assert capped.forwards == K + 2
        assert torch.equal(capped.logits, lrt.read(model, idx, lrt.Memory("parallel", Jacobi(1))).logits)


def test_jacobi_training_gradients_reach_the_exact_recurrences_at_convergence():
    model = random_model(pondering(), torch.float64, std=0.2)
    idx = random_tokens(model.config)
    targets = random_tokens(model.config, seed=2)
    grads = []
    for schedule in (Jacobi(model.config.sequence_len - 1), Sequential()):
        model.zero_grad()
        model(idx, targets, schedule=schedule).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel_err(grads[0], grads[1]) < 1e-9
    model.zero_grad()
    model(idx, targets, schedule=Jacobi(1)).loss.backward()  # the cheap forward trains every weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_ponder_model_call_is_its_jacobi_forward():
    model = random_model(pondering(), torch.float64)
    idx = random_tokens(model.config)
    with torch.no_grad():
        expected = lrt.read(model, idx, lrt.Memory("parallel", Jacobi())).logits
        assert torch.equal(model(idx), expected)


def test_ponder_flops_count_every_slot_of_every_pass():
    config = pondering()
    model = lrt.LRT(config)
    idx = random_tokens(config)
    T = idx.size(1)
    slots = []
    forward_positions = model.forward_positions
    model.forward_positions = lambda idx, pos, *a, **kw: (
        slots.append(pos.numel()) or forward_positions(idx, pos, *a, **kw)
    )
    model(idx, idx, schedule=Jacobi(3))
    assert slots == [T] + [2 * T] * 4  # the tokens alone, three Jacobi passes, the predicting pass
    attention = (
        12 * config.n_head * config.head_dim * sum(sum(keys_attended(config, s) for s in range(n)) for n in slots)
    )
    expected = 6 * stack_params(config) * sum(slots) + 6 * head_params(config) * T + attention
    assert training_flops_per_sequence(config, Jacobi(3), T) == pytest.approx(expected)


def test_ponder_decoding_state_holds_each_token_and_its_thought():
    model = random_model(pondering())
    prompts = [[1, 2, 3], [4, 5]]
    out = generate(model, prompts, 4, temperature=0)
    state = lrt.decoding.prefill(model, prompts, 8).state
    assert state.memory is None and state.pos.tolist() == [6, 4] and state.cache.length == 16
    # greedy continuation equals re-reading the whole text exactly, token by token
    for prompt, tokens in zip(prompts, out.tokens):
        text = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logits = lrt.read(model, text, "exact").logits[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == tokens


# the arms and their errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(loops=2), "injection must be 'none' for a comparator"),
        (dict(latent_thoughts=1), "injection must be 'none' for a comparator"),
        (dict(injection="none", loops=2, latent_thoughts=1), "latent_thoughts must be 0 in a looped"),
        (dict(injection="none", loops=0), "loops must be a positive integer"),
        (dict(injection="none", latent_thoughts=-1), "latent_thoughts must be an integer >= 0"),
    ],
)
def test_bad_comparator_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "config, schedule, match",
    [
        (pondering(), Interleaved(2), "PonderLM-2 model .* trains with jacobi"),
        (pondering(), Baseline(), "PonderLM-2 model .* trains with jacobi"),
        (looped(2), Jacobi(), "jacobi is PonderLM-2's"),
        (looped(2), Interleaved(2), "needs a recurrent pathway"),
    ],
)
def test_schedules_a_comparator_cannot_train_with_raise(config, schedule, match):
    with pytest.raises(ValueError, match=match):
        check_schedule_for(config, schedule)


def test_ponder_has_no_zero_memory():
    model = lrt.LRT(pondering())
    with pytest.raises(ValueError, match="no zero memory"):
        lrt.read(model, random_tokens(model.config), "zero")
    assert [m.mode for m in lrt.memory.readable(model.config, ["zero", "exact"])] == ["exact"]
    assert [m.mode for m in lrt.memory.readable(looped(2), ["zero", "exact"])] == ["zero"]


def test_the_baseline_of_a_comparator_is_the_plain_transformer():
    for config in (looped(3), pondering()):
        base = lrt.budget.baseline_of(config)
        assert base.loops == 1 and base.latent_thoughts == 0 and base.injection == "none"
        assert base == dataclasses.replace(config, loops=1, latent_thoughts=0)


def test_jacobi_spec_round_trips():
    assert lrt.parse_schedule("jacobi").spec == "jacobi:3"
    assert lrt.parse_schedule("jacobi:5") == Jacobi(5)
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        lrt.parse_schedule("jacobi:0")


# from the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, described, memories, forwards",
    [
        (["--schedule", "jacobi:2"], "PonderLM-2, 1 latent thought per token", {"exact", "parallel"}, 12),
        # no memory pathway: the prompt is read in one pass whatever the memory
        (["--schedule", "baseline", "--set", "loops=2"], "looped transformer, 2 loops", {"zero"}, 1),
    ],
)
def test_comparators_train_evaluate_and_generate_from_the_command_line(
    tmp_path, capsys, flags, described, memories, forwards
):
    out = tmp_path / "run"
    assert main([*tiny_train_args(out, steps=2), *flags]) == 0
    capsys.readouterr()
    scores = tmp_path / "bpb.json"
    assert (
        main(["eval", "bpb", str(out), "--tokens", "128", "--memory", "zero,exact,parallel", "--json", str(scores)])
        == 0
    )
    assert described in capsys.readouterr().out
    result = json.loads(scores.read_text())
    assert {m for m in ("zero", "exact", "parallel") if result[m] is not None} == memories
    assert main(["generate", str(out), "--prompt", "To be", "--max-tokens", "4", "--temperature", "0"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("To be") and f" {forwards} forward calls" in printed.err  # <|bos|>To be: 6 tokens


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--set", "loops=2"], "injection must be 'none' for a comparator"),
        (["--schedule", "jacobi", "--set", "injection=kv"], "injection must be 'none' for a comparator"),
        (
            ["--schedule", "interleaved:2", "--set", "latent_thoughts=1", "--set", "injection=none"],
            "trains with jacobi",
        ),
    ],
)
def test_a_comparator_with_the_wrong_schedule_is_one_line(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    assert main([*tiny_train_args(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (out / "checkpoints").exists()
