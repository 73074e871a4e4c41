"""lrt.budget: the one home of matched compute (issue 20): baselines, tokens per step, parameter
conventions, and budgets given as training FLOPs or as tokens per parameter R."""

import dataclasses

import pytest

from lrt.budget import Arm, Budget, baseline_of, count_parameters, tokens_per_step
from lrt.config import LRTConfig
from lrt.flops import training_flops_per_sequence
from lrt.model import parameter_counts
from lrt.schedules import Baseline, Chunked, Interleaved
from lrt.train.config import TrainConfig

TINY = dict(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64, vocab_size=257)
T = TINY["sequence_len"]


def lrt_arm(tokens=8 * T, **overrides) -> Arm:
    return Arm(LRTConfig(**TINY, **overrides), Interleaved(subsets=2), tokens)


def test_the_baseline_of_a_config_is_the_same_backbone_without_the_pathway():
    config = LRTConfig(**TINY, projection="layerwise", source_layer=1)
    base = baseline_of(config)
    assert base.injection == "none" and parameter_counts(base).pathway == 0
    assert dataclasses.replace(base, injection=config.injection) == config
    arm = Arm(config, Interleaved(subsets=2), 512)
    assert arm.baseline.config == base and arm.baseline.schedule == Baseline() and arm.baseline.tokens_per_step == 512
    assert arm.baseline.baseline is arm.baseline and arm.baseline.flop_ratio == 1.0
    assert 2.0 < arm.flop_ratio < 2.3  # two passes plus the pathway


