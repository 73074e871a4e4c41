"""`lrt study`: the paper's comparisons as one reproducible command, with seeds.

A study spec (TOML) names a reference LRT, the baseline, and ablations that vary one field of the
reference at a time; every variant (a *cell*) trains once per seed to the largest budget.

**Matched effective compute, operationally**: two runs are compared at equal *training FLOPs*
(`lrt.flops`: forward + backward of every pass of the schedule, the pathway's projections only
where memory is read). A budget is given in training FLOPs, or as tokens per baseline parameter R
(the baseline's FLOPs for R x its parameters in tokens); each cell trains as many steps as the
budget buys (the baseline about twice LRT Interleaved S=2's). Every budget is read from the same
run, at the step where it is spent: learning rates are constant after warmup, so a point inside a
curve is trained like a run of that length. LRT is scored with exact memory (what generation
gets), the baseline with its only memory (zero).

    [study]
    seeds = [0, 1, 2]
    budgets = [1e13, 2e13]         # training FLOPs (or ratios = [R, ...])
    [train]                        # TrainConfig fields of every run (optim as a table)
    preset = "small"
    [reference]                    # the LRT every ablation varies: its schedule and model fields
    schedule = "interleaved:2"
    [ablations]                    # field = [values]: one cell per value
    injection = ["kv", "residual"]

`lrt study run` runs the cells (skips finished runs, resumes interrupted ones, `--jobs N` side by
side); `lrt study report` writes report.md and plots (report_study.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from .config import LRTConfig
from .flops import training_flops_per_sequence
from .model import parameter_counts
from .presets import get_preset
from .run_folder import RunFolder
from .schedules import parse_schedule
from .tokenizer import load_tokenizer
from .train_config import TrainConfig

MODEL_FIELDS = {f.name for f in dataclasses.fields(LRTConfig)}


@dataclass(frozen=True)
class Cell:
    """One variant: a name ("baseline", "lrt" or "field=value"), its schedule and overrides."""

    name: str
    schedule: str
    model: dict
    train: dict

    def config(self, base: dict, seed: int, out: Path, steps: int) -> TrainConfig:
        d = {**base, **self.train, "schedule": self.schedule, "seed": seed, "steps": steps, "out": str(out)}
        d["model"] = {**base.get("model", {}), **self.model}
        return TrainConfig.from_dict(d)


@dataclass(frozen=True)
class Run:
    cell: Cell
    seed: int
    steps: int  # to the largest budget
    budget_steps: tuple[int, ...]  # the step at which each budget is spent
    config: TrainConfig


@dataclass
class Spec:
    path: Path
    name: str
    seeds: list[int]
    budgets: list[float]  # training FLOPs
    train: dict
    cells: list[Cell]
    runs: list[Run]

    @property
    def reference(self) -> Cell:
        return next(c for c in self.cells if c.name == "lrt")


def _split(fields: dict) -> tuple[dict, dict]:
    """Model fields and training fields of a table."""
    return ({k: v for k, v in fields.items() if k in MODEL_FIELDS},
            {k: v for k, v in fields.items() if k not in MODEL_FIELDS and k != "schedule"})


def load_spec(path: str | Path, out: str | Path) -> Spec:
    """Read and check a spec: every cell's configuration is built, so a bad field fails now."""
    path = Path(path)
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file: a study's folder must be a folder")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e})") from None
    study = raw.get("study", {})
    seeds = study.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"{path}: study.seeds must be a non-empty list of integers >= 0")
    if ("budgets" in study) == ("ratios" in study):
        raise ValueError(f"{path}: give study.budgets (training FLOPs) or study.ratios (tokens per parameter)")
    amounts = study.get("budgets", study.get("ratios"))
    if not isinstance(amounts, list) or not amounts or not all(isinstance(b, (int, float)) and b > 0 for b in amounts):
        raise ValueError(f"{path}: the budgets must be a non-empty list of positive numbers")
    train = dict(raw.get("train", {}))
    unknown = set(raw) - {"study", "train", "reference", "ablations"}
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {sorted(unknown)}")
    reference = dict(raw.get("reference", {}))
    model, extra = _split(reference)
    cells = [Cell("baseline", "baseline", {}, {}), Cell("lrt", reference.get("schedule", "interleaved:2"), model, extra)]
    for field, values in raw.get("ablations", {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: ablations.{field} must be a non-empty list of values")
        for value in values:
            variant = {**reference, field: value}
            model, extra = _split(variant)
            label = value if isinstance(value, str) else json.dumps(value)  # reset_memory_at_bos=true
            cells.append(Cell(f"{field}={label}", variant.get("schedule", "interleaved:2"), model, extra))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two cells are the same variant ({names})")
    probe = cells[0].config(train, 0, Path(out), 1)
    try:
        vocab = load_tokenizer(probe.tokenizer).vocab_size
    except FileNotFoundError:  # not trained yet (a dry run of a GPU study): the preset's vocabulary
        vocab = get_preset(probe.preset).bench_vocab
    per_step = {}
    for cell in cells:
        cfg = cell.config(train, 0, Path(out), 1)
        model_config = cfg.model_config(vocab, bos_id=0)
        T = model_config.sequence_len
        tokens = cfg.total_batch_size or cfg.batch_size * cfg.grad_accum * T  # per optimizer step, all ranks
        per_step[cell.name] = training_flops_per_sequence(model_config, parse_schedule(cfg.schedule), T) * tokens / T
    if "ratios" in study:  # R tokens per baseline parameter, at the baseline's FLOPs per token
        base_config = probe.model_config(vocab)
        T = base_config.sequence_len
        tokens_per_step = probe.total_batch_size or probe.batch_size * probe.grad_accum * T
        params = parameter_counts(base_config).total
        budgets = [r * params / tokens_per_step * per_step["baseline"] for r in amounts]
    else:
        budgets = [float(b) for b in amounts]
    budgets = sorted(budgets)
    runs = []
    lrt_steps = {max(1, round(b / per_step["lrt"])) for b in budgets}  # equal steps: the baseline is read there too
    for cell in cells:
        steps = tuple(max(1, round(b / per_step[cell.name])) for b in budgets)
        for seed in seeds:
            out_dir = Path(out) / "runs" / cell.name / f"seed{seed}"
            cfg = cell.config(train, seed, out_dir, steps[-1])
            exact_at = sorted(set(steps) | (lrt_steps if cell.name == "baseline" else set()))
            cfg = dataclasses.replace(cfg, exact_at=exact_at, save_every=max(1, steps[-1] // 4), keep=1)
            runs.append(Run(cell, seed, steps[-1], steps, cfg))
    return Spec(path, str(study.get("name", path.stem)), seeds, budgets, train, cells, runs)


def open_study(out: Path) -> Spec:
    """The spec a study folder was run with (`lrt study run` keeps it as spec.toml)."""
    if not (out / "spec.toml").is_file():
        raise FileNotFoundError(f"{out} holds no study (no spec.toml): run `lrt study run SPEC --out {out}` first")
    return load_spec(out / "spec.toml", out)


# running ------------------------------------------------------------------------------------------


def status(run: Run) -> str:
    """finished, resumable (checkpoints, not the last) or fresh."""
    found = checkpoint.list_checkpoints(run.config.out)
    if not found:
        return "fresh"
    record = checkpoint.read_record(found[-1])
    return "finished" if record.get("final") and record["step"] >= run.steps else "resumable"


def describe(spec: Spec) -> str:
    """Every cell, its steps per budget, FLOPs and tokens: what `--dry-run` prints."""
    lines = [f"study {spec.name} ({spec.path}): {len(spec.cells)} cells x {len(spec.seeds)} seeds = {len(spec.runs)} runs; "
             f"budgets (training FLOPs): {', '.join(f'{b:.3g}' for b in spec.budgets)}",
             f"{'cell':<28}{'schedule':<16}{'steps per budget':<32}{'FLOPs/step':>12}{'tokens':>20}"]
    total = 0.0
    for cell in spec.cells:
        run = next(r for r in spec.runs if r.cell is cell)
        cfg = run.config
        T = cfg.seq_len or get_preset(cfg.preset).shape["sequence_len"]
        tokens = run.steps * (cfg.total_batch_size or cfg.batch_size * cfg.grad_accum * T)
        per_step = spec.budgets[-1] / run.steps
        total += per_step * run.steps * len(spec.seeds)
        lines.append(f"{cell.name:<28}{cell.schedule:<16}{', '.join(map(str, run.budget_steps)):<32}"
                     f"{per_step:>12.3g}{tokens:>20,}")
    lines.append(f"total training FLOPs: {total:.3g}")
    return "\n".join(lines)


def work(config_path: str) -> int:
    """One run in its own process (`lrt study run` starts these): fresh, or resumed."""
    import torch

    from .train import Trainer

    threads = int(os.environ.get("LRT_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
    resume = cfg.out if checkpoint.list_checkpoints(cfg.out) else None
    Trainer(cfg, resume=resume).train(progress=False)
    return 0


def run_study(spec: Spec, out: Path, jobs: int = 1, progress: bool = True) -> list[str]:
    """Run what is not finished; the failures, one line each. The study folder is locked while
    it runs, and belongs to one spec: another spec's runs are never taken for this one's."""
    folder = RunFolder(out, user="lrt study run").acquire()
    try:
        kept = out / "spec.toml"
        if kept.exists() and kept.read_bytes() != spec.path.read_bytes():
            raise ValueError(f"{out} holds another study ({kept} differs from {spec.path}): choose another --out, "
                             f"or continue it with lrt study run {kept} --out {out}")
        if not kept.exists():
            shutil.copyfile(spec.path, kept)
        return _run(spec, jobs, progress)
    finally:
        folder.release()


def _run(spec: Spec, jobs: int, progress: bool) -> list[str]:
    from tqdm import tqdm

    todo = [run for run in spec.runs if status(run) != "finished"]
    gpus = _gpus()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures: list[str] = []
    bar = tqdm(total=len(spec.runs), initial=len(spec.runs) - len(todo), desc="study", unit="run",
               disable=not progress, dynamic_ncols=True)

    def one(slot_run):
        slot, run = slot_run
        folder = Path(run.config.out)
        if status(run) == "fresh" and folder.exists():
            shutil.rmtree(folder)  # the study owns its run folders: a run that died before its first save starts over
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "study_config.json").write_text(json.dumps(run.config.to_dict()))
        env = {**os.environ, "LRT_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
        log = folder / "study.log"
        with open(log, "a") as f:
            code = subprocess.run([sys.executable, "-c", "import sys; from lrt.study import work; sys.exit(work(sys.argv[1]))",
                                   str(folder / "study_config.json")], env=env, stdout=f, stderr=f).returncode
        if code != 0:
            failures.append(f"{run.cell.name} seed {run.seed}: exit {code}, see {log}")
        bar.update(1)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, [(i % jobs, run) for i, run in enumerate(todo)]))
    bar.close()
    return failures


def _gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


# Student's t, 97.5% quantile, by degrees of freedom (past 30 the normal's 1.96, within 4% of t)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def ci95(values: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and the half-width of the 95% confidence interval of the mean
    (Student's t with n - 1 degrees of freedom)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    t = T_975.get(n - 1, 1.96)
    return mean, std, (t * std / math.sqrt(n) if n > 1 else math.inf)
