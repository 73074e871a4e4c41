"""What a study is: its spec (TOML) read and checked, and the jobs it trains.

A spec names a reference LRT, the baseline, and ablations that vary one field of the reference
(each variant a *cell*), budgets given as training FLOPs or as R tokens per baseline parameter
(`lrt.budget`, under either parameter convention), and optional stages. `load_spec` turns it into
`Job`s (a training run and the scoring of its end) grouped in `Unit`s (jobs one worker runs in
order: a trunk then its branches); study.py runs them. How budgets, pairing and stages are
designed: study.py's docstring.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..budget import CONVENTIONS, Arm, Budget
from ..config import LRTConfig, check_int, check_number, option
from ..data.tokenizer import load_tokenizer
from ..presets import COMPARATOR_SCHEDULES, VARIANTS, get_preset
from ..schedules import parse_schedule
from ..train import checkpoint
from ..train.config import TrainConfig
from ..train.init_from import run_model_config, source_of
from ..train.optim import OptimConfig

MODEL_FIELDS = {f.name for f in dataclasses.fields(LRTConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
OPTIM_FIELDS = {f.name for f in dataclasses.fields(OptimConfig)}
ARMS = ("baseline", "lrt")  # the two arms every stage has; ablations train like "lrt"
TRUNK_SAVE_EVERY = 100  # steps a killed study can lose of a trunk or branch
FIRST_SEEDS = 3  # main-stage seeds run before the control stage


# the spec ------------------------------------------------------------------------------------------


@dataclass
class StudySettings:
    """The spec's [study] table: a key that is not a field here is an error."""

    name: str | None = option(None, "the study's name (default: the spec file's name)")
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "a run of every cell per seed"})
    budgets: list[float] | None = option(None, "training FLOPs of each budget")
    ratios: list[float] | None = option(
        None, "or each budget as R tokens per baseline parameter, at the baseline's FLOPs per token"
    )
    convention: str = option(
        "total",
        "the parameters R counts: total, or nanochat's scaling parameters (matrices and lm_head; lrt.budget)",
        choices=CONVENTIONS,
    )
    cooldown: float = option(0.2, "share of each budget's steps over which its branch decays the rate to 0")
    equal_tokens: bool = option(True, "also branch the baseline at each of LRT's step counts (equal tokens)")
    eval_tokens: int = option(262144, "held-out tokens scored at each branch end")
    eval_batch_size: int = option(128, "rows per batch of that scoring")
    margin: float = option(0.01, "equivalence margin in BPB of the verdicts' two one-sided tests")

    def __post_init__(self):
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"study.name must be a non-empty string, got {self.name!r}")
        _check_seeds("study.seeds", self.seeds)
        if (self.budgets is None) == (self.ratios is None):
            raise ValueError("give study.budgets (training FLOPs) or study.ratios (tokens per parameter)")
        _check_amounts("the budgets", self.amounts)
        if self.convention not in CONVENTIONS:
            raise ValueError(f"study.convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        check_number("study.cooldown", self.cooldown, high=1)
        if not isinstance(self.equal_tokens, bool):
            raise ValueError(f"study.equal_tokens must be true or false, got {self.equal_tokens!r}")
        check_int("study.eval_tokens", self.eval_tokens)
        check_int("study.eval_batch_size", self.eval_batch_size)
        check_number("study.margin", self.margin, above=True)

    @property
    def amounts(self) -> list[float]:
        return self.budgets if self.budgets is not None else self.ratios


@dataclass
class LRCheck:
    """[lr_check]: one OptimConfig field and its values, trained per arm at the lowest budget."""

    field: str
    values: list[float]
    seeds: list[int]

    @classmethod
    def from_table(cls, table: dict) -> LRCheck:
        table = dict(table)
        seeds = table.pop("seeds", [0, 1])
        if len(table) != 1:
            raise ValueError(f"[lr_check] takes seeds and one OptimConfig field = [values], got {sorted(table)}")
        ((name, values),) = table.items()
        _check_keys("lr_check", {name: values}, OPTIM_FIELDS, "not an OptimConfig field")
        _check_seeds("lr_check.seeds", seeds)
        _check_amounts(f"lr_check.{name}", values)
        return cls(name, list(values), list(seeds))


@dataclass
class Control:
    """[control]: the top budgets again on a second corpus, for the arms baseline and lrt."""

    data: str
    ratios: list[float]
    val_data: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1])

    def __post_init__(self):
        if not isinstance(self.data, str) or not self.data:
            raise ValueError("control.data must name the second corpus")
        _check_amounts("control.ratios", self.ratios)
        _check_seeds("control.seeds", self.seeds)


