"""A study's results as records: what `lrt study report` reads.

**Records.** `collect` turns every finished job of a study folder into one small JSON record and
writes them to results.jsonl. The report is computed from the records alone, so a folder that
holds only spec.toml and results.jsonl (docs/study/) regenerates the same report.md; where the
run folders are there, `lrt study report` collects them again first. A job's record:

    stage, cell, seed, kind    as Job.info ("trunk", "branch", or "run" for lr_check and referee)
    path                       the run folder, relative to the study folder
    budgets                    a branch's labels: "flops:i" (budget i at equal training FLOPs),
                               "tokens:i" (the baseline at LRT's step count of budget i)
    steps, tokens, flops       what the job trains (training FLOPs count every pass)
    R_total, R_scaling         tokens per parameter of its own model, under both conventions
    corpus_tokens, epochs      its training corpus's tokens and tokens / corpus_tokens (None where
                               the corpus's size is not cheap to know)
    lr                         {field: value} of the lr check's field it trained with (specs with
                               an [lr_check]; read from the run's train_config.json)
    eval                       its eval.json (branches and whole runs)
    curve                      [step, training FLOPs, val_bpb] of its validations (trunks and
                               whole runs: val_bpb under the training schedule's memory)
    core                       {"core", "bundle"}: CORE with exact memory (branches scored with
                               `--bundle`; cached beside the run as core.json)

and per referee seed and schedule other than the first, a comparison with the first (sequential)
model, computed from both checkpoints on the same held-out rows (`compare_memories`):

    stage "referee", kind "comparison", seed, cell (the other schedule), reference (the first)
    rows, seq_len              the held-out rows read, with exact memory, by both models
    loss_diff                  per-token loss (bits) of the other minus the reference's
    cosine                     cosine of the two models' memory vectors at the same positions
    state_norm                 {schedule: summary}: norms of the source states before their RMS norm

each summary being {mean, std, q05, q25, q50, q75, q95}.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..memory import read
from ..train import checkpoint
from ..train.curves import read_metrics
from .study_spec import Job, Spec, arm_of, corpus_tokens, other_runs

RESULTS = "results.jsonl"
REFEREE_ROWS = 64  # held-out rows the referee's two models read with exact memory
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# records -------------------------------------------------------------------------------------------


def collect(spec: Spec, bundle: str | None = None) -> list[dict]:
    """A record per finished job and a referee comparison per seed, written to results.jsonl and
    returned as it holds them. With a CORE bundle, every branch end is also scored on it."""
    path = spec.out / RESULTS
    kept = read_results(path) if path.is_file() else []
    corpora: dict[tuple, int | None] = {}  # a corpus is tokenized once, not once per run
    records = [r for job in spec.jobs if (r := job_record(spec, job, corpora, bundle)) is not None]
    records += referee_records(spec, records, kept)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.rename(path)
    return read_results(path)


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def study_records(spec: Spec, bundle: str | None = None) -> list[dict]:
    """Collected from the run folders where they are here, else read from results.jsonl (a
    published study keeps only spec.toml and results.jsonl)."""
    if any(job.path.is_dir() for job in spec.jobs):
        if (problem := other_runs(spec)) is not None:  # an edited spec.toml: its old runs are not its results
            raise ValueError(problem)
        return collect(spec, bundle)
    if bundle is not None:
        raise ValueError(f"{spec.out} holds no run folders: CORE (--bundle) needs the trained models")
    path = spec.out / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{spec.out} holds neither the study's runs nor {RESULTS}: run `lrt study run` first")
    return read_results(path)


def job_record(spec: Spec, job: Job, corpora: dict, bundle: str | None) -> dict | None:
    """A job's record, or None where it has nothing to report yet (a trunk counts once it has
    validated: its curve so far)."""
    scored, metrics = job.path / "eval.json", job.path / "metrics.jsonl"
    if not (scored.is_file() if job.memories else metrics.is_file()):
        return None
    cfg = job.config
    arm = arm_of(spec, job)
    key = (cfg.data, cfg.val_data, cfg.tokenizer)
    if key not in corpora:
        corpora[key] = corpus_tokens(cfg)
    tokens = job.steps * arm.tokens_per_step
    record = {
        **{k: job.info[k] for k in ("stage", "cell", "seed", "kind")},
        "path": str(job.path.relative_to(spec.out)),
        "budgets": job.info.get("budgets", []),
        "steps": job.steps,
        "tokens": tokens,
        "flops": job.steps * arm.flops_per_step,
        "R_total": tokens / arm.params("total"),
        "R_scaling": tokens / arm.params("scaling"),
        "corpus_tokens": corpora[key],
        "epochs": None if corpora[key] is None else tokens / corpora[key],
    }
    if spec.lr_check is not None:
        saved = job.path / "train_config.json"
        optim = json.loads(saved.read_text())["optim"] if saved.is_file() else vars(cfg.optim)
        record["lr"] = {spec.lr_check.field: optim[spec.lr_check.field]}
    if job.memories:
        record["eval"] = json.loads(scored.read_text())
    if job.info["kind"] != "branch" and metrics.is_file():
        record["curve"] = [
            [r["step"], r["flops"], r["val_bpb"]] for r in read_metrics(metrics) if r["kind"] in ("eval", "final")
        ]
    if job.info["kind"] == "branch":
        if bundle is not None:
            core_score(job.path, bundle)
        if (job.path / "core.json").is_file():
            record["core"] = json.loads((job.path / "core.json").read_text())
    return record


def core_score(path: Path, bundle: str) -> None:
    """CORE with exact memory of a run's final model, cached beside it as core.json for that
    bundle (another bundle is scored again)."""
    from ..evaluate.core import evaluate_core

    cached = path / "core.json"
    if cached.is_file() and json.loads(cached.read_text()).get("bundle") == str(bundle):
        return
    trained = checkpoint.load_run(path)
    result = evaluate_core(trained.model, trained.tokenizer, bundle, memory="exact", progress=False)
    cached.write_text(json.dumps({"core": result.core, "bundle": str(bundle)}))


# the referee's experiment --------------------------------------------------------------------------


def referee_records(spec: Spec, records: list[dict], kept: list[dict]) -> list[dict]:
    """Per referee seed, each schedule's model compared with the first schedule's. A comparison
    already in results.jsonl is kept (a finished run never changes), so the checkpoints are read
    once, and a published study keeps its comparisons without them."""
    if spec.referee is None:
        return []
    reference, *others = spec.referee.schedules
    finished = {(r["cell"], r["seed"]): r for r in records if r["stage"] == "referee" and r["kind"] == "run"}
    previous = {(r["cell"], r["seed"]): r for r in kept if r["stage"] == "referee" and r["kind"] == "comparison"}
    out = []
    for seed in spec.referee.seeds:
        for other in others:
            if (other, seed) in previous:
                out.append(previous[(other, seed)])
                continue
            paths = [spec.out / finished[(s, seed)]["path"] for s in (reference, other) if (s, seed) in finished]
            if len(paths) == 2 and all(map(checkpoint.list_checkpoints, paths)):
                out.append(
                    {
                        "stage": "referee",
                        "kind": "comparison",
                        "seed": seed,
                        "cell": other,
                        "reference": reference,
                        **compare_runs(*paths),
                    }
                )
    return out


def compare_runs(reference: Path, other: Path) -> dict:
    """`compare_memories` of two runs' final models on REFEREE_ROWS rows of the reference run's
    held-out data, at its length."""
    from ..data import train_val_sources, validation_rows

    first, second = checkpoint.load_run(reference), checkpoint.load_run(other)
    cfg = first.train_config
    seq_len = first.model.config.sequence_len
    rows = validation_rows(
        train_val_sources(cfg.data, cfg.val_data)[1], first.tokenizer, seq_len, REFEREE_ROWS * seq_len
    )
    names = (cfg.schedule, second.train_config.schedule)
    return compare_memories(first.model, second.model, rows, first.tokenizer.token_bytes(), names=names)


@torch.no_grad()
def compare_memories(
    reference, other, rows: torch.Tensor, token_bytes: torch.Tensor, *, names: tuple[str, str]
) -> dict:
    """Two models read the same rows (N, T + 1) with exact memory: the other's per-token loss
    minus the reference's (bits, tokens with bytes only, as BPB counts them), the cosine between
    their memory vectors m_t = norm(h_{t-1}) at the same positions (the RMS norm does not change
    a cosine), and the norms of the source states h before that norm (m's own norm is sqrt(d) by
    construction, so the models' scales show only before it)."""
    device = next(reference.parameters()).device
    rows = rows.to(device)
    idx, targets = rows[:, :-1], rows[:, 1:]
    (loss_a, m_a, h_a), (loss_b, m_b, h_b) = (exact_reading(model, idx, targets) for model in (reference, other))
    counted = token_bytes.to(device)[targets] > 0
    memories = slice(None, -1)  # the states of positions 0..T-2 are the memories m_1..m_{T-1}
    return {
        "rows": rows.size(0),
        "seq_len": idx.size(1),
        "loss_diff": summary(loss_b[counted] - loss_a[counted]),
        "cosine": summary(F.cosine_similarity(m_a[:, memories], m_b[:, memories], dim=-1)),
        "state_norm": {name: summary(h[:, memories].norm(dim=-1)) for name, h in zip(names, (h_a, h_b))},
    }


def exact_reading(model, idx: torch.Tensor, targets: torch.Tensor):
    """Per-token loss in bits, the memory vectors (normed source states) and the source states
    before their norm, of one exact reading. The latter are taken from the source layer's
    output as each position is computed, since the model hands on only the normed ones."""
    states = torch.zeros(*idx.shape, model.config.n_embd, device=idx.device)

    def keep(block, args, output):
        states[:, args[3].pos] = output[0].float()  # args: x, value embeddings, past, PassContext

    handle = model.blocks[model.config.source_layer - 1].register_forward_hook(keep)
    try:
        reading = read(model, idx, "exact")
    finally:
        handle.remove()
    nats = F.cross_entropy(reading.logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return nats.view(targets.shape) / math.log(2), reading.buffer.source.float(), states


def summary(values: torch.Tensor) -> dict:
    v = values.flatten().double()
    quantiles = torch.quantile(v, torch.tensor(QUANTILES, dtype=v.dtype, device=v.device)).tolist()
    return {
        "mean": v.mean().item(),
        "std": v.std().item() if v.numel() > 1 else 0.0,
        **{f"q{round(q * 100):02d}": x for q, x in zip(QUANTILES, quantiles)},
    }


# reading the records: by stage, cell, budget and seed ---------------------------------------------


def decoding_bpb(record: dict) -> float:
    """LRT's exact-memory BPB (what generation gets); the baseline's only one, zero memory; inf
    for a learning-rate check run that diverged."""
    scored = record["eval"]
    if "diverged" in scored:
        return math.inf
    return scored["exact"] if scored["exact"] is not None else scored["zero"]


class Results:
    """A study's records, looked up by stage, cell and budget label, seed by seed."""

    def __init__(self, spec: Spec, records: list[dict]):
        self.spec = spec
        self.records = records
        self.margin = spec.settings.margin

    def runs(self, stage: str, cell: str, label: str | None = None, kind: str | None = None) -> dict[int, dict]:
        """seed -> record: a cell's branch with `label`, or (no label) its records of `kind`."""
        return {
            r["seed"]: r
            for r in self.records
            if r["stage"] == stage
            and r["cell"] == cell
            and (label in r["budgets"] if label else r["kind"] == kind)
            and "eval" in r
        }

    def bpb(self, stage: str, cell: str, label: str) -> dict[int, float]:
        return {seed: decoding_bpb(r) for seed, r in self.runs(stage, cell, label).items()}

    def budget_ratios(self, stage: str) -> list[float]:
        """Each budget of a stage as the R its baseline branch reaches under the study's
        convention (for a spec given in FLOPs too): read from the spec's jobs, so a budget not
        run yet still has its row."""
        base = self.spec.arms["baseline"]
        found = {}
        for job in self.spec.jobs:
            info = job.info
            if info["stage"] == stage and info["cell"] == "baseline" and info["kind"] == "branch":
                for label in info["budgets"]:
                    kind, i = label.split(":")
                    if kind == "flops":
                        found[int(i)] = job.steps * base.tokens_per_step / base.params(self.spec.settings.convention)
        return [found[i] for i in sorted(found)]

    def reach(self, stage: str, cell: str, label: str) -> str:
        """R (total / scaling) and epochs of a branch, the same for every seed."""
        runs = self.runs(stage, cell, label)
        return reach(next(iter(runs.values()))) if runs else "not run yet"

    def compute_ratio(self, record: dict) -> float:
        """A run's training FLOPs as the R at which the baseline spends them (the budget axis)."""
        base = self.spec.arms["baseline"]
        return record["flops"] / (base.params(self.spec.settings.convention) * base.flops_per_token)


def reach(record: dict) -> str:
    epochs = "?" if record["epochs"] is None else f"{record['epochs']:.3g}"
    return f"{record['R_total']:.3g} / {record['R_scaling']:.3g}, {epochs} ep"


def decompose(res: Results, stage: str, i: int, seeds: list[int] | None = None) -> dict[str, list[float]]:
    """Per seed with all three runs (of `seeds`, where given): G = baseline(LRT's tokens) -
    baseline(equal FLOPs), what the baseline's extra compute buys; D = baseline(LRT's tokens) - LRT,
    LRT's equal-token advantage; and gap = G - D = LRT - baseline(equal FLOPs)."""
    flops = res.bpb(stage, "baseline", f"flops:{i}")
    tokens = res.bpb(stage, "baseline", f"tokens:{i}")
    lrt = res.bpb(stage, "lrt", f"flops:{i}")
    seeds = sorted(flops.keys() & tokens.keys() & lrt.keys() & set(flops if seeds is None else seeds))
    return {
        "G": [tokens[s] - flops[s] for s in seeds],
        "D": [tokens[s] - lrt[s] for s in seeds],
        "gap": [lrt[s] - flops[s] for s in seeds],
    }
