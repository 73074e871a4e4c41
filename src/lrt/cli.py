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
from .runtime import keep_freed_memory
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
    "--optimizer": ("optim.optimizer", str, "auto (default: muon on GPUs, adamw on CPUs), muon (Muon + AdamW) or adamw"),
    "--matrix-lr": ("optim.matrix_lr", float, "Muon learning rate"),
    "--embedding-lr": ("optim.embedding_lr", float, "AdamW rate of the embeddings"),
    "--unembedding-lr": ("optim.unembedding_lr", float, "AdamW rate of the LM head"),
    "--scalar-lr": ("optim.scalar_lr", float, "AdamW rate of the scalars"),
    "--adamw-lr": ("optim.adamw_lr", float, "the rate of --optimizer adamw"),
    "--warmup-steps": ("optim.warmup_steps", int, "linear warmup steps"),
    "--warmdown-ratio": ("optim.warmdown_ratio", float, "fraction of steps of linear decay at the end"),
    "--dtype": ("dtype", str, "float32 or bfloat16 (autocast)"),
    "--device": ("device", str, "auto, cpu, cuda, ..."),
    "--attention": ("attention", str, "subset-pass attention: auto (flex on CUDA, else sdpa), sdpa or flex"),
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


# lrt eval bpb / lrt eval core / lrt generate --------------------------------------------------------


def load_checkpoint(args):
    """(model, tokenizer, record, training config) of the checkpoint or run folder args.checkpoint."""
    from . import checkpoint
    from .train import TrainConfig, resolve_device

    model, tokenizer, record = checkpoint.load_model(args.checkpoint, resolve_device(args.device))
    return model, tokenizer, record, TrainConfig.from_dict(record.get("train_config", {}))


def describe(model) -> str:
    c = model.config
    if c.injection == "none":
        return f"baseline transformer, {c.n_layer} layers, d={c.n_embd}"
    return f"LRT {c.injection} {c.projection}, source layer {c.source_layer}, {c.n_layer} layers, d={c.n_embd}"


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1))


def cmd_eval_bpb(args) -> None:
    from .data import open_source, train_val_sources, validation_rows
    from .evaluate import evaluate_bpb
    from .schedules import checked_plan, describe_pass

    model, tok, record, train_cfg = load_checkpoint(args)
    source = open_source(args.data) if args.data else train_val_sources(train_cfg.data, train_cfg.val_data)[1]
    seq_len = args.seq_len or model.config.sequence_len
    rows = validation_rows(source, tok, seq_len, args.tokens)
    schedule = train_cfg.make_schedule()
    modes = ("zero", "schedule") if args.no_decode else ("zero", "schedule", "decode")
    result = evaluate_bpb(model, rows, tok.token_bytes(), schedule, modes, args.batch_size, args.bucket, progress=True)
    print(f"checkpoint {record.get('step')} steps: {describe(model)}; training schedule: {train_cfg.schedule}")
    print(f"data: {source.name}, {rows.size(0)} rows x {seq_len} tokens, {result.bytes:,} bytes")
    lines = []
    if result.merged is not None:
        for i, (steps, bpb) in enumerate(zip(checked_plan(schedule, seq_len), result.passes)):
            lines.append((f"pass {i} ({describe_pass(steps, seq_len)})", bpb))
        lines.append(("merged (each position from its last pass)", result.merged))
    if result.decode is not None:
        lines.append(("exact decoding (what generation gets)", result.decode))
    lines.append(("zero memory" + (" (ablation)" if model.config.injection != "none" else ""), result.zero))
    for label, value in lines:
        print(f"  {label:<60} {value:.4f} BPB")
    if result.gap is not None:
        print(f"  {'train/decode gap (merged - decoding)':<60} {result.gap:+.4f}")
    if result.decode_buckets:
        print("decoding BPB by position: " + ", ".join(f"{a}-{b}: {v:.3f}" for a, b, v in result.decode_buckets))
    write_json(args.json, {"checkpoint": str(args.checkpoint), "data": source.name, "rows": rows.size(0),
                           "seq_len": seq_len, **dataclasses.asdict(result), "gap": result.gap})