@dataclass
class Comparators:
    """[comparators]: the paper's comparators (presets.COMPARATOR_SCHEDULES), each trained with its
    schedule and the baseline's learning rate at some of the study's budgets, paired seed by seed
    with the main stage's baseline and LRT at equal FLOPs and at LRT's tokens."""

    names: list[str]
    ratios: list[float] | None = None  # of study.ratios / study.budgets (default: all)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self):
        if not isinstance(self.names, list) or not self.names or not all(n in COMPARATOR_SCHEDULES for n in self.names):
            raise ValueError(
                f"comparators.names must list some of {', '.join(COMPARATOR_SCHEDULES)}, got {self.names!r}"
            )
        if self.ratios is not None:
            _check_amounts("comparators.ratios", self.ratios)
        _check_seeds("comparators.seeds", self.seeds)


@dataclass
class Referee:
    """[referee]: the reference LRT trained by each schedule for the same steps at a short length."""

    steps: int
    seq_len: int = 64
    schedules: list[str] = field(default_factory=lambda: ["sequential", "interleaved:2"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])

    def __post_init__(self):
        check_int("referee.steps", self.steps)
        check_int("referee.seq_len", self.seq_len, low=2)
        _check_seeds("referee.seeds", self.seeds)
        if len(self.schedules) < 2:
            raise ValueError("referee.schedules must name at least two schedules to compare")
        self.schedules = [parse_schedule(s).spec for s in self.schedules]


def _check_seeds(name: str, seeds) -> None:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"{name} must be a non-empty list of integers >= 0")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:  # one run counted twice: a narrower interval, and two jobs racing in one folder
        raise ValueError(f"{name} lists seed {twice[0]} more than once")


def _check_amounts(name: str, amounts) -> None:
    if not isinstance(amounts, list) or not amounts or not all(map(_positive, amounts)):
        raise ValueError(f"{name} must be a non-empty list of positive numbers")


def _positive(b) -> bool:
    return isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0


def _check_keys(table: str, d: dict, known: set[str], what: str) -> None:
    """A typo in a spec is an error, not a setting silently left at its default."""
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{table}.{k}' for k in unknown)} ({what})")


def _table(cls, name: str, table: dict):
    _check_keys(
        name,
        table,
        {f.name for f in dataclasses.fields(cls)},
        f"[{name}] takes " + ", ".join(f.name for f in dataclasses.fields(cls)),
    )
    try:
        return cls(**table)
    except TypeError as e:  # a required key missing
        raise ValueError(f"[{name}]: {e}") from None


@dataclass(frozen=True)
class Cell:
    """One variant: a name ("baseline", "lrt", "field=value" or a comparator's), its schedule and
    overrides, and whose learning rate it trains with: the baseline's (the comparators too, on its
    backbone) or LRT's (ablations too)."""

    name: str
    schedule: str
    model: dict
    train: dict
    arm: str = "lrt"

    def config(self, base: dict, **fields) -> TrainConfig:
        d = {**base, **self.train, "schedule": self.schedule, **fields}
        d["model"] = {**base.get("model", {}), **self.model}
        return TrainConfig.from_dict(d)


