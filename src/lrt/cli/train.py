"""`lrt train`, `lrt tokenizer train`, `lrt download` and `lrt prepare`: making a model and its data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..train.config import TrainConfig, flag_fields
from ..train.optim import OptimConfig
from .args import Parser, add_config_flags, output_file, positive_int


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` with a JSON value (numbers, true/false, lists); anything else is a string."""
    if "=" not in text:
        raise ValueError(f"--set takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def train_config_from_args(args, base: dict | None = None) -> TrainConfig:
    d = base or TrainConfig().to_dict()
    given = vars(args)
    for f, _ in flag_fields(TrainConfig):
        if f.name in given:
            d[f.name] = given[f.name]
    for f, _ in flag_fields(OptimConfig):
        if f"optim.{f.name}" in given:
            d["optim"] = {**d["optim"], f.name: given[f"optim.{f.name}"]}
    if "set" in given:
        d["model"] = {**d["model"], **dict(parse_override(s) for s in given["set"])}
    return TrainConfig.from_dict(d)


def cmd_train(args) -> None:
    from ..model import parameter_counts
    from ..train import checkpoint
    from ..train.build import batch_change
    from ..train.trainer import Trainer

    base = record = None
    if args.resume is not None and "init_from" in vars(args):
        raise ValueError("--init-from starts a new run from weights and --resume continues one: give one of them")
    if args.resume is not None:
        path = checkpoint.resolve(args.resume)
        record = checkpoint.read_record(path)
        base = record.get("train_config")
        if base is None:
            raise ValueError(f"checkpoint {path / 'checkpoint.json'} cannot be resumed: it has no train_config")
        if "out" not in vars(args):
            base["out"] = str(path.parents[1])
    cfg = train_config_from_args(args, base)
    trainer = Trainer(cfg, resume=args.resume)
    if trainer.world.main:
        print(
            f"model: {parameter_counts(trainer.model)}; schedule {cfg.schedule}; {trainer.world.size} process(es), "
            f"{trainer.tokens_per_step:,} tokens and {trainer.flops_per_step:.3g} FLOPs per step",
            file=sys.stderr,
        )
        note = None if record is None else batch_change(record, trainer.world.size, trainer.tokens_per_step)
        if note:
            print(note, file=sys.stderr)
    summary = trainer.train()
    if trainer.world.main:
        print(json.dumps({k: summary.get(k) for k in ("step", "tokens", "train_time", "val_bpb", "out")}))


def cmd_tokenizer_train(args) -> None:
    from ..data import leading_texts, train_val_sources
    from ..data.tokenizer import BPETokenizer

    if Path(args.out).exists():  # runs reference a tokenizer by content: never replace one silently
        raise ValueError(f"{args.out} exists: choose another --out (or delete it first)")
    train, _ = train_val_sources(args.data, args.val_data)
    tok = BPETokenizer.train(leading_texts(train, args.max_chars), args.vocab_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    print(f"saved {args.out}: {tok.summary()}")


def cmd_download_shards(args) -> None:
    from ..data.download import download_shards

    for path in download_shards(args.out, args.num, args.base_url):
        print(path)


def cmd_download_core(args) -> None:
    from ..data.download import download_core_bundle

    print(download_core_bundle(args.out, args.url))


def cmd_prepare_gcide(args) -> None:
    from ..data.prepare import prepare_gcide

    for path in prepare_gcide(args.out, Path(args.source)):
        print(path)


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model (bundled corpus by default)")
    add_config_flags(p, TrainConfig)
    add_config_flags(p, OptimConfig, prefix="optim.")
    p.add_argument(
        "--set",
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="model config override, e.g. --set injection=kv --set source_layer=2 (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_OR_CHECKPOINT",
        default=None,
        help="continue a run from its newest checkpoint: flags given here override its config, learning "
        "rates included; the model, tokenizer and optimizer cannot change. With --out, a folder "
        "that holds no run becomes a fork of it",
    )
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, parser_class=Parser)
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer on the training split of some data")
    t.add_argument("--data", default=None, help="text file(s) or parquet shards (default: bundled corpus)")
    t.add_argument("--val-data", default=None, help="validation data, excluded from tokenizer training")
    t.add_argument("--vocab-size", type=positive_int, default=4096)
    t.add_argument("--max-chars", type=positive_int, default=2_000_000_000, help="characters of training text to read")
    t.add_argument("--out", type=output_file, default="tokenizer.json")
    t.set_defaults(run=cmd_tokenizer_train)

    p = sub.add_parser("download", help="fetch data for users with internet (never needed by the demo or tests)")
    dsub = p.add_subparsers(dest="download_command", required=True, parser_class=Parser)
    d = dsub.add_parser("shards", help="FineWeb-Edu parquet shards in nanochat's layout")
    d.add_argument("--num", type=positive_int, default=2, help="number of shards (the last one serves as validation)")
    d.add_argument("--out", default="data/fineweb-edu")
    d.add_argument("--base-url", default=None, help="where shard_00000.parquet etc. live")
    d.set_defaults(run=cmd_download_shards)
    d = dsub.add_parser("core-bundle", help="the CORE eval bundle (core.yaml, eval_meta_data.csv, eval_data/)")
    d.add_argument("--out", default="data/eval_bundle")
    d.add_argument("--url", default=None)
    d.set_defaults(run=cmd_download_core)

    p = sub.add_parser("prepare", help="make a corpus from an installed package (offline; never needed by the demo)")
    psub = p.add_subparsers(dest="prepare_command", required=True, parser_class=Parser)
    d = psub.add_parser("gcide", help="the GCIDE dictionary (Debian's dict-gcide, ~35M characters): train.txt, val.txt")
    d.add_argument("--out", default="data/gcide", help="a new folder")
    d.add_argument("--source", default="/usr/share/dictd/gcide.dict.dz", help="the dictd file")
    d.set_defaults(run=cmd_prepare_gcide)