def test_steps_for_r_are_the_hand_computation():
    lrt = lrt_arm()
    R, tokens = 20.0, lrt.tokens_per_step
    base_params = parameter_counts(LRTConfig(**TINY, injection="none")).total
    base_per_seq = training_flops_per_sequence(LRTConfig(**TINY, injection="none"), Baseline(), T)
    lrt_per_seq = training_flops_per_sequence(LRTConfig(**TINY), Interleaved(subsets=2), T)
    budget = Budget.of(lrt, ratio=R)
    assert budget.flops == pytest.approx(R * base_params * base_per_seq / T, rel=1e-12)
    assert budget.steps(lrt.baseline) == round(R * base_params / tokens)
    assert budget.steps(lrt) == round(R * base_params * base_per_seq / (lrt_per_seq * tokens))
    assert budget.steps(lrt.baseline, round_up=True) == -(-R * base_params // tokens)
    # a budget given as FLOPs is the same budget
    assert Budget.of(lrt, flops=budget.flops).steps(lrt) == budget.steps(lrt)


def test_arms_spend_the_same_flops_within_a_step():
    lrt = lrt_arm()
    for arm in (
        lrt,
        lrt.baseline,
        Arm(LRTConfig(**TINY), Chunked(chunk=16), lrt.tokens_per_step),
        lrt_arm(projection="layerwise"),
    ):
        for budget in (Budget.of(lrt, flops=3e11), Budget.of(lrt, ratio=5.0)):
            spent = budget.steps(arm) * arm.flops_per_step
            assert abs(spent - budget.flops) <= arm.flops_per_step / 2
    budget = Budget.of(lrt, ratio=5.0)
    base_spent = budget.steps(lrt.baseline) * lrt.baseline.flops_per_step
    lrt_spent = budget.steps(lrt) * lrt.flops_per_step
    assert abs(base_spent - lrt_spent) <= lrt.flops_per_step
    assert 1.9 < budget.steps(lrt.baseline) / budget.steps(lrt) < 2.3


def test_world_size_scales_tokens_per_step():
    one = tokens_per_step(world_size=1, batch_size=4, accumulation=2, seq_len=T)
    assert one == 4 * 2 * T and tokens_per_step(world_size=8, batch_size=4, accumulation=2, seq_len=T) == 8 * one
    cfg = TrainConfig(batch_size=4, grad_accum=2)
    assert (
        cfg.tokens_per_step(world_size=1, seq_len=T) == one and cfg.tokens_per_step(world_size=2, seq_len=T) == 2 * one
    )
    fixed = TrainConfig(batch_size=4, total_batch_size=8 * 4 * T)  # accumulation follows the world size
    assert [fixed.tokens_per_step(world_size=w, seq_len=T) for w in (1, 2, 8)] == [8 * 4 * T] * 3
    with pytest.raises(ValueError, match="not a multiple of world size 3"):
        fixed.tokens_per_step(world_size=3, seq_len=T)
    # twice the processes: half the steps for the same budget
    budget = Budget.of(lrt_arm(), ratio=40.0)
    assert budget.steps(lrt_arm(tokens=2 * one)) == pytest.approx(budget.steps(lrt_arm(tokens=one)) / 2, abs=1)


def test_scaling_parameters_hand_counted():
    d, V, gate = 64, 257, LRTConfig(**TINY).gate_channels
    blocks = 2 * (4 * d * d + 2 * 4 * d * d)  # attention q, k, v, proj (n_kv_head = n_head) and the MLP
    gates = 2 * (2 * 2 * gate) + 1 * (2 * gate)  # mem_gate (2 n_kv_head) per layer, ve_gate on the last layer
    mem_kv = 2 * d * d  # LRT-shared Wk, Wv
    lm_head = V * d
    assert LRTConfig(**TINY).value_embeds == "alternating"
    assert count_parameters(LRTConfig(**TINY), "scaling") == blocks + gates + mem_kv + lm_head
    layerwise = LRTConfig(**TINY, projection="layerwise")
    assert count_parameters(layerwise, "scaling") == blocks + gates + 2 * mem_kv + lm_head
    base = baseline_of(LRTConfig(**TINY))
    assert count_parameters(base, "scaling") == blocks + 2 * gate + lm_head
    # total adds the embedding tables (wte, one value embedding) and the per-layer scalars
    scalars = 2 * 3  # resid_scale, x0_scale, mem_scale
    assert count_parameters(LRTConfig(**TINY)) == blocks + gates + mem_kv + lm_head + 2 * V * d + scalars
    assert count_parameters(LRTConfig(**TINY)) == parameter_counts(LRTConfig(**TINY)).total


def test_reach_reports_r_under_both_conventions_and_epochs():
    lrt = lrt_arm()
    budget = Budget.of(lrt, ratio=10.0, convention="scaling")
    base = lrt.baseline
    assert budget.steps(base) == round(10.0 * base.params("scaling") / base.tokens_per_step)
    reach = budget.reach(base, corpus_tokens=100_000)
    assert reach.steps == budget.steps(base) and reach.tokens == reach.steps * base.tokens_per_step
    assert reach.ratio_scaling == pytest.approx(10.0, rel=0.02) and reach.ratio_total < reach.ratio_scaling
    assert reach.ratio_total == reach.tokens / base.params("total") and reach.epochs == reach.tokens / 100_000
    assert reach.flop_ratio == 1.0 and reach.flops == reach.steps * base.flops_per_step
    lrt_reach = budget.reach(lrt)
    assert lrt_reach.epochs is None and lrt_reach.flop_ratio == lrt.flop_ratio
    assert lrt_reach.ratio_total == lrt_reach.tokens / lrt.params("total")
    # total parameters (the default) outnumber scaling ones: R=10 buys more tokens
    assert Budget.of(lrt, ratio=10.0).flops > budget.flops


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0.0), r"R \(tokens per baseline parameter\) must be a finite number > 0"),
        (dict(ratio=-1.0), r"R \(tokens per baseline parameter\) must be"),
        (dict(ratio=float("nan")), r"R \(tokens per baseline parameter\) must be"),
        (dict(flops=1e12, ratio=10.0), "one of them"),
        (dict(), "one of them"),
        (dict(flops=0.0), r"budget \(training FLOPs\) must be a finite number > 0"),
        (dict(ratio=10.0, convention="chinchilla"), "convention must be one of total, scaling"),
    ],
)
def test_bad_budgets_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Budget.of(lrt_arm(), **kwargs)


def test_bad_arms_and_conventions_are_value_errors():
    with pytest.raises(ValueError, match="tokens_per_step must be a positive integer"):
        lrt_arm(tokens=0)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        tokens_per_step(world_size=0, batch_size=1, accumulation=1, seq_len=T)
    with pytest.raises(ValueError, match="convention must be one of"):
        lrt_arm().params("active")
    with pytest.raises(ValueError, match="corpus_tokens must be a positive integer"):
        Budget.of(lrt_arm(), ratio=1.0).reach(lrt_arm(), corpus_tokens=0)