# the jobs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training run of the study and the scoring of its end: a trunk, a branch, or a whole
    run (lr_check, referee)."""

    path: Path  # the run folder
    config: TrainConfig
    info: dict  # stage, cell, seed, kind and, for a branch, its budget and pairing
    fork: Path | None = None  # a branch: the trunk's checkpoint it starts from
    memories: tuple[str, ...] = ()  # scored at the end into eval.json

    @property
    def steps(self) -> int:
        return self.config.steps


@dataclass(frozen=True)
class Unit:
    """Jobs one worker runs in order: a trunk then its branches, or one whole run."""

    stage: str
    jobs: tuple[Job, ...]


@dataclass
class Spec:
    path: Path
    out: Path
    name: str
    settings: StudySettings
    train: dict
    cells: list[Cell]
    arms: dict[str, Arm]  # cell name -> its model, schedule and tokens per step
    budgets: list[Budget]  # increasing
    units: list[Unit]
    lr_check: LRCheck | None = None
    control: Control | None = None
    referee: Referee | None = None
    comparators: Comparators | None = None
    comparator_cells: list[Cell] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return self.settings.seeds

    @property
    def reference(self) -> Cell:
        return next(c for c in self.cells if c.name == "lrt")

    @property
    def jobs(self) -> list[Job]:
        return [job for unit in self.units for job in unit.jobs]


def memories_of(cell: Cell) -> tuple[str, ...]:
    """What a run's end is scored with: LRT's exact, parallel and zero memory; the baseline's (and
    a looped transformer's) zero; PonderLM-2's exact and parallel (its thoughts are its memory)."""
    if cell.model.get("latent_thoughts"):
        return ("exact", "parallel")
    return ("zero",) if cell.schedule == "baseline" else ("exact", "parallel", "zero")


def branch_point(steps: int, cooldown: float) -> int:
    """The step a budget of `steps` leaves its trunk: where `lr_multiplier` starts decaying."""
    return steps - round(cooldown * steps)


def _trunk_units(
    spec: Spec, stage: str, cells: list[Cell], seeds: list[int], budgets: dict[int, Budget], train: dict
) -> list[Unit]:
    """Per cell and seed, a trunk and its branches: each budget (by its index in the stage's
    list), and for the baseline and the comparators LRT's step counts (equal tokens) where the
    study asks for them."""
    s = spec.settings
    lrt_steps = {b.steps(spec.arms["lrt"]) for b in budgets.values()}
    units = []
    for seed in seeds:
        for cell in cells:
            arm = spec.arms[cell.name]
            labels: dict[int, list[str]] = {}
            for i, b in budgets.items():
                labels.setdefault(b.steps(arm), []).append(f"flops:{i}")
            if cell.arm == "baseline" and s.equal_tokens:
                for i, b in budgets.items():
                    labels.setdefault(b.steps(spec.arms["lrt"]), []).append(f"tokens:{i}")
            root = spec.out / stage / cell.name / f"seed{seed}"
            points = sorted({branch_point(n, s.cooldown) for n in labels} - {0})
            trunk_steps = max(points, default=0)
            jobs = []
            if trunk_steps:
                optim = {**train.get("optim", {}), "warmdown_ratio": 0.0}
                cfg = cell.config(
                    {**train, "optim": optim},
                    seed=seed,
                    steps=trunk_steps,
                    out=str(root / "trunk"),
                    save_every=TRUNK_SAVE_EVERY,
                    keep=1,
                    save_at=points,
                    final_decode=False,
                    exact_at=[],
                    eval_every=max(1, trunk_steps // 8),
                )
                jobs.append(
                    Job(root / "trunk", cfg, {"stage": stage, "cell": cell.name, "seed": seed, "kind": "trunk"})
                )
            for n in sorted(labels):
                start = branch_point(n, s.cooldown)
                optim = {**train.get("optim", {}), "warmdown_ratio": s.cooldown}
                cfg = cell.config(
                    {**train, "optim": optim},
                    seed=seed,
                    steps=n,
                    out=str(root / f"steps_{n}"),
                    save_every=TRUNK_SAVE_EVERY,
                    keep=1,
                    final_decode=False,
                    exact_at=[],
                    eval_every=n,
                )
                fork = checkpoint.step_dir(root / "trunk", start) if start else None
                jobs.append(
                    Job(
                        root / f"steps_{n}",
                        cfg,
                        {
                            "stage": stage,
                            "cell": cell.name,
                            "seed": seed,
                            "kind": "branch",
                            "budgets": labels[n],
                            "equal_steps_as_lrt": n in lrt_steps,
                        },
                        fork,
                        memories_of(cell),
                    )
                )
            units.append(Unit(stage, tuple(jobs)))
    return units


def _lr_check_units(spec: Spec, check: LRCheck) -> list[Unit]:
    """Each arm at the lowest budget, once per value and seed: whole runs with the cooldown."""
    units = []
    budget = spec.budgets[0]
    for cell in spec.cells[:2]:
        n = budget.steps(spec.arms[cell.name])
        for value in check.values:
            for seed in check.seeds:
                optim = {**spec.train.get("optim", {}), check.field: value, "warmdown_ratio": spec.settings.cooldown}
                path = spec.out / "lr_check" / cell.name / f"{check.field}={value:g}" / f"seed{seed}"
                cfg = cell.config(
                    {**spec.train, "optim": optim},
                    seed=seed,
                    steps=n,
                    out=str(path),
                    keep=1,
                    save_every=TRUNK_SAVE_EVERY,
                    final_decode=False,
                    exact_at=[],
                    eval_every=n,
                )
                info = {"stage": "lr_check", "cell": cell.name, "seed": seed, "kind": "run", check.field: value}
                units.append(Unit("lr_check", (Job(path, cfg, info, memories=memories_of(cell)),)))
    return units


def _referee_units(spec: Spec, referee: Referee, train: dict) -> list[Unit]:
    """Each schedule per seed, on LRT's training settings (its checked learning rate, once chosen)."""
    units = []
    for seed in referee.seeds:
        for schedule in referee.schedules:
            cell = dataclasses.replace(spec.reference, schedule=schedule)
            path = spec.out / "referee" / schedule.replace(":", "-") / f"seed{seed}"
            optim = {**train.get("optim", {}), "warmdown_ratio": spec.settings.cooldown}
            cfg = cell.config(
                {**train, "optim": optim},
                seed=seed,
                steps=referee.steps,
                out=str(path),
                seq_len=referee.seq_len,
                keep=1,
                save_every=TRUNK_SAVE_EVERY,
                final_decode=False,
                exact_at=[],
                eval_every=max(1, referee.steps // 8),
            )
            info = {"stage": "referee", "cell": schedule, "seed": seed, "kind": "run"}
            units.append(Unit("referee", (Job(path, cfg, info, memories=("exact", "parallel", "zero")),)))
    return units


def load_spec(path: str | Path, out: str | Path) -> Spec:
    """Read and check a spec: every run's configuration is built, so a bad field fails now."""
    path, out = Path(path), Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: a study's folder must be a folder")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e})") from None
    tables = {"study", "train", "reference", "ablations", "lr_check", "control", "referee", "comparators"}
    unknown = set(raw) - tables
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {sorted(unknown)}")
    for name in sorted(tables & set(raw)):
        if not isinstance(raw[name], dict):
            raise ValueError(f"{path}: {name} must be a table ([{name}]), got {raw[name]!r}")
    try:
        spec = _build(path, out, raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return spec


def _cells(reference: dict, ablations: dict) -> list[Cell]:
    model, extra = _split(reference)
    cells = [
        Cell("baseline", "baseline", {}, {}, arm="baseline"),
        Cell("lrt", reference.get("schedule", "interleaved:2"), model, extra),
    ]
    for key, values in ablations.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"ablations.{key} must be a non-empty list of values")
        for value in values:
            variant = {**reference, key: value}
            model, extra = _split(variant)
            label = value if isinstance(value, str) else json.dumps(value)  # reset_memory_at_bos=true
            cells.append(Cell(f"{key}={label}", variant.get("schedule", "interleaved:2"), model, extra))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"two cells are the same variant ({names})")
    return cells


