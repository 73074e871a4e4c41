"""The `lrt` command line. Each subcommand is a thin layer over the Python API; a bad input
gives one line on stderr and exit code 2 (set LRT_DEBUG=1 for the traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .config import LRTConfig
from .model import parameter_counts
from .optim import OptimConfig
from .schedules import SCHEDULE_NAMES


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is under --help)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` with a JSON value (numbers, true/false, lists); anything else is a string."""
    if "=" not in text:
        raise ValueError(f"--set takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# lrt params ---------------------------------------------------------------------------------------


def cmd_params(args) -> None:
    variants = {"baseline": dict(injection="none"), "LRT-shared": {}, "LRT-layerwise": dict(projection="layerwise")}
    counts = {
        name: parameter_counts(
            LRTConfig.from_depth(args.depth, vocab_size=args.vocab_size, value_embeds=args.value_embeds, **overrides)
        )
        for name, overrides in variants.items()
    }
    print(f"depth {args.depth}, vocab {args.vocab_size}, value embeddings: {args.value_embeds}")
    print(f"{'variant':<16}{'total':>16}{'pathway':>14}{'share':>9}")
    for name, c in counts.items():
        print(f"{name:<16}{c.total:>16,}{c.pathway:>14,}{100 * c.share:>8.3f}%")


# lrt train ----------------------------------------------------------------------------------------

TRAIN_FLAGS = {  # flag -> (TrainConfig field or optim.<field>, type, help)
    "--out": ("out", str, "run folder (checkpoints, metrics.jsonl, curves.png)"),
    "--data": ("data", str, "a .txt file, a folder of .txt files, or parquet shards (default: bundled corpus)"),
    "--val-data": ("val_data", str, "validation data (default: held out from --data)"),
    "--tokenizer": ("tokenizer", str, "'byte' or a tokenizer JSON from `lrt tokenizer train`"),
    "--preset": ("preset", str, "model size: tiny, small, or d<depth> (nanochat's depth knob)"),
    "--seq-len": ("seq_len", int, "training context length"),
    "--schedule": ("schedule", str, f"one of {', '.join(SCHEDULE_NAMES)}"),
    "--subsets": ("subsets", int, "S of the interleaved schedule"),
    "--passes": ("passes", int, "K of the multirefine schedule"),
    "--chunk": ("chunk", int, "C of the chunked schedule"),
    "--steps": ("steps", int, "optimizer steps"),
    "--batch-size": ("batch_size", int, "sequences per micro-batch"),
    "--grad-accum": ("grad_accum", int, "micro-batches per step"),
    "--optimizer": ("optim.optimizer", str, "muon (Muon + AdamW, default) or adamw"),
    "--matrix-lr": ("optim.matrix_lr", float, "Muon learning rate"),
    "--embedding-lr": ("optim.embedding_lr", float, "AdamW rate of the embeddings"),
    "--unembedding-lr": ("optim.unembedding_lr", float, "AdamW rate of the LM head"),
    "--scalar-lr": ("optim.scalar_lr", float, "AdamW rate of the scalars"),
    "--adamw-lr": ("optim.adamw_lr", float, "the rate of --optimizer adamw"),
    "--warmup-steps": ("optim.warmup_steps", int, "linear warmup steps"),
    "--warmdown-ratio": ("optim.warmdown_ratio", float, "fraction of steps of linear decay at the end"),
    "--dtype": ("dtype", str, "float32 or bfloat16 (autocast)"),
    "--device": ("device", str, "auto, cpu, cuda, ..."),
    "--eval-every": ("eval_every", int, "steps between validations"),
    "--eval-tokens": ("eval_tokens", int, "validation tokens"),
    "--save-every": ("save_every", int, "steps between checkpoints (0: at the end only)"),
    "--keep": ("keep", int, "checkpoints kept"),
    "--seed": ("seed", int, "random seed"),
}


def add_train_flags(p: argparse.ArgumentParser) -> None:
    # no defaults here: TrainConfig holds them, so we know which flags the user gave (for --resume)
    for flag, (_, typ, help_text) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, default=argparse.SUPPRESS, help=help_text)
    p.add_argument("--set", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="model config override, e.g. --set injection=kv --set source_layer=2 (repeatable)")
    p.add_argument("--compile", action="store_true", default=argparse.SUPPRESS, help="torch.compile the model")
    p.add_argument("--no-final-decode", action="store_true", default=argparse.SUPPRESS,
                   help="skip the exact decoding BPB at the end")