def cmd_eval_core(args) -> None:
    from .evaluate.core import evaluate_core

    model, tok, record, train_cfg = load_checkpoint(args)
    schedule = train_cfg.make_schedule() if args.memory == "parallel" else None
    result = evaluate_core(model, tok, args.bundle, args.memory, schedule, args.max_per_task)
    print(f"CORE of {describe(model)}, prompts read with {args.memory} memory"
          + (f" ({train_cfg.schedule} schedule)" if schedule else ""))
    print(f"  {'task':<34}{'type':<19}{'items':>6}{'accuracy':>10}{'centered':>10}")
    for t in result.tasks:
        print(f"  {t.label:<34}{t.kind:<19}{t.items:>6}{t.accuracy:>10.4f}{t.centered:>10.4f}")
    print(f"CORE = {result.core:.4f}")
    write_json(args.json, {"checkpoint": str(args.checkpoint), "memory": args.memory, "core": result.core,
                           "tasks": [dataclasses.asdict(t) for t in result.tasks]})


def cmd_generate(args) -> None:
    from .decoding import generate

    model, tok, record, train_cfg = load_checkpoint(args)
    texts = list(args.prompt or [])
    if args.prompt_file:
        texts += [line for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError("give a prompt with --prompt or --prompt-file")
    if not all(texts):
        raise ValueError("the prompt is empty: generation continues a text, give it at least one character")
    prompts = [[tok.bos_id] + tok.encode(t) for t in texts]  # documents start with BOS in training
    stream = len(prompts) == 1 and not args.quiet
    printed = [""]

    def on_token(b, token, generated=[]):  # noqa: B006 - the stream's running text
        generated.append(token)
        text = tok.decode(generated)
        if not text.endswith("\ufffd"):  # hold back a partial UTF-8 character
            print(text[len(printed[0]):], end="", flush=True)
            printed[0] = text

    if stream:
        print(texts[0], end="", flush=True)
    result = generate(model, prompts, args.max_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                      tok.bos_id, args.prefill, train_cfg.make_schedule(), args.tol, on_token if stream else None)
    completions = [tok.decode(t) for t in result.tokens]
    if stream:
        print(completions[0][len(printed[0]):])
    elif not args.quiet:
        for text, completion in zip(texts, completions):
            print(f"=== {text!r}\n{text}{completion}\n")
    print(f"[prefill {args.prefill}: {result.prefill_passes} passes; stopped: {', '.join(result.stopped)}]", file=sys.stderr)
    write_json(args.json, {"prefill": args.prefill, "prefill_passes": result.prefill_passes,
                           "results": [{"prompt": t, "completion": c, "tokens": len(ids), "stopped": s}
                                       for t, c, ids, s in zip(texts, completions, result.tokens, result.stopped)]})


def cmd_download_core(args) -> None:
    from .data.download import download_core_bundle

    print(download_core_bundle(args.out, args.url))


# lrt bench ----------------------------------------------------------------------------------------


def cmd_bench_train(args) -> None:
    from .bench import bench_train, format_train
    from .train import resolve_device

    report = bench_train(args.config, args.schedules.split(",") if args.schedules else None, args.repeats, args.warmup,
                         args.batch_size, args.seq_len, args.dtype, str(resolve_device(args.device)), args.compile,
                         args.attention, args.peak_tflops, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_train(report))
    write_json(args.json, report)


def cmd_bench_decode(args) -> None:
    from .bench import bench_decode, format_decode
    from .train import resolve_device

    batches = tuple(int(b) for b in args.batch.split(","))
    report = bench_decode(args.config, batches, args.tokens, args.prompt_len, args.repeats,
                          str(resolve_device(args.device)), args.dtype, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_decode(report))
    write_json(args.json, report)


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

    p = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = p.add_subparsers(dest="eval_command", required=True, parser_class=Parser)
    e = esub.add_parser("bpb", help="bits per byte: per pass and merged, exact decoding, zero memory")
    e.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    e.add_argument("--data", default=None, help="text file(s) or parquet shards (default: the run's validation split)")
    e.add_argument("--tokens", type=int, default=65536, help="tokens to evaluate")
    e.add_argument("--seq-len", type=int, default=None, help="row length (default: the model's sequence_len)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--bucket", type=int, default=64, help="position bucket of the decoding breakdown")
    e.add_argument("--no-decode", action="store_true", help="skip the exact decoding BPB (the slow one)")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    e.set_defaults(run=cmd_eval_bpb)
    e = esub.add_parser("core", help="the CORE suite (DCLM tasks as nanochat) from a local bundle")
    e.add_argument("checkpoint")
    e.add_argument("--bundle", required=True, help="folder with core.yaml, eval_meta_data.csv, eval_data/")
    e.add_argument("--memory", choices=["zero", "parallel", "exact"], default="exact",
                   help="how prompts are read: m=0, the training schedule, or token-by-token recurrence")
    e.add_argument("--max-per-task", type=int, default=None, help="items per task (quick runs)")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", metavar="PATH")
    e.set_defaults(run=cmd_eval_core)

    p = sub.add_parser("generate", help="sample text with the true recurrence")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    p.add_argument("--prompt-file", help="one prompt per line")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefill", choices=["exact", "parallel", "fixed-point"], default="exact",
                   help="how the prompt is read before generating")
    p.add_argument("--tol", type=float, default=1e-4, help="fixed-point prefill: stop when memory moves less")
    p.add_argument("--quiet", action="store_true", help="print nothing but the JSON/stderr summary")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("bench", help="speed and memory of LRT against the baseline, in one process")
    bsub = p.add_subparsers(dest="bench_command", required=True, parser_class=Parser)
    b = bsub.add_parser("train", help="training step time, FLOP ratio and memory per schedule")
    b.add_argument("--config", default="demo", help="demo, wide (d=768, 4 layers), d12 or d20")
    b.add_argument("--schedules", default=None, help="comma-separated subset of the benchmarked schedules")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--batch-size", type=int, default=None)
    b.add_argument("--seq-len", type=int, default=None)
    b.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    b.add_argument("--device", default="auto")
    b.add_argument("--compile", action="store_true")
    b.add_argument("--attention", default="auto", help="auto (flex on CUDA, else sdpa), sdpa or flex")
    b.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak (dense bf16) TFLOP/s for MFU; H100, H200 and A100 are known")
    b.add_argument("--json", metavar="PATH")
    b.set_defaults(run=cmd_bench_train)
    b = bsub.add_parser("decode", help="per-token decoding latency and prefill time")
    b.add_argument("--config", default="wide")
    b.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    b.add_argument("--tokens", type=int, default=64)
    b.add_argument("--prompt-len", type=int, default=64)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    b.add_argument("--device", default="auto")
    b.add_argument("--json", metavar="PATH")
    b.set_defaults(run=cmd_bench_decode)

    p = sub.add_parser("download", help="fetch data for users with internet (never needed by the demo or tests)")
    dsub = p.add_subparsers(dest="download_command", required=True, parser_class=Parser)
    d = dsub.add_parser("shards", help="FineWeb-Edu parquet shards in nanochat's layout")
    d.add_argument("--num", type=int, default=2, help="number of shards (the last one serves as validation)")
    d.add_argument("--out", default="data/fineweb-edu")
    d.add_argument("--base-url", default=None, help="where shard_00000.parquet etc. live")
    d.set_defaults(run=cmd_download_shards)
    d = dsub.add_parser("core-bundle", help="the CORE eval bundle (core.yaml, eval_meta_data.csv, eval_data/)")
    d.add_argument("--out", default="data/eval_bundle")
    d.add_argument("--url", default=None)
    d.set_defaults(run=cmd_download_core)

    p = sub.add_parser("demo", help="train a small LRT and its baseline on the bundled corpus (CPU, ~6 min)")
    p.add_argument("--out", default="runs/demo", help="folder of the two runs and the plot")
    p.add_argument("--steps", type=int, default=None, help="LRT training steps (the baseline gets the same FLOPs)")
    p.add_argument("--quick", action="store_true", help="a tiny model for a few seconds (a smoke test)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
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