def _split(fields: dict) -> tuple[dict, dict]:
    """Model fields and training fields of a table."""
    return (
        {k: v for k, v in fields.items() if k in MODEL_FIELDS},
        {k: v for k, v in fields.items() if k not in MODEL_FIELDS and k != "schedule"},
    )


def _build(path: Path, out: Path, raw: dict) -> Spec:
    settings = _table(StudySettings, "study", raw.get("study", {}))
    train = dict(raw.get("train", {}))
    for key in ("model", "optim"):
        if not isinstance(train.get(key, {}), dict):
            raise ValueError(f"train.{key} must be a table ([train.{key}]), got {train[key]!r}")
    # checked here: TrainConfig.from_dict drops unknown keys (fields of older checkpoints)
    _check_keys("train", train, TRAIN_FIELDS, "not a TrainConfig field")
    _check_keys("train.optim", train.get("optim", {}), OPTIM_FIELDS, "not an OptimConfig field")
    set_by_study = {
        "seed",
        "steps",
        "out",
        "save_at",
        "save_every",
        "keep",
        "exact_at",
        "final_decode",
        "eval_every",
        "schedule",
    }
    _check_keys("train", {k: v for k, v in train.items() if k in set_by_study}, set(), "the study sets it per run")
    _check_keys(
        "train.optim",
        {k: v for k, v in train.get("optim", {}).items() if k == "warmdown_ratio"},
        set(),
        "the study sets it: trunks 0, branches study.cooldown",
    )
    reference, ablations = dict(raw.get("reference", {})), raw.get("ablations", {})
    for table, d in (("reference", reference), ("ablations", ablations)):
        _check_keys(table, d, MODEL_FIELDS | TRAIN_FIELDS, "neither an LRTConfig nor a TrainConfig field")
        _check_keys(
            table, {k: v for k, v in d.items() if k in set_by_study - {"schedule"}}, set(), "the study sets it per run"
        )
    cells = _cells(reference, ablations)
    comparators = _table(Comparators, "comparators", raw["comparators"]) if "comparators" in raw else None
    comparator_cells = [
        Cell(name, COMPARATOR_SCHEDULES[name], VARIANTS[name], {}, arm="baseline")
        for name in (comparators.names if comparators else [])
    ]
    if isinstance(train.get("init_from"), str) and train["init_from"]:  # every run starts from one checkpoint,
        # recorded as its runs record it (another type is TrainConfig's one-line error below)
        train["init_from"] = str(checkpoint.resolve(train["init_from"]).resolve())
    probe = cells[0].config(train, out=str(out))
    try:
        vocab = (
            load_tokenizer(probe.tokenizer).vocab_size
            if probe.init_from is None
            else source_of(probe.init_from)[1]["config"]["vocab_size"]
        )
    except FileNotFoundError:  # not trained yet (a dry run of a GPU study): the preset's vocabulary
        vocab = get_preset(probe.preset).bench_vocab
    arms = {}
    for cell in cells + comparator_cells:  # each run is one process (a GPU or a share of the cores): world size 1
        cfg = cell.config(train, out=str(out))
        model_config = run_model_config(cfg, vocab, bos_id=0)
        arms[cell.name] = Arm(
            model_config,
            parse_schedule(cfg.schedule),
            cfg.tokens_per_step(world_size=1, seq_len=model_config.sequence_len),
        )
    budgets = _budgets(arms, settings.amounts, settings.budgets is not None, settings.convention)
    spec = Spec(path, out, settings.name or path.stem, settings, train, cells, arms, budgets, [])
    spec.comparators, spec.comparator_cells = comparators, comparator_cells
    if comparators is not None and comparators.ratios is not None:
        missing = [r for r in comparators.ratios if r not in settings.amounts]
        if missing:
            raise ValueError(f"comparators.ratios {missing} are not budgets of the study ({settings.amounts})")
    if "lr_check" in raw:
        spec.lr_check = LRCheck.from_table(raw["lr_check"])
    if "control" in raw:
        spec.control = _table(Control, "control", raw["control"])
    if "referee" in raw:
        spec.referee = _table(Referee, "referee", raw["referee"])
    spec.units = plan_units(spec, read_lr_choice(spec))
    return spec


