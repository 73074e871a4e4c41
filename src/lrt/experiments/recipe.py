"""`lrt recipe paper-d20`: the paper's 20-layer pretraining comparison, end to end.

1. a byte-level BPE tokenizer trained on the FineWeb-Edu shards;
2. the baseline pretrained for R tokens per (baseline) parameter, and LRT-shared Interleaved S=2
   for the same training FLOPs (about half the steps), both under torchrun;
3. `eval bpb` (the LRT's exact-memory BPB is the one generation gets) and `eval core` of both;
4. a summary table and `report.json`.

Every stage is an `lrt` command, printed before it runs, so the recipe is also its own
documentation; a stage whose output exists is skipped, and a training stage killed midway resumes
from its newest checkpoint (`lrt train --resume`; each saves every tenth of its steps), so a killed
recipe continues. `--smoke` runs
the whole chain on tiny sizes on the CPU: 2 processes under torchrun (gloo), shards made from
the bundled corpus, a sample CORE bundle, in a few minutes.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..budget import CONVENTIONS, Arm, Budget
from ..config import LRTConfig, check_int, check_number, option
from ..data.tokenizer import BPETokenizer
from ..presets import get_preset
from ..schedules import Interleaved
from ..train import checkpoint
from ..train.checkpoint import step_dir
from .study_spec import config_differences

# a training stage saves every tenth of its steps: a kill loses at most a tenth of the run
SAVES_PER_RUN = 10


@dataclass(frozen=True)
class RecipeSettings:
    """What `lrt recipe paper-d20` runs; the fields with help are its flags (cli/experiments.py)."""

    out: str = option("runs/paper_d20", "folder of every stage (default runs/paper_d20)")
    smoke: bool = option(False, "the whole chain on tiny sizes on the CPU (2 processes)")
    # processes per node (default: the GPUs here, else 2 on CPU)
    nproc: int | None = option(None, "processes (default: the GPUs here)")
    # the paper's R: the baseline trains R x its parameters in tokens (lrt.budget)
    ratio: float = option(10.0, "tokens per baseline parameter (default 10)")
    convention: str = option(
        "total",
        "the parameters R counts: total (default) or scaling (nanochat's: the matrices and lm_head)",
        choices=CONVENTIONS,
    )
    preset: str = "d20"
    seq_len: int = 2048
    vocab_size: int = 32768
    # tokens per optimizer step (nanochat's d20 choice)
    total_batch_size: int = option(524288, "tokens per step (default 524288)")
    # d20 LRT at 8 x 2048 peaks at 62.4 GiB (fits 80 GB GPUs); at 16 it would need about 116 GiB (README)
    batch_size: int = option(8, "sequences per micro-batch and rank (8)")
    # `lrt download shards` and `lrt download core-bundle` fetch these
    data: str = option("data/fineweb-edu", "FineWeb-Edu parquet shards (default data/fineweb-edu)")
    bundle: str = option("data/eval_bundle", "the CORE bundle (default data/eval_bundle)")
    tokenizer_chars: int = 2_000_000_000
    eval_tokens: int = 1_048_576

    def __post_init__(self):
        for name in ("seq_len", "vocab_size", "total_batch_size", "batch_size", "tokenizer_chars", "eval_tokens"):
            check_int(name, getattr(self, name))
        if self.nproc is not None:
            check_int("nproc", self.nproc)
        check_number("ratio", self.ratio, above=True)
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        for name in ("out", "data", "bundle"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        get_preset(self.preset)


# `lrt recipe paper-d20 --smoke`: the whole chain on tiny sizes on the CPU
SMOKE = RecipeSettings(
    smoke=True,
    nproc=2,
    ratio=0.05,
    preset="tiny",
    seq_len=64,
    vocab_size=512,
    total_batch_size=512,
    batch_size=4,
    tokenizer_chars=2_000_000,
    eval_tokens=2048,
)


def _command(args: list[str], nproc: int) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    return [sys.executable, *launcher, "-m", "lrt", *args]


def plan(s: RecipeSettings, vocab_size: int) -> dict:
    """Steps of each run: the baseline sees at least R x its parameters in tokens (whole steps,
    rounded up); LRT gets the FLOPs of those steps."""
    shape = {**get_preset(s.preset).shape, "sequence_len": s.seq_len}
    lrt = Arm(LRTConfig(vocab_size=vocab_size, **shape), Interleaved(subsets=2), s.total_batch_size)
    base = lrt.baseline
    base_steps = Budget.of(lrt, ratio=s.ratio, convention=s.convention).steps(base, round_up=True)
    equal = Budget(flops=base_steps * base.flops_per_step)
    steps = {"baseline": base_steps, "lrt": equal.steps(lrt)}
    reach = {name: dataclasses.asdict(equal.reach(arm)) for name, arm in (("baseline", base), ("lrt", lrt))}
    return {
        "baseline_params": base.params(s.convention),
        "tokens_per_param": s.ratio,
        "convention": s.convention,
        "flop_ratio": lrt.flop_ratio,
        "steps": steps,
        "reach": reach,
    }


def smoke_data(root: Path) -> tuple[Path, Path]:
    """Parquet shards of the bundled corpus (3 shards, the last validation) and a sample CORE bundle."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..data import bundled_corpus
    from ..evaluate.core import write_sample_bundle

    shards, bundle = root / "shards", root / "sample_bundle"
    if not shards.exists():
        train, val = bundled_corpus()
        shards.mkdir(parents=True)
        third = len(train.documents) // 2
        for i, docs in enumerate((train.documents[:third], train.documents[third:], val.documents)):
            pq.write_table(pa.table({"text": docs}), shards / f"shard_{i:05d}.parquet", row_group_size=64)
    if not bundle.exists():
        write_sample_bundle(bundle)
    return shards, bundle


