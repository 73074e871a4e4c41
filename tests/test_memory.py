"""One vocabulary for which memory the model had: `lrt.read` under each mode equals the
computation that defines it, and memories serialise to spec strings."""

import pytest
import torch

import lrt
from helpers import random_model, random_tokens, rel_err, tiny_config
from lrt.decoding import decode


@pytest.fixture
def model():
    return random_model(tiny_config(), torch.float64)


def test_each_memory_reads_as_its_definition(model):
    idx = random_tokens(model.config)
    with torch.no_grad():
        zero = lrt.read(model, idx, "zero")
        exact = lrt.read(model, idx, "exact")
        parallel = lrt.read(model, idx, "parallel:interleaved:2")
        fixed = lrt.read(model, idx, lrt.Memory("fixed-point", tol=0.0))
        assert rel_err(zero.logits, model(idx)) == 0
        assert rel_err(exact.logits, decode(model, idx)) < 1e-12
        assert rel_err(parallel.logits, model(idx, schedule=lrt.Interleaved(subsets=2)).logits) == 0
        assert rel_err(fixed.logits, exact.logits) < 1e-12
    assert (zero.forwards, exact.forwards, parallel.forwards) == (1, 8, 3) and fixed.forwards <= 8
    # the buffer holds every position's keys, values and source states, as the last pass left them
    assert exact.buffer.source.shape == (2, 8, model.config.n_embd) and exact.buffer.inplace


def test_reading_with_autograd_writes_out_of_place_and_gives_the_sequential_gradients(model):
    idx, targets = random_tokens(model.config, seed=1), random_tokens(model.config, seed=2)
    reading = lrt.read(model, idx, "exact")
    assert not reading.buffer.inplace
    loss = torch.nn.functional.cross_entropy(reading.logits.flatten(0, 1), targets.flatten())
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    reference = torch.autograd.grad(
        model(idx, targets, schedule=lrt.Sequential()).loss, list(model.parameters()), allow_unused=True
    )
    for g, r in zip(grads, reference):
        assert (g is None) == (r is None) and (g is None or torch.allclose(g, r, rtol=0, atol=1e-12))


def test_fixed_point_stops_at_its_pass_cap(model):
    idx = random_tokens(model.config)
    with torch.no_grad():
        assert lrt.read(model, idx, lrt.Memory("fixed-point", tol=0.0, max_passes=3)).forwards == 3


@pytest.mark.parametrize(
    "spec, memory",
    [
        ("zero", lrt.Memory("zero")),
        ("exact", lrt.Memory("exact")),
        ("fixed-point", lrt.Memory("fixed-point")),
        ("fixed-point:1e-06", lrt.Memory("fixed-point", tol=1e-6)),
        ("parallel:multirefine:3", lrt.Memory("parallel", lrt.MultiRefine(passes=3))),
    ],
)
def test_memories_serialise_to_spec_strings_and_back(spec, memory):
    assert lrt.Memory.parse(spec) == memory and memory.spec == spec


def test_bare_parallel_takes_the_given_schedule():
    assert lrt.Memory.parse("parallel", schedule="interleaved:2").spec == "parallel:interleaved:2"
    assert lrt.Memory.parse("parallel:chunked:8", schedule="interleaved:2").schedule == lrt.Chunked(chunk=8)
    assert "interleaved:4" in lrt.Memory("parallel", "interleaved:4").describe()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: lrt.Memory.parse("decode"), "memory must be one of zero, exact, parallel"),
        (lambda: lrt.Memory.parse("parallel"), "'parallel' needs a schedule"),
        (lambda: lrt.Memory("exact", lrt.Interleaved()), "only it takes one"),
        (lambda: lrt.Memory.parse("exact:3"), "takes no argument"),
        (lambda: lrt.Memory.parse("fixed-point:-1"), "tolerance must be >= 0"),
        (lambda: lrt.Memory("fixed-point", max_passes=0), "max_passes"),
    ],
)
def test_bad_memories(make, match):
    with pytest.raises(ValueError, match=match):
        make()
