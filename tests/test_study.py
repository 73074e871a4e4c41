"""`lrt study run`: a spec becomes trunks and cooldown branches at matched training FLOPs; a branch
is the run a separate warmdown training would be; one seed pairs the arms (same backbone at step
0, same batches); a killed study resumes without redoing work (issue 21)."""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import tiny_train_args
from lrt.cli import main
from lrt.data.sources import TextSource
from lrt.experiments.study import choose_lr, done
from lrt.experiments.study_spec import branch_point, load_spec
from lrt.train import checkpoint
from lrt.train.config import TrainConfig
from lrt.train.optim import OptimConfig
from lrt.train.trainer import Trainer

TINY = """
[study]
name = "tiny"
seeds = [0, 1]
budgets = [1e9, 2e9]
eval_tokens = 256
eval_batch_size = 8

[train]
preset = "tiny"
seq_len = 32
batch_size = 2
eval_tokens = 256

[train.optim]
warmup_steps = 1

[reference]
schedule = "interleaved:2"
{extra}
"""


def spec_file(tmp_path, extra='[ablations]\ninjection = ["kv"]'):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(extra=extra))
    return path


def test_a_spec_is_trunks_and_cooldown_branches(tmp_path):
    spec = load_spec(spec_file(tmp_path), tmp_path / "out")
    assert [c.name for c in spec.cells] == ["baseline", "lrt", "injection=kv"]
    main_jobs = [j for j in spec.jobs if j.info["stage"] == "main"]
    for cell in spec.cells:
        steps = [b.steps(spec.arms[cell.name]) for b in spec.budgets]
        if cell.name == "baseline":  # also branched at LRT's step counts: the equal-token pairing
            steps += [b.steps(spec.arms["lrt"]) for b in spec.budgets]
        for seed in spec.seeds:
            jobs = [j for j in main_jobs if j.info["cell"] == cell.name and j.info["seed"] == seed]
            trunk, branches = jobs[0], jobs[1:]
            assert trunk.info["kind"] == "trunk" and trunk.config.optim.warmdown_ratio == 0
            assert sorted(b.steps for b in branches) == sorted(set(steps))
            assert trunk.config.save_at == sorted({branch_point(n, 0.2) for n in steps})
            assert trunk.steps == max(trunk.config.save_at)
            for b in branches:
                assert b.config.optim.warmdown_ratio == 0.2 and b.config.seed == seed
                assert b.fork == checkpoint.step_dir(trunk.path, branch_point(b.steps, 0.2))
    lrt_steps = [b.steps(spec.arms["lrt"]) for b in spec.budgets]
    base_steps = [b.steps(spec.arms["baseline"]) for b in spec.budgets]
    assert all(1.9 < b / lt < 2.2 for b, lt in zip(base_steps, lrt_steps))  # equal FLOPs: ~2x LRT's steps
    assert spec.jobs[0].info["seed"] == 0 and spec.jobs[-1].info["seed"] == 1  # seed by seed


