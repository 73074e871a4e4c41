import pytest
import torch

import lrt
from helpers import random_model, rel_err, tiny_config
from lrt import Memory
from lrt.decoding import decode, generate, new_state, prefill, sample, step

PROMPTS = [[5, 9, 2, 33, 7, 1], [40, 3], [8, 8, 8, 12, 60]]


def _argmax_by_stepping(model, prompt, n):
    state = new_state(model, 1, len(prompt) + n)
    for tok in prompt:
        logits = step(model, torch.tensor([tok]), state)
    out = []
    for _ in range(n):
        tok = logits.argmax(-1)
        out.append(tok.item())
        logits = step(model, tok, state)
    return out


def test_greedy_generation_is_argmax_stepping_and_deterministic():
    model = random_model(tiny_config(sequence_len=16))
    first = generate(model, PROMPTS, 5, temperature=0)
    assert first.tokens == generate(model, PROMPTS, 5, temperature=0, seed=123).tokens
    for prompt, tokens in zip(PROMPTS, first.tokens):
        assert tokens == _argmax_by_stepping(model, prompt, 5)
    assert first.stopped == ["max_tokens"] * 3


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fixed_point_prefill_run_to_prompt_length_is_exact(dtype, tol):
    model = random_model(tiny_config(), dtype)
    exact = prefill(model, PROMPTS, 8, memory="exact")
    fixed = prefill(model, PROMPTS, 8, memory="fixed-point:0")
    assert fixed.forwards <= max(map(len, PROMPTS))
    assert rel_err(fixed.logits, exact.logits) < tol and rel_err(fixed.state.memory, exact.state.memory) < tol
    for layer in range(model.config.n_layer):
        assert rel_err(fixed.state.cache.k[layer], exact.state.cache.k[layer]) < tol


def test_fixed_point_prefill_converges_within_tolerance():
    model = random_model(tiny_config(), torch.float64, std=0.15)
    exact = prefill(model, PROMPTS, 8, memory="exact")
    for tol in (1e-2, 1e-4, 1e-8):
        fixed = prefill(model, PROMPTS, 8, memory=Memory("fixed-point", tol=tol))
        assert (fixed.state.memory - exact.state.memory).abs().max() <= 10 * tol
        assert (fixed.logits - exact.logits).abs().max() <= 100 * tol


def test_parallel_prefill_with_an_exact_schedule_is_exact_and_the_training_one_is_not():
    model = random_model(tiny_config(), torch.float64)
    exact = prefill(model, PROMPTS, 8, memory="exact")
    same = prefill(model, PROMPTS, 8, memory=Memory("parallel", lrt.Interleaved(subsets=6)))
    assert rel_err(same.logits, exact.logits) < 1e-12 and same.forwards == 7
    approx = prefill(model, PROMPTS, 8, memory="parallel:interleaved:2")
    assert rel_err(approx.logits, exact.logits) > 1e-6


def test_prefill_state_continues_like_stepping_each_prompt_alone():
    model = random_model(tiny_config(sequence_len=16), torch.float64)
    pre = prefill(model, PROMPTS, 12, memory="exact")
    assert pre.state.pos.tolist() == [6, 2, 5] and pre.state.length == 6
    tokens = torch.tensor([3, 4, 5])
    batched = step(model, tokens, pre.state)
    for b, prompt in enumerate(PROMPTS):
        alone = decode(model, torch.tensor([prompt + [tokens[b].item()]]))[0, -1]
        assert rel_err(batched[b], alone) < 1e-12


def test_sampling_controls():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    greedy = logits.argmax(-1)
    assert sample(logits, 1.0, top_k=1).equal(greedy)
    assert sample(logits, 1.0, top_p=1e-6).equal(greedy)
    a = sample(logits, 1.0, generator=torch.Generator().manual_seed(1))
    assert a.equal(sample(logits, 1.0, generator=torch.Generator().manual_seed(1)))
    draws = torch.stack([sample(logits, 1.0, top_k=3, generator=g) for _ in range(200)])
    allowed = logits.topk(3, dim=-1).indices
    assert all(set(draws[:, b].tolist()) <= set(allowed[b].tolist()) for b in range(4))
    nucleus = torch.tensor([[3.0, 2.9, -5.0, -5.0]])
    assert set(torch.stack([sample(nucleus, 1.0, top_p=0.9, generator=g) for _ in range(100)]).flatten().tolist()) == {
        0,
        1,
    }


def test_stop_token_and_window():
    model = random_model(tiny_config(sequence_len=10), seed=1)  # a seed whose greedy text has a second distinct token
    greedy = generate(model, [PROMPTS[0]], 4, temperature=0).tokens[0]
    first_new = next(i for i in range(1, 4) if greedy[i] not in greedy[:i])  # a token not generated before it
    stopped = generate(model, [PROMPTS[0]], 4, temperature=0, stop_token=greedy[first_new])
    assert stopped.tokens[0] == greedy[:first_new] and stopped.stopped == ["stop"]
    long = generate(model, [PROMPTS[0]], 50, temperature=0)
    assert len(long.tokens[0]) == 10 - 6 and long.stopped == ["window"]


@pytest.mark.parametrize(
    "prompts, kw, match",
    [
        ([[]], {}, "the prompt is empty"),
        ([list(range(9))], {}, "longer than the model's window of 8"),
        ([[1]], dict(temperature=-1), "temperature"),
        ([[1]], dict(top_p=0), "top_p"),
        ([[1]], dict(memory="jacobi"), "memory must be one of"),
        ([[1]], dict(memory="parallel"), "'parallel' needs a schedule"),
        ([[1]], dict(memory="fixed-point:x"), "the tolerance must be a number"),
    ],
)
def test_generation_errors(prompts, kw, match):
    model = random_model(tiny_config())
    with pytest.raises(ValueError, match=match):
        generate(model, prompts, 2, **kw)
