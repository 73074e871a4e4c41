"""A trained run scored on held-out text: what `lrt eval bpb` prints and what a study records at
each branch end. The validation split is the run's own unless other data is given, and every
memory is named as `--memory` names it (a bare "parallel" is the run's training schedule)."""

from __future__ import annotations

from dataclasses import dataclass

from ..memory import Memory
from .bpb import BPBResult, evaluate_bpb


@dataclass
class Scored:
    result: BPBResult
    data: str  # the source's name
    rows: int
    seq_len: int


def score_run(
    run,
    memories: list[str],
    *,
    tokens: int,
    data: str | None = None,
    seq_len: int | None = None,
    batch_size: int = 16,
    bucket: int = 64,
    progress: bool = False,
    world=None,
) -> Scored:
    """BPB of a loaded run (`lrt.train.checkpoint.load_run`) under each memory, on the first
    `tokens` tokens of `data` (default: the run's validation split) in rows of `seq_len`."""
    from ..data import open_source, train_val_sources, validation_rows

    trained = run.train_config
    if data is None and trained is None:
        raise ValueError(f"{run.path} is an export, which keeps no training data: give the text to score (--data)")
    source = open_source(data) if data else train_val_sources(trained.data, trained.val_data)[1]
    seq_len = seq_len or run.model.config.sequence_len
    rows = validation_rows(source, run.tokenizer, seq_len, tokens)
    parsed = [Memory.parse(spec, schedule=run.schedule) for spec in memories]
    result = evaluate_bpb(
        run.model,
        rows,
        run.tokenizer.token_bytes(),
        memories=parsed,
        batch_size=batch_size,
        bucket=bucket,
        progress=progress,
        world=world,
    )
    return Scored(result, source.name, rows.size(0), seq_len)
