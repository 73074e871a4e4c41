"""`lrt study publish`: a study as a small folder to commit beside the code.

The folder holds what regenerates the report (spec.toml, lr_choice.json, results.jsonl) and the
report itself (report.md and its plots), and under runs/ every run's eval.json, train_config.json,
core.json (its CORE, where scored) and metrics.jsonl with the training records thinned to every
`every`-th step (validations and the final record all kept). Checkpoints stay behind. The run
files sit under runs/, not at the runs' own paths, so `lrt study report` on the folder reads
results.jsonl rather than collecting again from runs it no longer has whole. `lrt study restore`
puts them back at their paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..train.curves import read_metrics
from .study_plots import PLOTS
from .study_report import write_report
from .study_results import RESULTS, read_results, study_records
from .study_spec import Spec, load_spec

KEPT = ("spec.toml", "lr_choice.json", RESULTS, "report.md", *PLOTS)
RUN_FILES = ("eval.json", "train_config.json", "core.json")


def publish(spec: Spec, dest: Path, every: int = 10) -> Path:
    """The study of `spec` (its report written again first) published into `dest`, which must not
    exist or be empty; written beside it and renamed, so an interrupted publish leaves no half folder."""
    dest = Path(dest)
    if dest.resolve() == spec.out.resolve() or spec.out.resolve() in dest.resolve().parents:
        raise ValueError(f"publish into a folder outside the study, not {dest}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} exists and is not an empty folder: publish into a new one (nothing was changed)")
    write_report(spec, study_records(spec))
    staging = dest.parent / f".{dest.name}.publishing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in KEPT:
        if (spec.out / name).is_file():
            shutil.copy2(spec.out / name, staging / name)
    for job in spec.jobs:
        if job.path.is_dir():
            copy_run(job.path, staging / "runs" / job.path.relative_to(spec.out), every)
    check_regenerates(staging, spec.out / "report.md")
    if dest.exists():
        dest.rmdir()  # empty, checked above
    staging.rename(dest)
    return dest


def restore(published: Path, out: Path) -> Path:
    """A published study as a study folder again, each run's files at its own path, for `lrt study
    run` to continue on another machine: more seeds or stages, or a run whose folder was deleted.
    Its scored runs count as done; a trunk trains again only where one of its branches is still to
    run (`study.to_run`), since its checkpoints were not published; results.jsonl keeps what only
    checkpoints gave (the referee's comparisons)."""
    published, out = Path(published), Path(out)
    if not (published / "spec.toml").is_file() or not (published / "runs").is_dir():
        raise ValueError(f"{published} is not a published study (no spec.toml and runs/ in it): see lrt study publish")
    if published.resolve() in (out.resolve(), *out.resolve().parents):
        raise ValueError(f"restore into a folder outside the published study, not {out}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: restore into a new one (nothing was changed)")
    load_spec(published / "spec.toml", published)  # a spec this lrt cannot run is refused now, not at run
    staging = out.parent / f".{out.name}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(published / "runs", staging)
    for name in ("spec.toml", "lr_choice.json", RESULTS):  # results.jsonl: what only checkpoints gave
        if (published / name).is_file():
            shutil.copy2(published / name, staging / name)
    if out.exists():
        out.rmdir()  # empty, checked above
    staging.rename(out)
    return out


def copy_run(src: Path, dest: Path, every: int) -> None:
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    if (src / "metrics.jsonl").is_file():
        records = read_metrics(src / "metrics.jsonl")
        last_train = max((r["step"] for r in records if r["kind"] == "train"), default=None)
        kept = [r for r in records if r["kind"] != "train" or r["step"] % every == 0 or r["step"] == last_train]
        (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def check_regenerates(folder: Path, report: Path) -> None:
    """The published records give the study's report word for word (else nothing is published)."""
    copy = load_spec(folder / "spec.toml", folder)
    regenerated = write_report(copy, read_results(folder / RESULTS)).read_text()
    if regenerated != report.read_text():
        shutil.rmtree(folder)
        raise RuntimeError("the published records do not regenerate the study's report: nothing was published")
