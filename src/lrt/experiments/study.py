"""`lrt study`: the paper's comparisons at matched training FLOPs, with seeds, as one command.

A study spec (TOML) names a reference LRT, the baseline, and ablations that vary one field of the
reference (each variant a *cell*), and budgets given as training FLOPs or as R tokens per
baseline parameter (`lrt.budget`, under either parameter convention).

**Cooldown branches.** A budget is a run that keeps its learning rate constant after warmup and
decays it linearly to zero over its last `cooldown` share of steps (nanochat's warmdown). Such
runs share everything up to their decay, so per cell and seed one *trunk* trains at constant rate
and saves at each budget's branch point (step N - round(cooldown x N)); the budget of N steps is a
*branch* that resumes there and decays over the rest: step for step the run a separate
`warmdown_ratio = cooldown` training would be (tests/test_study.py checks the weights match).

**Pairing.** A run's seed fixes its data order and its backbone's initial weights (the pathway
draws from its own generator), so at one seed the baseline and LRT start from the same weights
and read the same batches: differences are taken seed by seed.

**Pairings of the paper.** Every arm gets each budget (equal training FLOPs); the baseline also
gets a branch at each of LRT's step counts (equal tokens), so the gap at equal FLOPs splits into
what the baseline's extra compute buys (G) and what LRT's memory buys at equal tokens (D).

**Evaluation.** Each branch end is scored on `eval_tokens` held-out tokens (eval.json): LRT with
exact memory (what generation gets), its schedule's passes and zero memory; the baseline with
its only memory (zero).

**Stages.** `[lr_check]` trains each arm at the lowest budget with a few values of one optimizer
field; each arm then trains with its own best (lr_choice.json). `[control]` repeats the top
budgets on a second corpus (one large enough not to repeat tokens). `[referee]` trains one small
model with true sequential unrolling and with a parallel schedule for the same steps.

    [study]                        # StudySettings; an unknown key in any table is an error
    seeds = [0, 1, 2]
    ratios = [10, 20, 40, 80]      # R (or budgets = [training FLOPs, ...])
    convention = "scaling"         # R on nanochat's scaling parameters (or "total")
    [train]                        # TrainConfig fields of every run (optim and model as tables)
    [reference]                    # the LRT every ablation varies: its schedule and model fields
    schedule = "interleaved:2"
    [ablations]                    # field = [values]: one cell per value
    [lr_check]                     # an OptimConfig field = [values], and seeds
    [control]                      # data, val_data, ratios, seeds
    [referee]                      # schedules, seq_len, steps, seeds

`lrt study run` runs what is not done (finished runs are skipped, interrupted ones resume; `--jobs
N` side by side); `lrt study report` writes report.md and plots (study_report.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..train import checkpoint
from ..train.config import TrainConfig
from ..train.curves import read_metrics
from ..train.run_folder import RunFolder
from .study_spec import (
    ARMS,
    Job,
    Spec,
    Unit,
    arm_of,
    branch_point,
    config_differences,
    corpus_tokens,
    job_differences,
    open_study,
    other_runs,
    plan_units,
    waits_for_lr_check,
)


def choose_lr(spec: Spec) -> dict:
    """Each arm's value of the checked field with the lowest mean score over the check's seeds
    (LRT by exact memory: what generation gets); a value that diverged on any seed scores inf."""
    check = spec.lr_check
    table: dict[str, dict[float, list[float]]] = {arm: {} for arm in ARMS}
    for job in spec.jobs:
        if job.info["stage"] == "lr_check":
            score = read_eval(job)
            bpb = math.inf if "diverged" in score else score["exact"] or score["zero"]
            table[job.info["cell"]].setdefault(job.info[check.field], []).append(bpb)
    means = {arm: {v: sum(s) / len(s) for v, s in values.items()} for arm, values in table.items()}
    choice = {arm: min(m, key=m.get) for arm, m in means.items()}
    return {
        "field": check.field,
        "choice": choice,
        "means": {a: {f"{v:g}": s for v, s in m.items()} for a, m in means.items()},
    }


# what a spec costs ---------------------------------------------------------------------------------


def describe(spec: Spec) -> str:
    """Every arm, its steps, tokens, R under both conventions and epochs per budget, and what
    each stage trains: what `--dry-run` prints."""
    s = spec.settings
    trunk_cfg = next(j.config for j in spec.jobs if j.info["stage"] == "main")
    main_tokens = corpus_tokens(trunk_cfg)
    unit = "R" if s.ratios is not None else "budget"
    lines = [
        f"study {spec.name} ({spec.path}): {len(spec.cells)} cells x {len(spec.seeds)} seeds; budgets "
        + (
            f"R = {', '.join(f'{r:g}' for r in s.ratios)} tokens per baseline parameter ({s.convention})"
            if s.ratios is not None
            else f"{', '.join(f'{b.flops:.3g}' for b in spec.budgets)} training FLOPs"
        )
        + f"; cooldown {s.cooldown:g}",
        f"corpus: {trunk_cfg.data or 'the bundled corpus'}, "
        + (f"{main_tokens:,} training tokens" if main_tokens else "size unknown"),
        f"{'cell':<22}{'params':>12}{'scaling':>10}{'FLOPs/step':>12}{'x base':>8}",
    ]
    for cell in spec.cells + spec.comparator_cells:
        arm = spec.arms[cell.name]
        lines.append(
            f"{cell.name:<22}{arm.params('total'):>12,}{arm.params('scaling'):>10,}"
            f"{arm.flops_per_step:>12.3g}{arm.flop_ratio:>8.3f}"
        )
    lines.append(f"{unit:<10}{'cell':<22}{'steps':>8}{'tokens':>14}{'R total':>9}{'R scaling':>10}{'epochs':>8}")
    for i, b in enumerate(spec.budgets):
        label = f"{b.ratio:g}" if b.ratio is not None else f"{b.flops:.3g}"
        for cell in spec.cells + spec.comparator_cells:
            r = b.reach(spec.arms[cell.name], main_tokens)
            epochs = f"{r.epochs:.2f}" if r.epochs is not None else "?"
            lines.append(
                f"{label:<10}{cell.name:<22}{r.steps:>8,}{r.tokens:>14,}{r.ratio_total:>9.2f}"
                f"{r.ratio_scaling:>10.2f}{epochs:>8}"
            )
    stages: dict[str, list[Job]] = {}
    for job in spec.jobs:
        stages.setdefault(job.info["stage"], []).append(job)
    total = 0.0
    for stage, jobs in stages.items():
        steps = sum(trained_steps(spec, j) for j in jobs)
        flops = sum(map(functools.partial(job_flops, spec), jobs))
        total += flops
        lines.append(f"stage {stage}: {len(jobs)} runs, {steps:,} steps, {flops:.3g} training FLOPs")
    if waits_for_lr_check(spec):
        lines.append(
            f"main and control train with each arm's best {spec.lr_check.field} of the lr_check "
            "(chosen when it finishes)"
        )
    lines.append(f"total training FLOPs: {total:.3g}")
    return "\n".join(lines)


def trained_steps(spec: Spec, job: Job) -> int:
    """The steps a job trains itself: a branch starts where its trunk saved."""
    return job.steps - (branch_point(job.steps, spec.settings.cooldown) if job.fork else 0)


def job_flops(spec: Spec, job: Job) -> float:
    """The training FLOPs a job spends itself (a branch: from its branch point on)."""
    return trained_steps(spec, job) * arm_of(spec, job).flops_per_step


# where a study stands ------------------------------------------------------------------------------


def status(spec: Spec) -> str:
    """What `lrt study status` prints: per stage the runs and training FLOPs done, the runs started
    and not finished (running now, or to be resumed), and the rest's cost at the training rate the
    finished runs measured."""
    by_stage: dict[str, list[Job]] = {}
    for job in spec.jobs:
        by_stage.setdefault(job.info["stage"], []).append(job)
    finished = {job.path for job in spec.jobs} - {job.path for unit in spec.units for job in to_run(unit)}
    total = sum(job_flops(spec, job) for job in spec.jobs)
    spent = sum(job_flops(spec, job) for job in spec.jobs if job.path in finished)
    lines = [
        f"study {spec.name} ({spec.out}): {len(finished)} of {len(spec.jobs)} runs finished, "
        f"{spent / total:.0%} of {total:.3g} training FLOPs",
        f"{'stage':<14}{'runs':>9}{'training FLOPs':>24}",
    ]
    for stage, jobs in by_stage.items():
        ended = [job for job in jobs if job.path in finished]
        flops = f"{sum(job_flops(spec, j) for j in ended):.3g} / {sum(job_flops(spec, j) for j in jobs):.3g}"
        lines.append(f"{stage:<14}{f'{len(ended)}/{len(jobs)}':>9}{flops:>24}")
    started = [job for job in spec.jobs if job.path not in finished and (job.path / "metrics.jsonl").is_file()]
    if started:
        lines.append("started, not finished:")
    for job in started:
        steps = [r["step"] for r in read_metrics(job.path / "metrics.jsonl") if r["kind"] == "train"]
        pid = running_pid(job.path)
        state = f"running (pid {pid})" if pid else "not running: resumes where it last saved"
        lines.append(f"  {job.path.relative_to(spec.out)}: step {max(steps, default=0)} of {job.steps}, {state}")
    rate = training_rate([job for job in spec.jobs if job.path in finished])
    if rate and spent < total:
        hours = (total - spent) / rate / 3600
        lines.append(
            f"the rest: {total - spent:.3g} training FLOPs, about {hours:.1f} run-hours at the {rate:.3g} FLOP/s "
            "a run trained at so far (evaluation not counted; --jobs N runs N at once)"
        )
    return "\n".join(lines)


def running_pid(folder: Path) -> int | None:
    """The pid a run folder's lock names, where that process lives (a lock is only read here:
    taking it, even briefly, could make a training that starts at that moment fail)."""
    try:
        pid = int((folder / ".lock").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def training_rate(jobs: list[Job]) -> float | None:
    """Training FLOPs per second of wall time over the training records of `jobs`."""
    flops = seconds = 0.0
    for job in jobs:
        if not (job.path / "metrics.jsonl").is_file():
            continue
        records = [r for r in read_metrics(job.path / "metrics.jsonl") if r["kind"] == "train" and "time" in r]
        if len(records) >= 2:
            flops += records[-1]["flops"] - records[0]["flops"]
            seconds += records[-1]["time"] - records[0]["time"]
    return flops / seconds if seconds > 0 else None


# running ---------------------------------------------------------------------------------------------


def read_eval(job: Job) -> dict:
    return json.loads((job.path / "eval.json").read_text())


def done(job: Job) -> bool:
    """Trained to its last step, and scored where it is scored, as the spec says: a run trained
    under an edited spec is not this spec's, however finished (issue 25)."""
    if job_differences(job):
        return False
    if job.memories:
        return (job.path / "eval.json").is_file()
    found = checkpoint.list_checkpoints(job.path)
    if not found:
        return False
    record = checkpoint.read_record(found[-1])
    return bool(record.get("final")) and record["step"] >= job.steps