@pytest.mark.parametrize(
    "extra, match",
    [
        ("[study]\nbudgets = [1e9]\nratios = [1]\n", "give study.budgets"),
        ("[study]\nbudgets = []\n", "non-empty list of positive numbers"),
        ("[study]\nbudgets = [1e9]\nseeds = [-1]\n", "seeds must be"),
        ("[study]\nbudgets = [1e9]\nseed = [0, 1]\n", "unknown key(s) study.seed"),
        ("[study]\nbudgets = [1e9]\ncooldown = 1.5\n", "cooldown"),
        ('[study]\nbudgets = [1e9]\n[ablations]\ninjection = ["sideways"]\n', "injection must be one of"),
        ("[study]\nbudgets = [1e9]\n[ablations]\nsteps = [3]\n", "the study sets it per run"),
        ("[study]\nbudgets = [1e9]\n[train]\nbatchsize = 3\n", "unknown key(s) train.batchsize"),
        ("[study]\nbudgets = [1e9]\n[train]\nseed = 3\n", "the study sets it per run"),
        ("[study]\nbudgets = [1e9]\n[lr_check]\nadamw_lr = [1e-3]\nmatrix_lr = [1]\n", "one OptimConfig field"),
        ("[study]\nbudgets = [1e9]\n[control]\nratios = [1]\n", "[control]"),
        ('[study]\nbudgets = [1e9]\n[referee]\nsteps = 3\nschedules = ["sequential"]\n', "at least two"),
        ("[study]\nbudgets = [1e9]\n[ablation]\n", "unknown table"),
        ('[study]\nbudgets = [1e9]\n[comparators]\nnames = ["loop-9"]\n', "comparators.names must list some of"),
        ('[study]\nbudgets = [1e9]\n[comparators]\nnames = ["loop-2"]\nratios = [2e9]\n', "are not budgets"),
        ("[study\n", "not valid TOML"),
        # issue 25: a seed twice counted one run twice; tables of the wrong type were tracebacks
        ("[study]\nbudgets = [1e9]\nseeds = [0, 0]\n", "lists seed 0 more than once"),
        ("study = 5\n", "study must be a table"),
        ("train = [1, 2]\n[study]\nbudgets = [1e9]\n", "train must be a table"),
        ("ablations = 3\n[study]\nbudgets = [1e9]\n", "ablations must be a table"),
        ("[study]\nbudgets = [1e9]\n[train]\nmodel = 5\n", "train.model must be a table"),
        ("[study]\nbudgets = [1e9]\n[train]\noptim = 5\n", "train.optim must be a table"),
        ("[study]\nbudgets = [inf]\n", "budgets must be"),
        ("[study]\nbudgets = [1e9]\n[train]\ninit_from = 5\n", "init_from must be"),
        ('[study]\nbudgets = [1e9]\n[train]\ninit_from = "nope"\n', "does not exist"),
    ],
)
def test_bad_specs_are_one_line(tmp_path, capsys, extra, match):
    (tmp_path / "bad.toml").write_text(extra)
    assert main(["study", "run", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["studies/cpu.toml", "studies/paper_d20.toml"])
def test_the_shipped_studies_validate(spec, capsys):
    root = Path(__file__).resolve().parents[1]
    assert main(["study", "run", str(root / spec), "--out", "/nonexistent/out", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "total training FLOPs" in err and "R scaling" in err and "epochs" in err


COMPARATORS = """
[comparators]
names = ["loop-2", "PonderLM-2"]
ratios = [2e9]
seeds = [1]

[lr_check]
adamw_lr = [0.002, 0.004]
seeds = [0]
"""


def test_comparators_train_beside_the_main_stage_at_equal_flops_and_lrts_tokens(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lr_choice.json").write_text(json.dumps({"field": "adamw_lr", "choice": {"baseline": 0.002, "lrt": 0.004}}))
    spec = load_spec(spec_file(tmp_path, COMPARATORS), out)
    assert [c.name for c in spec.cells] == ["baseline", "lrt"]  # the main stage is unchanged
    jobs = [j for j in spec.jobs if j.info["stage"] == "comparators"]
    assert {j.info["cell"] for j in jobs} == {"loop-2", "PonderLM-2"} and {j.info["seed"] for j in jobs} == {1}
    budget = spec.budgets[1]  # 2e9 FLOPs, the second budget: labels keep the main stage's index
    for job in jobs:
        cell, cfg = job.info["cell"], job.config
        assert cfg.optim.adamw_lr == 0.002  # the baseline's learning rate
        model = spec.arms[cell].config
        assert (model.loops, model.latent_thoughts, model.injection) == (
            (2, 0, "none") if cell == "loop-2" else (1, 1, "none")
        )
        assert cfg.schedule == ("baseline" if cell == "loop-2" else "jacobi:3")
        if job.info["kind"] == "branch":
            expected = {"flops:1": budget.steps(spec.arms[cell]), "tokens:1": budget.steps(spec.arms["lrt"])}
            assert all(expected[label] == job.steps for label in job.info["budgets"])
            assert job.memories == (("zero",) if cell == "loop-2" else ("exact", "parallel"))
    labels = {label for j in jobs for label in j.info.get("budgets", [])}
    assert labels == {"flops:1", "tokens:1"}
    order = [j.info["stage"] for j in spec.jobs]
    assert order.index("comparators") > order.index("main")  # after the main stage's first seeds


def test_a_spec_that_only_adds_runs_extends_a_study(tmp_path, monkeypatch, capsys):
    """Adding a stage (here the comparators) keeps every run of the study, so it may join a study
    under way; a spec that changes a run is another study."""
    from lrt.experiments import study

    out = tmp_path / "study"
    base = spec_file(tmp_path, "")
    out.mkdir()
    (out / "spec.toml").write_bytes(base.read_bytes())
    extended = tmp_path / "extended.toml"
    extended.write_text(base.read_text() + '[comparators]\nnames = ["loop-2"]\n')
    changed = tmp_path / "changed.toml"
    changed.write_text(base.read_text().replace("batch_size = 2", "batch_size = 3"))
    assert study.extends(load_spec(extended, out), load_spec(base, out))
    assert not study.extends(load_spec(changed, out), load_spec(base, out))
    assert not study.extends(load_spec(base, out), load_spec(extended, out))
    monkeypatch.setattr(study, "_run", lambda spec, jobs, progress: [])  # the planning, not the training
    assert main(["study", "run", str(changed), "--out", str(out)]) == 2
    assert "holds another study" in capsys.readouterr().err and (out / "spec.toml").read_bytes() == base.read_bytes()
    assert main(["study", "run", str(extended), "--out", str(out)]) == 0
    assert "extends the study" in capsys.readouterr().err
    assert (out / "spec.toml").read_bytes() == extended.read_bytes()


def tiny_config(out, **fields) -> TrainConfig:
    optim = OptimConfig(optimizer="adamw", warmup_steps=1, warmdown_ratio=fields.pop("warmdown", 0.2))
    base = dict(preset="tiny", seq_len=16, batch_size=2, eval_tokens=64, eval_every=100, final_decode=False)
    return TrainConfig(out=str(out), optim=optim, **{**base, **fields})


def weights(path):
    return checkpoint.load_weights(checkpoint.resolve(path))


def test_a_cooldown_branch_is_the_separate_warmdown_run(tmp_path):
    """Trunk at constant rate saved at the branch point, then the branch decaying over the last
    20%: weight for weight the run trained with warmdown_ratio 0.2 from the start."""
    steps = 10
    start = branch_point(steps, 0.2)
    trunk = tiny_config(tmp_path / "trunk", steps=9, warmdown=0.0, save_at=[start], keep=1)
    Trainer(trunk).train(progress=False)
    assert checkpoint.step_dir(tmp_path / "trunk", start).is_dir()  # kept whatever --keep says
    Trainer(tiny_config(tmp_path / "branch", steps=steps), resume=str(checkpoint.step_dir(trunk.out, start))).train(
        progress=False
    )
    Trainer(tiny_config(tmp_path / "separate", steps=steps)).train(progress=False)
    branch, separate = weights(tmp_path / "branch"), weights(tmp_path / "separate")
    assert branch.keys() == separate.keys()
    assert all(torch.equal(branch[k], separate[k]) for k in branch)
    # and the decay mattered: the trunk's own continuation at constant rate differs
    trunk_end = weights(tmp_path / "trunk")
    assert not all(torch.equal(trunk_end[k], separate[k]) for k in separate)


def test_one_seed_pairs_the_arms(tmp_path):
    """At one seed the baseline and LRT start from the same backbone and read the same batches;
    another seed changes both."""

    def built(schedule, seed):
        trainer = Trainer(tiny_config(tmp_path / f"{schedule}{seed}", steps=1, schedule=schedule, seed=seed))
        batches = [trainer.loader.next_batch()[0] for _ in range(3)]
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.close()
        return state, batches

    base0, base_batches0 = built("baseline", 0)
    lrt0, lrt_batches0 = built("interleaved:2", 0)
    lrt1, lrt_batches1 = built("interleaved:2", 1)
    assert all(torch.equal(base0[k], lrt0[k]) for k in base0)  # the backbone
    assert set(lrt0) - set(base0) and any(not torch.equal(lrt0[k], lrt1[k]) for k in set(lrt0) - set(base0))
    assert all(torch.equal(a, b) for a, b in zip(base_batches0, lrt_batches0))
    assert not all(torch.equal(a, b) for a, b in zip(lrt_batches0, lrt_batches1))


def test_seed_zero_keeps_the_original_document_order():
    import random

    source = TextSource([f"doc {i}" for i in range(50)], "docs")
    for epoch in range(3):
        order = list(range(50))
        random.Random(epoch).shuffle(order)
        assert source.order(epoch) == source.order(epoch, seed=0) == order
    assert source.order(0, seed=1) != source.order(0) and source.order(0, seed=1) != source.order(1)


def lrt_study(*args):
    return [sys.executable, "-m", "lrt", "study", *args]


def digest(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


STAGES = """
[lr_check]
adamw_lr = [0.002, 0.004]
seeds = [0]

[referee]
steps = 3
seq_len = 8
seeds = [0]
"""


def study_in_background(tmp_path, until):
    """`lrt study run` of the STAGES spec in a session of its own, once `until(jobs)` holds."""
    spec_path, out = spec_file(tmp_path, STAGES), tmp_path / "study"
    process = subprocess.Popen(
        lrt_study("run", str(spec_path), "--out", str(out)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs = load_spec(spec_path, out).jobs
    deadline = time.time() + 240
    while not until(jobs) and time.time() < deadline:
        time.sleep(0.1)
    return process, spec_path, out, jobs


def test_a_killed_study_resumes_without_redoing_finished_work(tmp_path):
    process, spec_path, out, jobs = study_in_background(tmp_path, lambda jobs: sum(map(done, jobs)) >= 3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = [j for j in jobs if done(j)]
    assert finished and len(finished) < len(jobs)
    before = {j.path: digest(j.path / "checkpoints") for j in finished}
    result = subprocess.run(lrt_study("run", str(spec_path), "--out", str(out), "--jobs", "2"), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    spec = load_spec(spec_path, out)  # now with each arm's learning rate
    bar = result.stderr.decode().split("\r")[-1]  # the bar's last state: training FLOPs, then runs
    assert "study: 100% of training FLOPs" in bar and f"{len(spec.jobs)}/{len(spec.jobs)} runs" in bar
    choice = json.loads((out / "lr_choice.json").read_text())
    assert choice["field"] == "adamw_lr" and set(choice["choice"]) == {"baseline", "lrt"}
    assert all(map(done, spec.jobs))
    for job in spec.jobs:
        if job.info["stage"] in ("main",):
            arm = "baseline" if job.info["cell"] == "baseline" else "lrt"
            assert job.config.optim.adamw_lr == choice["choice"][arm]
    for path, files in before.items():  # not trained again
        assert digest(path / "checkpoints") == files
    scored = json.loads(
        next(j for j in spec.jobs if j.memories and j.info["cell"] == "lrt").path.joinpath("eval.json").read_text()
    )
    assert {"exact", "parallel", "zero", "step", "tokens"} <= set(scored) and scored["exact"] > 0


def test_ctrl_c_stops_a_study_its_running_children_save_and_no_new_run_starts(tmp_path):
    """Ctrl-C reaches the study and its children (one process group, as from a terminal): the
    running child saves and stops, the study starts no other run and exits 130 (issue 25, 11)."""
    running = lambda jobs: any((j.path / "metrics.jsonl").exists() for j in jobs)  # noqa: E731
    process, _, _, jobs = study_in_background(tmp_path, running)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert not all(map(done, jobs))
    started = [j for j in jobs if (j.path / "metrics.jsonl").exists()]
    assert len(started) <= 2  # the one running (and at most one starting as the signal came)


def test_a_file_as_the_study_folder_is_one_line_and_untouched(tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("mine")
    assert main(["study", "run", str(spec_file(tmp_path)), "--out", str(out)]) == 2
    assert "is a file" in capsys.readouterr().err and out.read_text() == "mine"


def test_a_study_folder_belongs_to_one_spec_and_one_process(tmp_path, capsys):
    """Another spec's finished runs would pass for this one's (same cell names): refused, nothing
    touched. A second `lrt study run` of a folder in use stops at once."""
    from lrt.train.run_folder import RunFolder

    out = tmp_path / "study"
    out.mkdir()
    (out / "spec.toml").write_text("# another study\n")
    assert main(["study", "run", str(spec_file(tmp_path)), "--out", str(out)]) == 2
    assert "holds another study" in capsys.readouterr().err
    assert (out / "spec.toml").read_text() == "# another study\n" and not (out / "main").exists()
    (out / "spec.toml").unlink()
    holder = RunFolder(out, user="lrt study run").acquire()
    try:
        assert main(["study", "run", str(spec_file(tmp_path)), "--out", str(out)]) == 2
        assert "in use by another lrt study run" in capsys.readouterr().err
        assert not (out / "spec.toml").exists()
    finally:
        holder.release()


def test_dataclass_replace_keeps_a_spec_usable(tmp_path):
    """A Job's config is a plain TrainConfig: the study's children rebuild it from JSON."""
    spec = load_spec(spec_file(tmp_path), tmp_path / "out")
    job = spec.jobs[0]
    again = TrainConfig.from_dict(json.loads(json.dumps(job.config.to_dict())))
    assert dataclasses.asdict(again) == dataclasses.asdict(job.config)


def test_the_lr_check_picks_each_arms_best_and_a_diverged_rate_loses(tmp_path):
    spec = load_spec(spec_file(tmp_path, STAGES.replace("[0.002, 0.004]", "[0.002, 0.004, 0.008]")), tmp_path / "o")
    scores = {("baseline", 0.002): 3.0, ("baseline", 0.004): 2.9, ("lrt", 0.002): 2.95, ("lrt", 0.004): 3.1}
    for job in spec.jobs:
        if job.info["stage"] == "lr_check":
            job.path.mkdir(parents=True)
            key = (job.info["cell"], job.info["adamw_lr"])
            scored = {"diverged": "non-finite loss"} if key[1] == 0.008 else {"exact": None, "zero": scores[key]}
            (job.path / "eval.json").write_text(json.dumps(scored))
    choice = choose_lr(spec)
    assert choice["choice"] == {"baseline": 0.004, "lrt": 0.002}
    assert choice["means"]["lrt"]["0.008"] == float("inf")


def test_an_edited_spec_toml_does_not_pass_its_old_runs_for_new_ones(tmp_path, monkeypatch, capsys):
    """Issue 25: editing the study folder's own spec.toml in place kept every run as done, so `run`
    said "all runs finished" and `report` showed runs of the old spec as the new one's (and an edit
    of the steps had each send the user to the other). Each run's recorded config must be its
    cell's: both commands name the runs that differ and how, in one line, and change nothing."""
    from lrt.experiments import study

    # each run in this process, not a child that imports torch again: the same work, seconds sooner
    monkeypatch.setattr(study.Children, "run", lambda self, command, **popen: study.work(command[-1]))
    spec_path, out = spec_file(tmp_path, ""), tmp_path / "study"
    spec_path.write_text(spec_path.read_text().replace("seeds = [0, 1]", "seeds = [0]").replace(", 2e9]", "]"))
    assert main(["study", "run", str(spec_path), "--out", str(out)]) == 0
    kept = out / "spec.toml"
    edits = [
        ("warmup_steps = 1", "warmup_steps = 2", "optim.warmup_steps=1 (the spec says 2)"),
        ("budgets = [1e9]", "budgets = [5e8]", "steps="),  # the trunk trains fewer steps, branches move
    ]
    for old, new, differs in edits:
        capsys.readouterr()
        kept.write_text(spec_path.read_text().replace(old, new))
        before = digest(out)
        for command in (["run", str(kept), "--out", str(out)], ["report", str(out)]):
            assert main(["study", *command]) == 2, (old, command)
            err = [line for line in capsys.readouterr().err.splitlines() if "trained under another spec" in line]
            assert len(err) == 1 and differs in err[0] and "main/baseline/seed0/trunk" in err[0], err
            assert "delete those run folders" in err[0]
        assert digest(out) == before
        if old.startswith("warmup"):  # every run differs (the other edit keeps a branch that is the same run)
            assert not any(map(done, load_spec(kept, out).jobs))


def test_a_broken_job_file_in_a_study_folder_is_one_line(tmp_path, capsys):
    spec_path, out = spec_file(tmp_path), tmp_path / "study"
    job = load_spec(spec_path, out).jobs[0]
    job.path.mkdir(parents=True)
    (job.path / "job.json").write_text("[1, 2")
    assert main(["study", "run", str(spec_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "is not a job file lrt study wrote" in err.splitlines()[-1], err
    assert (job.path / "job.json").read_text() == "[1, 2"


def test_a_study_can_start_every_run_from_one_checkpoint(tmp_path):
    """[train] init_from: every cell starts from the same weights (a plain transformer here), the
    arms' matched-compute arithmetic uses the checkpoint's shape, not the preset's, and the runs
    record the very checkpoint."""
    assert main(tiny_train_args(tmp_path / "base", steps=2, schedule="baseline")) == 0
    text = TINY.format(extra="").replace('preset = "tiny"', f'preset = "small"\ninit_from = "{tmp_path / "base"}"')
    (tmp_path / "shared.toml").write_text(text)
    spec = load_spec(tmp_path / "shared.toml", tmp_path / "out")
    source = checkpoint.resolve(tmp_path / "base").resolve()
    assert {arm.config.n_embd for arm in spec.arms.values()} == {64}  # tiny's, the checkpoint's
    assert spec.arms["lrt"].config.injection == "kv+residual" and spec.arms["baseline"].config.injection == "none"
    assert {job.config.init_from for job in spec.jobs} == {str(source)}


def test_a_restored_study_continues_without_training_its_finished_runs_again(tmp_path, capsys):
    """`lrt study restore` of a published study: nothing is trained again (its trunks' checkpoints
    were not published, and no branch needs them); a branch deleted since is trained again from a
    trunk trained again, to the score it had."""
    spec_path = tmp_path / "one.toml"
    spec_path.write_text(TINY.format(extra="").replace("seeds = [0, 1]", "seeds = [0]"))
    assert main(["study", "run", str(spec_path), "--out", str(tmp_path / "study")]) == 0
    assert main(["study", "publish", str(tmp_path / "study"), "--out", str(tmp_path / "published")]) == 0
    out = tmp_path / "restored"
    assert main(["study", "restore", str(tmp_path / "published"), "--out", str(out)]) == 0
    spec = load_spec(out / "spec.toml", out)
    assert not list(out.rglob("checkpoints")) and "100% of" in status_line(spec)
    before = digest(out)
    assert main(["study", "run", str(out / "spec.toml"), "--out", str(out)]) == 0
    assert {p: h for p, h in digest(out).items() if ".lock" not in p} == before  # nothing ran

    branch = next(j for j in spec.jobs if j.fork and j.info["cell"] == "lrt")
    score = json.loads((branch.path / "eval.json").read_text())
    score.pop("train_time")
    shutil.rmtree(branch.path)
    assert main(["study", "run", str(out / "spec.toml"), "--out", str(out)]) == 0
    trained = {p.parent.relative_to(out) for p in out.rglob("checkpoints")}
    assert trained == {branch.path.relative_to(out), branch.fork.parent.parent.relative_to(out)}
    again = json.loads((branch.path / "eval.json").read_text())
    assert again.pop("train_time") > 0 and again == score
    capsys.readouterr()


def status_line(spec) -> str:
    from lrt.experiments.study import status

    return status(spec).splitlines()[0]


def test_restoring_what_is_not_a_published_study_or_into_a_used_folder_is_one_line(tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.md").write_text("mine")
    (tmp_path / "published" / "runs").mkdir(parents=True)
    (tmp_path / "published" / "spec.toml").write_text(TINY.format(extra=""))
    (tmp_path / "broken" / "runs").mkdir(parents=True)
    (tmp_path / "broken" / "spec.toml").write_text(TINY.format(extra="").replace("[reference]", "[referense]"))
    cases = (
        (tmp_path / "nothing", tmp_path / "new"),
        (tmp_path / "published", used),
        (tmp_path / "published", tmp_path / "published" / "runs" / "new"),  # inside what it copies
        (tmp_path / "broken", tmp_path / "new"),
    )
    for published, out in cases:
        assert main(["study", "restore", str(published), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in used.iterdir()] == ["notes.md"] and not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "published").rglob("*")) == ["runs", "spec.toml"]