def _budgets(arms: dict[str, Arm], amounts: list[float], as_flops: bool, convention: str) -> list[Budget]:
    kind = "flops" if as_flops else "ratio"
    return sorted(
        (Budget.of(arms["baseline"], **{kind: a}, convention=convention) for a in amounts), key=lambda b: b.flops
    )


def plan_units(spec: Spec, choice: dict[str, float] | None) -> list[Unit]:
    """Every job, in the order they run: the learning-rate check, the referee, then trunks seed
    by seed (a seed's arms side by side, so finished seeds pair up early), the control after the
    first three seeds."""
    train = spec.train
    if spec.lr_check is not None and choice is not None:
        field_ = spec.lr_check.field
        train = {**train, "optim": {**train.get("optim", {}), field_: choice["lrt"]}}
    units = []
    if spec.lr_check is not None:
        units += _lr_check_units(spec, spec.lr_check)
    if spec.referee is not None:
        units += _referee_units(spec, spec.referee, train)
    stages = {}
    for stage, cells, seeds, budgets, base in _trunk_stages(spec, train):
        per_arm = []
        for cell in cells:  # each arm with its own learning rate
            arm_train = base
            if spec.lr_check is not None and choice is not None:
                arm_train = {**base, "optim": {**base.get("optim", {}), spec.lr_check.field: choice[cell.arm]}}
            per_arm.append(_trunk_units(spec, stage, [cell], seeds, budgets, arm_train))
        stages[stage] = [u for by_seed in zip(*per_arm) for u in by_seed]
    # the comparators and the control come after the main stage's first seeds: a study stopped
    # early still has the main comparison and them
    first = len(spec.cells) * min(FIRST_SEEDS, len(spec.seeds))
    main = stages["main"]
    return units + main[:first] + stages.get("comparators", []) + stages.get("control", []) + main[first:]