def train_config_from_args(args, base: dict | None = None):
    from .train import TrainConfig

    d = base or TrainConfig().to_dict()
    given = vars(args)
    for flag, (name, _, _) in TRAIN_FLAGS.items():
        key = flag[2:].replace("-", "_")
        if key in given:
            if name.startswith("optim."):
                d["optim"][name[6:]] = given[key]
            else:
                d[name] = given[key]
    if "set" in given:
        d["model"] = {**d["model"], **dict(parse_override(s) for s in given["set"])}
        unknown = set(d["model"]) - {f.name for f in dataclasses.fields(LRTConfig)}
        if unknown:
            raise ValueError(f"--set: unknown model field(s) {sorted(unknown)}")
    if "compile" in given:
        d["compile"] = True
    if "no_final_decode" in given:
        d["final_decode"] = False
    d["optim"] = OptimConfig(**d["optim"])
    return TrainConfig(**d)


def cmd_train(args) -> None:
    from . import checkpoint
    from .train import Trainer

    base = None
    if args.resume is not None:
        record = checkpoint.read_record(checkpoint.resolve(args.resume))
        base = record["train_config"]
        if "out" not in vars(args):
            base["out"] = str(checkpoint.resolve(args.resume).parents[1])
    cfg = train_config_from_args(args, base)
    trainer = Trainer(cfg, resume=args.resume)
    print(f"model: {parameter_counts(trainer.model)}; schedule {cfg.schedule}; {trainer.flops_per_step:.3g} FLOPs/step",
          file=sys.stderr)
    summary = trainer.train()
    print(json.dumps({k: summary[k] for k in ("step", "tokens", "train_time", "val_bpb", "out")}))


# lrt tokenizer train / lrt download ------------------------------------------------------------------


def cmd_tokenizer_train(args) -> None:
    from .data import train_val_sources
    from .tokenizer import BPETokenizer

    train, _ = train_val_sources(args.data, args.val_data)

    def texts():  # the training split only, up to max_chars
        budget = args.max_chars
        for text, _ in train.iterate(loop=False):
            if budget <= 0:
                return
            budget -= len(text)
            yield text

    tok = BPETokenizer.train(texts(), args.vocab_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    sample = "To be, or not to be, that is the question."
    print(f"saved {args.out}: {tok.vocab_size} tokens; {len(sample.encode()) / len(tok.encode(sample)):.2f} bytes/token on {sample!r}")


def cmd_download_shards(args) -> None:
    from .data.download import download_shards

    for path in download_shards(args.out, args.num, args.base_url):
        print(path)


# lrt demo -----------------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    from .demo import QUICK, DemoSettings, format_report, run_demo

    settings = DemoSettings(**(QUICK if args.quick else {}))
    settings.out = args.out
    if args.steps is not None:
        settings.lrt_steps = args.steps
    report = run_demo(settings, log=lambda msg: print(msg, file=sys.stderr))
    print(format_report(report))
    print(f"curves: {Path(settings.out) / 'curves.png'}; runs and checkpoints under {settings.out}/")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


# parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lrt", description="Latent Recurrent Transformer: train, evaluate, generate")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("params", help="parameter counts of baseline, LRT-shared and LRT-layerwise at a depth")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--value-embeds", choices=["none", "alternating", "all"], default="all")
    p.set_defaults(run=cmd_params)

    p = sub.add_parser("train", help="train a model (bundled corpus by default)")
    add_train_flags(p)
    p.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", default=None,
                   help="continue a run from its newest checkpoint (flags given here override its config)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, parser_class=Parser)
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer on the training split of some data")
    t.add_argument("--data", default=None, help="text file(s) or parquet shards (default: bundled corpus)")
    t.add_argument("--val-data", default=None, help="validation data, excluded from tokenizer training")
    t.add_argument("--vocab-size", type=int, default=4096)
    t.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters of training text to read")
    t.add_argument("--out", default="tokenizer.json")
    t.set_defaults(run=cmd_tokenizer_train)

    p = sub.add_parser("download", help="fetch data for users with internet (never needed by the demo or tests)")
    dsub = p.add_subparsers(dest="download_command", required=True, parser_class=Parser)
    d = dsub.add_parser("shards", help="FineWeb-Edu parquet shards in nanochat's layout")
    d.add_argument("--num", type=int, default=2, help="number of shards (the last one serves as validation)")
    d.add_argument("--out", default="data/fineweb-edu")
    d.add_argument("--base-url", default=None, help="where shard_00000.parquet etc. live")
    d.set_defaults(run=cmd_download_shards)

    p = sub.add_parser("demo", help="train a small LRT and its baseline on the bundled corpus (CPU, ~5 min)")
    p.add_argument("--out", default="runs/demo", help="folder of the two runs and the plot")
    p.add_argument("--steps", type=int, default=None, help="LRT training steps (the baseline gets the same FLOPs)")
    p.add_argument("--quick", action="store_true", help="a tiny model for a few seconds (a smoke test)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("LRT_DEBUG"):
            raise
        print(f"lrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