def to_run(unit: Unit) -> list[Job]:
    """The jobs of a unit still to train, in order: those not done, except a trunk whose branches
    are all scored. Such a trunk trained once; a study restored from its published folder (`lrt
    study restore`) has its curve but not its checkpoints, and needs none of them."""
    left = [job for job in unit.jobs if not done(job)]
    return left if any(job.memories for job in left) else []


def work(job_path: str) -> int:
    """One job in its own process (`lrt study run` starts these): train it (fresh, resumed, or a
    branch forked from its trunk), then score its end."""
    import torch

    from ..train.trainer import Diverged, Interrupted, Trainer

    if "LRT_STUDY_PID" in os.environ:
        die_with_parent(int(os.environ["LRT_STUDY_PID"]))
    threads = int(os.environ.get("LRT_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    job = json.loads(Path(job_path).read_text())
    cfg = TrainConfig.from_dict(job["config"])
    own = checkpoint.list_checkpoints(cfg.out)
    finished = (
        own and checkpoint.read_record(own[-1]).get("final") and checkpoint.read_record(own[-1])["step"] >= cfg.steps
    )
    if not finished:
        try:
            Trainer(cfg, resume=cfg.out if own else job["fork"]).train(progress=False)
        except (Interrupted, KeyboardInterrupt):  # saved where it could: the study tells them apart by this code
            return INTERRUPTED
        except Diverged as e:
            if job["info"]["stage"] != "lr_check":
                raise
            # a rate too high for the model is an answer of the check, not a failure of the study
            write_json(Path(cfg.out) / "eval.json", {"diverged": str(e), "exact": None, "zero": None})
            return 0
    if job["memories"]:
        score(Path(cfg.out), job["memories"], tokens=job["eval_tokens"], batch_size=job["eval_batch_size"])
    return 0


def score(path: Path, memories: list[str], *, tokens: int, batch_size: int) -> None:
    """eval.json of a finished run: its held-out BPB under each memory, with what it trained."""
    from ..evaluate.scoring import score_run
    from ..train.checkpoint import load_run

    run = load_run(path, "auto")
    scored = score_run(run, memories, tokens=tokens, batch_size=batch_size)
    record = run.record
    result = {
        "step": record["step"],
        "trained_tokens": record["tokens"],  # "tokens" below is what was scored
        "train_time": record["train_time"],
        "rows": scored.rows,
        "seq_len": scored.seq_len,
        "data": scored.data,
        **dataclasses.asdict(scored.result),
    }
    write_json(path / "eval.json", result)


def write_json(path: Path, payload: dict) -> None:
    """Written whole or not at all: a study killed mid-write leaves no half file for `done`."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))
    tmp.rename(path)


def run_study(spec: Spec, out: Path, jobs: int = 1, progress: bool = True) -> list[str]:
    """Run what is not done; the failures, one line each. The study folder is locked while it
    runs, and belongs to one spec: another spec's runs are never taken for this one's."""
    folder = RunFolder(out, user="lrt study run").acquire()
    try:
        kept = out / "spec.toml"
        extending = kept.exists() and kept.read_bytes() != spec.path.read_bytes()
        if extending:
            try:
                previous = open_study(out)
            except ValueError:  # not even a spec of this lrt: another study all the more
                previous = None
            if previous is None or not extends(spec, previous):
                raise ValueError(
                    f"{out} holds another study ({kept} differs from {spec.path}, and not only by runs it adds): "
                    f"choose another --out, or continue it with lrt study run {kept} --out {out}"
                )
        # spec.toml may have been edited in place since its runs trained: the runs say what they were
        if (problem := other_runs(spec)) is not None:
            raise ValueError(problem)
        if extending:
            print(f"{spec.path} extends the study in {out}: its runs are kept, and the new ones added", file=sys.stderr)
        if not kept.exists() or kept.read_bytes() != spec.path.read_bytes():
            tmp = kept.with_suffix(".toml.tmp")
            shutil.copyfile(spec.path, tmp)
            tmp.rename(kept)
        return _run(spec, jobs, progress)
    finally:
        folder.release()


def extends(spec: Spec, kept: Spec) -> bool:
    """Whether `spec` only adds runs to the study `kept` (a stage such as [comparators], more
    seeds): every job of `kept` is one of its jobs, trained and scored the same way."""

    mine = {job.path: job for job in spec.jobs}

    def same(job: Job) -> bool:  # the same comparison `other_runs` makes of a run's recorded config
        new = mine.get(job.path)
        return (
            new is not None
            and (str(new.fork), new.memories) == (str(job.fork), job.memories)
            and not config_differences(new.config, job.config.to_dict(), "spec")
        )

    return all(same(job) for job in kept.jobs)


def _run(spec: Spec, jobs: int, progress: bool) -> list[str]:
    from tqdm import tqdm

    failures: list[str] = []
    # the bar counts training FLOPs, not runs: a study's runs differ in cost a hundredfold (a trunk
    # and a short branch, PonderLM-2 and the baseline), and an ETA by runs swings with each one
    cost = functools.partial(job_flops, spec)
    left = {job.path for unit in spec.units for job in to_run(unit)}
    finished = [job for job in spec.jobs if job.path not in left]
    bar = tqdm(
        total=sum(map(cost, spec.jobs)),
        initial=sum(map(cost, finished)),
        desc="study",
        bar_format="{desc}: {percentage:3.0f}% of training FLOPs |{bar}| {postfix} [{elapsed}<{remaining}]",
        disable=not progress,
        dynamic_ncols=True,
    )
    runs, counting = [len(finished)], threading.Lock()

    def count(job: Job) -> None:  # from each worker thread
        with counting:
            runs[0] += 1
            bar.set_postfix_str(f"{runs[0]}/{len(spec.jobs)} runs", refresh=False)
            bar.update(cost(job))

    bar.set_postfix_str(f"{runs[0]}/{len(spec.jobs)} runs")
    gpus = _gpus()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    children = Children()

    def one(slot_unit):
        slot, unit = slot_unit
        for job in to_run(unit):
            if children.stopping.is_set():
                return
            if differs := job_differences(job):  # planned only now, from the lr_check's choice
                failures.append(f"{job.path.relative_to(spec.out)}: trained under another spec: {', '.join(differs)}")
                return
            code = _launch(spec, job, slot, threads, gpus, children)
            if code == INTERRUPTED:  # the child saved and stopped on Ctrl-C (or SIGTERM): so does the study
                children.stopping.set()
                return
            if code != 0:
                failures.append(f"{job.path.relative_to(spec.out)}: failed, see {job.path / 'study.log'}")
                return  # a trunk's branches need the trunk
            count(job)

    def pool_run(units: list[Unit]) -> None:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                list(pool.map(one, [(i % jobs, u) for i, u in enumerate(units)]))
            except KeyboardInterrupt:  # before the pool waits for its workers: none may start another run
                children.interrupt()
                raise
        if children.stopping.is_set():  # a child took the Ctrl-C before the study did (one process group)
            raise KeyboardInterrupt

    if waits_for_lr_check(spec):
        pool_run([u for u in spec.units if u.stage == "lr_check"])
        if failures:
            bar.close()
            return failures
        choice = choose_lr(spec)
        (spec.out / "lr_choice.json").write_text(json.dumps(choice, indent=1))
        spec.units = plan_units(spec, choice["choice"])
    pool_run([u for u in spec.units if to_run(u)])
    bar.close()
    return failures


class Children:
    """The study's training children: a Ctrl-C reaches each of them (they save and stop) and no new
    one starts after it."""

    def __init__(self):
        self.live: set[subprocess.Popen] = set()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self, command: list[str], **popen) -> int:
        with self._lock:
            if self.stopping.is_set():
                return INTERRUPTED
            child = subprocess.Popen(command, **popen)
            self.live.add(child)
        try:
            return child.wait()
        finally:
            with self._lock:
                self.live.discard(child)

    def interrupt(self) -> None:
        with self._lock:
            self.stopping.set()
            for child in self.live:
                child.send_signal(signal.SIGINT)


INTERRUPTED = 130


def _launch(spec: Spec, job: Job, slot: int, threads: int, gpus: list[int], children: Children) -> int:
    """Train and score one job in a child process; its exit code (0: done, INTERRUPTED: it saved and
    stopped on a signal)."""
    folder = job.path
    if not checkpoint.list_checkpoints(folder) and folder.exists():
        start_over(folder)  # the study owns its run folders: a run that died before its first save
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": job.config.to_dict(),
        "fork": None if job.fork is None else str(job.fork),
        "memories": list(job.memories),
        "eval_tokens": spec.settings.eval_tokens,
        "eval_batch_size": spec.settings.eval_batch_size,
        "info": job.info,
    }
    (folder / "job.json").write_text(json.dumps(payload, indent=1))
    env = {
        **os.environ,
        "LRT_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "LRT_STUDY_PID": str(os.getpid()),
    }
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    with open(folder / "study.log", "a") as f:
        command = [
            sys.executable,
            "-c",
            "import sys; from lrt.experiments.study import work; sys.exit(work(sys.argv[1]))",
            str(folder / "job.json"),
        ]
        return children.run(command, env=env, stdout=f, stderr=f)


# what a child of a killed study has to save and let go of its folder (it was sent SIGTERM)
CHILD_GRACE_S = 60.0


def start_over(folder: Path, wait: float = CHILD_GRACE_S) -> None:
    """Delete the folder of a run that died before its first save, under its lock: a child of a
    killed study may still hold it (saving after its SIGTERM)."""
    held = RunFolder(folder, user="training").acquire(wait=wait)
    shutil.rmtree(folder)
    held.release()


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Called first in a child: SIGTERM when the study (pid `parent`) dies, even by kill -9
    (Linux), which the training takes as Ctrl-C (save and stop). Elsewhere a no-op: kill the
    process group instead. (Set in the child, not by preexec_fn, which is unsafe beside the
    study's threads.)"""
    libc = ctypes.util.find_library("c")
    if libc is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(libc).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the study died before the call: nobody would send it
        os.kill(os.getpid(), signal.SIGTERM)


def _gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