def _trunk_stages(spec: Spec, train: dict):
    yield "main", spec.cells, spec.seeds, dict(enumerate(spec.budgets)), train
    if spec.comparators is not None:  # at the main stage's budgets (and indices), to pair with its runs
        c, amounts = spec.comparators, spec.settings.amounts
        chosen = {i: b for i, b in enumerate(spec.budgets) if c.ratios is None or sorted(amounts)[i] in c.ratios}
        yield "comparators", spec.comparator_cells, c.seeds, chosen, train
    if spec.control is not None:
        c = spec.control
        budgets = _budgets(spec.arms, c.ratios, False, spec.settings.convention)
        yield (
            "control",
            spec.cells[:2],
            c.seeds,
            dict(enumerate(budgets)),
            {**train, "data": c.data, "val_data": c.val_data},
        )


def waits_for_lr_check(spec: Spec) -> bool:
    return spec.lr_check is not None and read_lr_choice(spec) is None


def read_lr_choice(spec: Spec) -> dict[str, float] | None:
    path = spec.out / "lr_choice.json"
    return json.loads(path.read_text())["choice"] if path.is_file() else None


def open_study(out: Path) -> Spec:
    """The spec a study folder was run with (`lrt study run` keeps it as spec.toml)."""
    if not (out / "spec.toml").is_file():
        raise FileNotFoundError(f"{out} holds no study (no spec.toml): run `lrt study run SPEC --out {out}` first")
    return load_spec(out / "spec.toml", out)