def run_recipe(s: RecipeSettings, log=print) -> dict:
    """Run every stage (skipping finished ones) and return the report."""
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    nproc = s.nproc or (torch.cuda.device_count() or 2)
    data, bundle = smoke_data(out) if s.smoke else (Path(s.data), Path(s.bundle))
    for path, how in ((data, "lrt download shards"), (bundle, "lrt download core-bundle")):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: fetch it with `{how}` (or run the recipe with --smoke)")

    def stage(args: list[str], done: Path, processes: int = 1) -> None:
        command = _command(args, processes)
        if done.exists():
            log(f"[done] {shlex.join(command[1:])}")
            return
        log(f"[run]  {shlex.join(command[1:])}")
        if subprocess.run(command, stdout=sys.stderr).returncode != 0:  # stdout is the recipe's table
            raise ValueError(f"the recipe stopped: `{shlex.join(command[1:])}` failed")

    tokenizer = out / "tokenizer.json"
    stage(
        [
            "tokenizer",
            "train",
            "--data",
            str(data),
            "--vocab-size",
            str(s.vocab_size),
            "--max-chars",
            str(s.tokenizer_chars),
            "--out",
            str(tokenizer),
        ],
        tokenizer,
    )
    steps = plan(s, BPETokenizer.load(tokenizer).vocab_size)
    log(
        f"baseline: {steps['baseline_params']:,} parameters x R={s.ratio:g} tokens each: {steps['steps']['baseline']} "
        f"steps of {s.total_batch_size:,} tokens; LRT step = {steps['flop_ratio']:.2f} baseline steps: "
        f"{steps['steps']['lrt']} steps"
    )
    common = [
        "--data",
        str(data),
        "--tokenizer",
        str(tokenizer),
        "--preset",
        s.preset,
        "--seq-len",
        str(s.seq_len),
        "--total-batch-size",
        str(s.total_batch_size),
        "--batch-size",
        str(s.batch_size),
        "--eval-tokens",
        str(s.eval_tokens),
        "--no-final-decode",
    ]
    common += ["--device", "cpu"] if s.smoke else ["--dtype", "bfloat16", "--compile"]
    report = {"settings": dataclasses.asdict(s), **steps, "runs": {}}
    for name, schedule in (("baseline", "baseline"), ("lrt", "interleaved:2")):
        run_dir = out / name
        n = steps["steps"][name]
        train = [
            "train",
            *common,
            "--schedule",
            schedule,
            "--steps",
            str(n),
            "--eval-every",
            str(max(1, n // 4)),
            "--save-every",
            str(max(1, -(-n // SAVES_PER_RUN))),
            "--out",
            str(run_dir),
        ]
        if not step_dir(run_dir, n).exists():
            train += resume_flags(train, run_dir)
        stage(train, step_dir(run_dir, n), nproc)
        memory = "parallel,exact,zero" if name == "lrt" else "zero"
        bpb, core = run_dir / "bpb.json", run_dir / "core.json"
        stage(
            ["eval", "bpb", str(run_dir), "--memory", memory, "--tokens", str(s.eval_tokens), "--json", str(bpb)],
            bpb,
            nproc,
        )
        stage(
            ["eval", "core", str(run_dir), "--bundle", str(bundle), "--memory", "exact", "--json", str(core)],
            core,
            nproc,
        )
        report["runs"][name] = {"steps": n, "bpb": json.loads(bpb.read_text()), "core": json.loads(core.read_text())}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def resume_flags(train: list[str], run_dir: Path) -> list[str]:
    """`--resume run_dir` where a killed recipe left this stage's run half trained (a fresh
    `lrt train` refuses a folder holding a run); nothing where the stage has not saved yet, after
    removing what a run killed before its first save left (nothing of it can be continued). A run
    of other settings (another --ratio, a hand-made folder) is refused in one line: its steps are
    not this stage's."""
    from ..cli import build_parser
    from ..cli.train import train_config_from_args
    from .study import start_over

    found = checkpoint.list_checkpoints(run_dir)
    if not found:
        if run_dir.exists():
            start_over(run_dir)
        return []
    want = train_config_from_args(build_parser().parse_args(train))
    have = checkpoint.read_record(found[-1]).get("train_config", {})
    # how often it saves and how many it keeps do not change what it trains
    differs = [d for d in config_differences(want, have, "recipe") if d.split("=")[0] not in ("save_every", "keep")]
    if differs:
        raise ValueError(
            f"{run_dir} holds a run of other settings ({', '.join(differs)}): "
            "choose another --out, or delete it to train it again"
        )
    return ["--resume", str(run_dir)]


def format_recipe(report: dict) -> str:
    base, lrt = report["runs"]["baseline"], report["runs"]["lrt"]
    rows = [
        ("", "baseline", "LRT-shared interleaved:2"),
        ("steps (equal training FLOPs)", str(base["steps"]), str(lrt["steps"])),
        ("val BPB (exact memory for LRT)", f"{base['bpb']['zero']:.4f}", f"{lrt['bpb']['exact']:.4f}"),
        ("val BPB, training schedule", "", f"{lrt['bpb']['parallel']:.4f}"),
        ("CORE (exact memory)", f"{base['core']['core']:.4f}", f"{lrt['core']['core']:.4f}"),
    ]
    width = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
    lines = ["".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip() for row in rows]
    counted = "" if report.get("convention", "total") == "total" else f" ({report['convention']} convention)"
    return "\n".join(
        [
            f"R = {report['tokens_per_param']:g} tokens per baseline parameter{counted} "
            f"({report['baseline_params']:,} parameters)",
            *lines,
        ]
    )
