"""One settings style (issue 20): the demo's, the recipe's and the study's settings are dataclasses;
their flags are derived from fields with help, presets are named instances, and a key a spec
table does not know is an error that names it."""

import dataclasses

import pytest

from lrt.cli import build_parser, main
from lrt.cli.experiments import given_settings
from lrt.experiments.demo import QUICK, DemoSettings
from lrt.experiments.recipe import SMOKE, RecipeSettings, plan
from lrt.experiments.study_spec import StudySettings, load_spec


def test_presets_are_named_instances_and_flags_override_them():
    assert isinstance(QUICK, DemoSettings) and isinstance(SMOKE, RecipeSettings) and SMOKE.smoke
    args = build_parser().parse_args(["demo", "--quick", "--steps", "3"])
    assert given_settings(args, QUICK) == dataclasses.replace(QUICK, steps=3)
    args = build_parser().parse_args(["recipe", "paper-d20", "--smoke", "--ratio", "0.5", "--out", "x"])
    assert given_settings(args, SMOKE) == dataclasses.replace(SMOKE, ratio=0.5, out="x")
    args = build_parser().parse_args(["recipe", "paper-d20"])
    assert given_settings(args, RecipeSettings()) == RecipeSettings()


@pytest.mark.parametrize(
    "args, match",
    [
        (["demo", "--steps", "0"], "steps must be a positive integer"),
        (["recipe", "paper-d20", "--ratio", "-1"], "ratio must be a finite number > 0"),
        (["recipe", "paper-d20", "--nproc", "0"], "nproc must be a positive integer"),
        (["recipe", "paper-d20", "--convention", "x"], "invalid choice"),
    ],
)
def test_bad_settings_are_one_line_errors(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_the_recipe_counts_r_under_the_convention_asked():
    total, scaling = plan(SMOKE, 512), plan(dataclasses.replace(SMOKE, convention="scaling"), 512)
    assert total["baseline_params"] > scaling["baseline_params"]  # embedding tables and scalars
    assert total["steps"]["baseline"] > scaling["steps"]["baseline"]
    assert total["reach"]["baseline"]["ratio_total"] >= SMOKE.ratio  # at least R: whole steps rounded up


SPEC = """
[study]
budgets = [1e9]
{study}
[train]
preset = "tiny"
seq_len = 32
batch_size = 2
{train}
"""


@pytest.mark.parametrize(
    "study, train, match",
    [
        ("seed = [0, 1, 2]", "", "unknown key(s) study.seed"),
        ("", "batch_sise = 4", "unknown key(s) train.batch_sise"),
        ("", "[train.optim]\nwarmup = 3", "unknown key(s) train.optim.warmup"),
        ("", '[reference]\nshedule = "chunked:8"', "unknown key(s) reference.shedule"),
        ("", '[ablations]\ninjektion = ["kv"]', "unknown key(s) ablations.injektion"),
        ('convention = "chinchilla"', "", "study.convention must be one of total, scaling"),
    ],
)
def test_unknown_spec_keys_are_errors_that_name_them(tmp_path, study, train, match):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(study=study, train=train))
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        load_spec(path, tmp_path / "out")


def test_a_study_table_is_study_settings(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(study='seeds = [3]\nname = "mine"', train=""))
    spec = load_spec(path, tmp_path / "out")
    assert spec.name == "mine" and spec.seeds == [3] and [b.flops for b in spec.budgets] == [1e9]
    assert StudySettings(budgets=[1e9]).seeds == [0]
    # R on the scaling parameters buys fewer tokens than on all of them
    steps = {}
    for convention in ("total", "scaling"):
        path.write_text(
            SPEC.format(study="", train="").replace("budgets = [1e9]", f'ratios = [4]\nconvention = "{convention}"')
        )
        spec = load_spec(path, tmp_path / "out")
        steps[convention] = spec.budgets[0].steps(spec.arms["baseline"])
    assert steps["total"] > steps["scaling"]


def test_the_recipes_micro_batch_fits_d20_lrt_on_an_80_gb_gpu():
    """Issue 22, bug 5: measured on an H200 at d20, bf16, batch 8 x 2048 (docs/performance.md),
    LRT's forward+backward peaks at 53.8 GiB above the 8.6 GiB of weights and optimizer state, and
    the peak grows with the micro-batch; an 80 GB H100 offers 74.5 GiB. The recipe's default was 16."""
    per_row, held, usable = 53.8 / 8, 8.6, 74.5
    assert RecipeSettings().batch_size * per_row + held <= usable < 16 * per_row + held