def corpus_tokens(cfg: TrainConfig) -> int | None:
    """Training tokens of a run's corpus (documents with their BOS) where that is cheap to know:
    text in memory; None for parquet shards or data not there yet."""
    from ..data import train_val_sources
    from ..data.sources import TextSource

    try:
        source, _ = train_val_sources(cfg.data, cfg.val_data)
        tokenizer = load_tokenizer(cfg.tokenizer)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(source, TextSource):
        return None
    return sum(len(tokenizer.encode(d)) + 1 for d in source.documents)


def arm_of(spec: Spec, job: Job) -> Arm:
    """The arm a job trains (the referee's schedules at their own length)."""
    if job.info["stage"] != "referee":
        return spec.arms[job.info["cell"]]
    cfg = job.config
    model = run_model_config(cfg, spec.arms["lrt"].config.vocab_size, bos_id=0)
    return Arm(model, parse_schedule(cfg.schedule), cfg.tokens_per_step(world_size=1, seq_len=model.sequence_len))


# runs trained under another spec ------------------------------------------------------------------


def config_differences(want: TrainConfig, have: dict, who: str) -> list[str]:
    """What a run recorded (`have`, a TrainConfig's dict) differs in from `want`, one
    `field=recorded (the <who> says wanted)` each, nested tables as dotted fields. The recorded
    dict goes through TrainConfig first, so a field a newer lrt added is its default, not a
    difference; `out` is left out: the folder is the run, however the path was spelled."""

    def flat(d: dict, prefix: str = "") -> dict:
        items: dict = {}
        for key, value in d.items():
            if isinstance(value, dict) and value:
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[f"{prefix}{key}"] = value
        return items

    mine, theirs = flat(want.to_dict()), flat(TrainConfig.from_dict(have).to_dict())
    return [
        f"{key}={theirs.get(key)!r} (the {who} says {mine.get(key)!r})"
        for key in sorted(mine.keys() | theirs.keys())
        if key != "out" and mine.get(key) != theirs.get(key)
    ]


def recorded_config(job: Job) -> dict | None:
    """The config a job's folder was trained with: its newest checkpoint's, else the job.json its
    launch wrote (a run that has not saved yet, or an lr_check rate that diverged); None for a
    folder the study never started."""
    found = checkpoint.list_checkpoints(job.path)
    if found:
        return checkpoint.read_record(found[-1]).get("train_config")
    launched = job.path / "job.json"
    if not launched.is_file():
        return None
    try:
        config = json.loads(launched.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict):  # a broken job.json: nothing the study can count as its run
        raise ValueError(f"{launched} is not a job file lrt study wrote: delete that run folder to train it again")
    return config


def job_differences(job: Job) -> list[str]:
    """How the run in a job's folder was trained otherwise than the spec says (empty: it was
    trained so, or not started)."""
    recorded = recorded_config(job)
    return [] if recorded is None else config_differences(job.config, recorded, "spec")


def other_runs(spec: Spec, jobs: list[Job] | None = None) -> str | None:
    """One line naming the runs of the study's folder trained under another spec (an edited
    spec.toml) and what differs, or None when every run is the spec's. Such a run is never counted
    as the spec's: neither done for `lrt study run` nor reported by `lrt study report`."""
    found = [(job, d) for job in (spec.jobs if jobs is None else jobs) if (d := job_differences(job))]
    if not found:
        return None
    shown = "; ".join(f"{job.path.relative_to(spec.out)}: {', '.join(d)}" for job, d in found[:3])
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    return (
        f"{spec.out} holds {len(found)} run(s) trained under another spec ({shown}{more}): "
        f"delete those run folders to train them as {spec.path} says, or choose another --out"
    )
