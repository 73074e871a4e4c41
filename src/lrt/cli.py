"""The `lrt` command line: parsing and dispatch only; what each command does lives beside what it
describes. A bad input gives one line on stderr and exit code 2 (LRT_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from . import distributed
from .config import VALUE_EMBEDS, LRTConfig
from .distributed import QuietExit
from .memory import MEMORY_SPECS, Memory
from .optim import OptimConfig
from .presets import PRESET_NAMES, VARIANTS
from .runtime import keep_freed_memory
from .train import Interrupted
from .train_config import DTYPES, TrainConfig, flag_fields


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is under --help)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


# argument types: a value out of range is a one-line usage error before anything runs ---------


def _typed(kind, need: str, ok):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")
        return value

    return parse


positive_int = _typed(int, "a positive integer", lambda v: v >= 1)
natural = _typed(int, "an integer >= 0", lambda v: v >= 0)
row_length = _typed(int, "an integer >= 2", lambda v: v >= 2)
positive_number = _typed(float, "a finite number > 0", lambda v: 0 < v < float("inf"))
positive_ints = _typed(lambda t: [int(x) for x in t.split(",")], "comma-separated positive integers",
                       lambda v: all(x >= 1 for x in v))


def _writable_file(text: str) -> Path:
    """An output file: not a folder, and not under a file."""
    path = Path(text)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if path.is_dir() or not ancestor.is_dir():
        raise ValueError
    return path


output_file = _typed(_writable_file, "a file path (not a folder, not under a file)", lambda v: True)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1))


# lrt params ---------------------------------------------------------------------------------------


def cmd_params(args) -> None:
    from .model import parameter_counts

    print(f"depth {args.depth}, vocab {args.vocab_size}, value embeddings: {args.value_embeds}")
    print(f"{'variant':<16}{'total':>16}{'pathway':>14}{'share':>9}")
    for name, overrides in VARIANTS.items():
        c = parameter_counts(LRTConfig.from_depth(args.depth, vocab_size=args.vocab_size,
                                                  value_embeds=args.value_embeds, **overrides))
        print(f"{name:<16}{c.total:>16,}{c.pathway:>14,}{100 * c.share:>8.3f}%")


# lrt train ----------------------------------------------------------------------------------------


def add_config_flags(p: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """A flag per field of `cls` that has help metadata. No defaults here: the config holds them,
    so we know which flags were given (they override a resumed run's config)."""
    for f, typ in flag_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=f.metadata["help"])
        if typ is bool:  # a switch away from the default: --compile, --no-final-decode
            name, action = (f"--no-{flag[2:]}", "store_false") if f.default else (flag, "store_true")
            p.add_argument(name, action=action, **kw)
        elif typing.get_origin(typ) is list:  # --exact-at 100 200
            p.add_argument(flag, type=positive_int, nargs="+", metavar="STEP", **kw)
        else:
            p.add_argument(flag, type=typ, choices=f.metadata.get("choices"), **kw)


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
    from . import checkpoint
    from .model import parameter_counts
    from .train import Trainer

    base = None
    if args.resume is not None:
        path = checkpoint.resolve(args.resume)
        base = checkpoint.read_record(path)["train_config"]
        if "out" not in vars(args):
            base["out"] = str(path.parents[1])
    cfg = train_config_from_args(args, base)
    trainer = Trainer(cfg, resume=args.resume)
    if trainer.world.main:
        print(f"model: {parameter_counts(trainer.model)}; schedule {cfg.schedule}; {trainer.world.size} process(es), "
              f"{trainer.tokens_per_step:,} tokens and {trainer.flops_per_step:.3g} FLOPs per step", file=sys.stderr)
    summary = trainer.train()
    if trainer.world.main:
        print(json.dumps({k: summary.get(k) for k in ("step", "tokens", "train_time", "val_bpb", "out")}))


# lrt tokenizer train / lrt download ------------------------------------------------------------------


def cmd_tokenizer_train(args) -> None:
    from .data import leading_texts, train_val_sources
    from .tokenizer import BPETokenizer

    train, _ = train_val_sources(args.data, args.val_data)
    tok = BPETokenizer.train(leading_texts(train, args.max_chars), args.vocab_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    print(f"saved {args.out}: {tok.summary()}")


def cmd_download_shards(args) -> None:
    from .data.download import download_shards

    for path in download_shards(args.out, args.num, args.base_url):
        print(path)


def cmd_download_core(args) -> None:
    from .data.download import download_core_bundle

    print(download_core_bundle(args.out, args.url))


# lrt eval bpb / lrt eval core / lrt generate --------------------------------------------------------


def memory_of(run, spec: str) -> Memory:
    """A --memory value; a bare "parallel" is the run's training schedule."""
    return Memory.parse(spec, schedule=run.train_config.schedule)


def cmd_eval_bpb(args) -> None:
    from .checkpoint import load_run
    from .data import open_source, train_val_sources, validation_rows
    from .evaluate import evaluate_bpb

    world, device = distributed.setup(args.device)
    run = load_run(args.checkpoint, str(device))
    cfg = run.model.config
    trained = run.train_config
    source = open_source(args.data) if args.data else train_val_sources(trained.data, trained.val_data)[1]
    seq_len = args.seq_len or cfg.sequence_len
    rows = validation_rows(source, run.tokenizer, seq_len, args.tokens)
    memories = [memory_of(run, spec) for spec in args.memory.split(",")]
    result = evaluate_bpb(run.model, rows, run.tokenizer.token_bytes(), memories=memories, batch_size=args.batch_size,
                          bucket=args.bucket, progress=world.main, world=world)
    if not world.main:
        return
    print(f"checkpoint {run.record.get('step')} steps: {cfg.describe()}; training schedule: {trained.schedule}")
    print(f"data: {source.name}, {rows.size(0)} rows x {seq_len} tokens, {result.bytes:,} bytes")
    print(result.format(recurrent=cfg.injection != "none"))
    write_json(args.json, {"checkpoint": str(run.path), "data": source.name, "rows": rows.size(0), "seq_len": seq_len,
                           **dataclasses.asdict(result), "gap": result.gap})


def cmd_eval_core(args) -> None:
    from .checkpoint import load_run
    from .evaluate.core import evaluate_core

    world, device = distributed.setup(args.device)
    run = load_run(args.checkpoint, str(device))
    memory = memory_of(run, args.memory)
    result = evaluate_core(run.model, run.tokenizer, args.bundle, memory=memory, max_per_task=args.max_per_task,
                           progress=world.main, world=world)
    if not world.main:
        return
    print(f"CORE of {run.model.config.describe()}, prompts read with {memory.describe()}")
    print(result.format())
    write_json(args.json, {"checkpoint": str(run.path), "memory": result.memory, "core": result.core,
                           "tasks": [dataclasses.asdict(t) for t in result.tasks]})


def cmd_generate(args) -> None:
    from .checkpoint import load_run
    from .decoding import compiled_by_default, generate
    from .tokenizer import TextStream

    run = load_run(args.checkpoint, args.device)
    if args.compile if args.compile is not None else compiled_by_default(run.model.wte.weight.device):
        run.model.compile_decoding()
    tok = run.tokenizer
    texts = list(args.prompt or [])
    if args.prompt_file:
        texts += [line for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError("give a prompt with --prompt or --prompt-file")
    if not all(texts):
        raise ValueError("the prompt is empty: generation continues a text, give it at least one character")
    prompts = [[tok.bos_id] + tok.encode(t) for t in texts]  # documents start with BOS in training
    stream = TextStream(tok, texts[0]) if len(prompts) == 1 and not args.quiet else None
    result = generate(run.model, prompts, args.max_tokens, memory=memory_of(run, args.memory),
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      stop_token=tok.bos_id, on_token=(lambda b, token: stream.add(token)) if stream else None)
    completions = [tok.decode(t) for t in result.tokens]
    if stream:
        stream.close()
    elif not args.quiet:
        for text, completion in zip(texts, completions):
            print(f"=== {text!r}\n{text}{completion}\n")
    print(result.summary(), file=sys.stderr)
    write_json(args.json, {"memory": result.memory.spec, "prefill_forwards": result.prefill_forwards,
                           "results": [{"prompt": t, "completion": c, "tokens": len(ids), "stopped": s}
                                       for t, c, ids, s in zip(texts, completions, result.tokens, result.stopped)]})


# lrt bench ----------------------------------------------------------------------------------------


def cmd_bench_train(args) -> None:
    from .bench import bench_train, format_train
    from .runtime import resolve_device

    report = bench_train(args.config, schedules=args.schedules.split(",") if args.schedules is not None else None,
                         repeats=args.repeats, warmup=args.warmup, batch=args.batch_size, seq_len=args.seq_len,
                         dtype=args.dtype, device=str(resolve_device(args.device)), compile=args.compile,
                         attention=args.attention, activation_checkpointing=args.activation_checkpointing,
                         peak_tflops=args.peak_tflops,
                         progress=lambda msg: print(msg, file=sys.stderr))
    print(format_train(report))
    write_json(args.json, report)


def cmd_bench_decode(args) -> None:
    from .bench import bench_decode, format_decode
    from .runtime import resolve_device

    report = bench_decode(args.config, batches=tuple(args.batch), tokens=args.tokens,
                          prompt_len=args.prompt_len, repeats=args.repeats, device=str(resolve_device(args.device)),
                          dtype=args.dtype, compile=args.compile, variants=tuple(args.variants.split(",")),
                          progress=lambda msg: print(msg, file=sys.stderr))
    print(format_decode(report))
    write_json(args.json, report)


# lrt demo -----------------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    from .demo import QUICK, DemoSettings, format_report, run_demo

    settings = DemoSettings(**(QUICK if args.quick else {}), out=args.out)
    if args.steps is not None:
        settings.lrt_steps = args.steps
    report = run_demo(settings, log=lambda msg: print(msg, file=sys.stderr))
    print(format_report(report))
    print(f"curves: {Path(settings.out) / 'curves.png'}; runs and checkpoints under {settings.out}/")
    write_json(args.json, report)


# lrt export / lrt eval harness: the optional integrations ------------------------------------------


def needs(extra: str, module: str):
    """Import an optional integration, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"this needs the optional extra: pip install 'lrt[{extra}]' ({e})") from None


def cmd_export_hf(args) -> None:
    from .checkpoint import load_run

    hf = needs("hf", "lrt.integrations.hf")
    out = hf.export_hf(load_run(args.checkpoint, "cpu"), args.out)
    print(f"exported {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")


def cmd_eval_harness(args) -> None:
    harness = needs("eval", "lrt.integrations.lm_eval")
    results = harness.evaluate(args.checkpoint, tasks=args.tasks.split(","), memory=args.memory,
                               include_path=args.include_path, limit=args.limit, batch_size=args.batch_size,
                               num_fewshot=args.num_fewshot, device=args.device)
    print(harness.table(results))
    write_json(args.json, harness.summary(results))


# lrt study ----------------------------------------------------------------------------------------


def cmd_study_run(args) -> None:
    from .study import describe, load_spec, run_study

    spec = load_spec(args.spec, args.out)
    print(describe(spec), file=sys.stderr)
    if args.dry_run:
        return
    failures = run_study(spec, Path(args.out), jobs=args.jobs)
    if failures:
        raise ValueError(f"{len(failures)} run(s) failed: " + " | ".join(failures))
    print(f"all {len(spec.runs)} runs finished; lrt study report {args.out}")


def cmd_study_report(args) -> None:
    from .study import open_study
    from .study_report import collect, core_scores, write_report

    out = Path(args.dir)
    spec = open_study(out)
    core = core_scores(spec, args.bundle) if args.bundle else None
    print(write_report(collect(spec, core), out))


# lrt recipe ---------------------------------------------------------------------------------------


def cmd_recipe(args) -> None:
    from .recipe import SMOKE, RecipeSettings, format_recipe, run_recipe

    given = {k: v for k, v in vars(args).items() if k in RecipeSettings.__dataclass_fields__ and v is not None}
    settings = RecipeSettings(**{**(SMOKE if args.smoke else {}), **given})
    print(format_recipe(run_recipe(settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))))


# parser -------------------------------------------------------------------------------------------


def device_and_json(p: argparse.ArgumentParser) -> None:
    """The two options every reading command shares."""
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=output_file, metavar="PATH", help="also write the numbers as JSON")


def build_parser() -> argparse.ArgumentParser:
    from .attention import ATTENTION_CHOICES
    from .bench import TRAIN_SCHEDULES

    parser = Parser(prog="lrt", description="Latent Recurrent Transformer: train, evaluate, generate")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("params", help="parameter counts of baseline, LRT-shared and LRT-layerwise at a depth")
    p.add_argument("--depth", type=positive_int, default=20)
    p.add_argument("--vocab-size", type=positive_int, default=32768)
    p.add_argument("--value-embeds", choices=VALUE_EMBEDS, default="all")
    p.set_defaults(run=cmd_params)

    p = sub.add_parser("train", help="train a model (bundled corpus by default)")
    add_config_flags(p, TrainConfig)
    add_config_flags(p, OptimConfig, prefix="optim.")
    p.add_argument("--set", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="model config override, e.g. --set injection=kv --set source_layer=2 (repeatable)")
    p.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", default=None,
                   help="continue a run from its newest checkpoint: flags given here override its config, learning "
                        "rates included; the model, tokenizer and optimizer cannot change. With --out, a folder "
                        "that holds no run becomes a fork of it")
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

    memory_help = f"which memory the model reads with: {MEMORY_SPECS} (bare parallel: the run's training schedule)"
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = p.add_subparsers(dest="eval_command", required=True, parser_class=Parser)
    e = esub.add_parser("bpb", help="bits per byte under each memory: per pass and merged, exact, zero")
    e.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    e.add_argument("--data", default=None, help="text file(s) or parquet shards (default: the run's validation split)")
    e.add_argument("--tokens", type=positive_int, default=65536, help="tokens to evaluate")
    e.add_argument("--seq-len", type=row_length, default=None, help="row length (default: the model's sequence_len)")
    e.add_argument("--memory", default="parallel,exact,zero",
                   help=f"comma-separated memories, each scored ({memory_help}); exact is the slow one")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("--bucket", type=positive_int, default=64, help="position bucket of the exact BPB breakdown")
    device_and_json(e)
    e.set_defaults(run=cmd_eval_bpb)
    e = esub.add_parser("core", help="the CORE suite (DCLM tasks as nanochat) from a local bundle")
    e.add_argument("checkpoint")
    e.add_argument("--bundle", required=True, help="folder with core.yaml, eval_meta_data.csv, eval_data/")
    e.add_argument("--memory", default="exact", help=f"how prompts are read: {memory_help}")
    e.add_argument("--max-per-task", type=positive_int, default=None, help="items per task (quick runs)")
    device_and_json(e)
    e.set_defaults(run=cmd_eval_core)

    e = esub.add_parser("harness", help="lm-evaluation-harness tasks (pip install 'lrt[eval]')")
    e.add_argument("checkpoint", help="a run folder, a checkpoint folder or an exported HF folder")
    e.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    e.add_argument("--include-path", default=None, help="a folder of task YAMLs (your own, local tasks)")
    e.add_argument("--memory", default="exact", help=f"how every request is read: {memory_help}")
    e.add_argument("--limit", type=positive_int, default=None, help="examples per task (quick runs)")
    e.add_argument("--num-fewshot", type=natural, default=None)
    e.add_argument("--batch-size", type=positive_int, default=8)
    device_and_json(e)
    e.set_defaults(run=cmd_eval_harness)

    p = sub.add_parser("export", help="write a run in another format")
    xsub = p.add_subparsers(dest="export_command", required=True, parser_class=Parser)
    x = xsub.add_parser("hf", help="a Hugging Face transformers folder (pip install 'lrt[hf]')")
    x.add_argument("checkpoint", help="a run folder or a checkpoint folder")
    x.add_argument("out", help="a new folder")
    x.set_defaults(run=cmd_export_hf)

    p = sub.add_parser("generate", help="sample text with the true recurrence")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    p.add_argument("--prompt-file", help="one prompt per line")
    p.add_argument("--memory", default="exact",
                   help=f"how the prompt is read before generating ({memory_help}); generation itself is exact")
    p.add_argument("--max-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=natural, default=0)
    p.add_argument("--quiet", action="store_true", help="print nothing but the JSON/stderr summary")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="decode with the compiled fixed-shape step, a CUDA graph on GPU (default: on CUDA only; "
                        "compiling takes 10-30 s the first time)")
    device_and_json(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("bench", help="speed and memory of LRT against the baseline, in one process")
    bsub = p.add_subparsers(dest="bench_command", required=True, parser_class=Parser)
    b = bsub.add_parser("train", help="training step time, FLOP ratio and memory per schedule")
    b.add_argument("--config", default="small", help=f"model preset: {PRESET_NAMES}")
    b.add_argument("--schedules", default=None,
                   help=f"comma-separated schedule specs, baseline included (default: {','.join(TRAIN_SCHEDULES)})")
    b.add_argument("--repeats", type=positive_int, default=5)
    b.add_argument("--warmup", type=natural, default=1)
    b.add_argument("--batch-size", type=positive_int, default=None)
    b.add_argument("--seq-len", type=row_length, default=None)
    b.add_argument("--dtype", choices=DTYPES, default="float32")
    b.add_argument("--device", default="auto")
    b.add_argument("--compile", action="store_true", help="compile each block (as lrt train --compile)")
    b.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    b.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                   help="subset-pass attention: auto (flex on CUDA, else sdpa), sdpa or flex")
    b.add_argument("--peak-tflops", type=positive_number, default=None,
                   help="the device's peak (dense bf16) TFLOP/s for MFU; H100, H200 and A100 are known")
    b.add_argument("--json", type=output_file, metavar="PATH")
    b.set_defaults(run=cmd_bench_train)
    b = bsub.add_parser("decode", help="per-token decoding latency and prefill time")
    b.add_argument("--config", default="wide", help=f"model preset: {PRESET_NAMES}")
    b.add_argument("--batch", type=positive_ints, default="1,8", help="comma-separated batch sizes")
    b.add_argument("--tokens", type=positive_int, default=64)
    b.add_argument("--prompt-len", type=positive_int, default=64)
    b.add_argument("--repeats", type=positive_int, default=5)
    b.add_argument("--dtype", choices=DTYPES, default="float32")
    b.add_argument("--compile", action="store_true",
                   help="also time the compiled static step (a CUDA graph on GPU) of every variant")
    b.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated pathway variants, the baseline always timed (default: {','.join(VARIANTS)})")
    device_and_json(b)
    b.set_defaults(run=cmd_bench_decode)

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

    p = sub.add_parser("study", help="a grid of runs with seeds (the paper's comparisons) and its report")
    ssub = p.add_subparsers(dest="study_command", required=True, parser_class=Parser)
    st = ssub.add_parser("run", help="run every cell (skips finished runs, resumes interrupted ones)")
    st.add_argument("spec", help="a study spec (TOML), e.g. studies/cpu.toml")
    st.add_argument("--out", required=True, help="the study's folder")
    st.add_argument("--jobs", type=positive_int, default=1, help="runs side by side (a GPU each, or a share of the cores)")
    st.add_argument("--dry-run", action="store_true", help="print every cell, its steps and FLOPs, and stop")
    st.set_defaults(run=cmd_study_run)
    st = ssub.add_parser("report", help="report.md and plots: means, intervals, a verdict per paper claim")
    st.add_argument("dir", help="the study's folder")
    st.add_argument("--bundle", default=None, help="a CORE bundle: also CORE with exact memory of every run")
    st.set_defaults(run=cmd_study_report)

    p = sub.add_parser("recipe", help="end-to-end recipes (the paper's pretraining comparison)")
    rsub = p.add_subparsers(dest="recipe", required=True, parser_class=Parser)
    r = rsub.add_parser("paper-d20", help="tokenizer, baseline and LRT pretraining at equal FLOPs, eval bpb and core")
    r.add_argument("--smoke", action="store_true", help="the whole chain on tiny sizes on the CPU (2 processes)")
    r.add_argument("--out", default=None, help="folder of every stage (default runs/paper_d20)")
    r.add_argument("--nproc", type=positive_int, default=None, help="processes (default: the GPUs here)")
    r.add_argument("--ratio", type=positive_number, default=None, help="tokens per baseline parameter (default 10)")
    r.add_argument("--total-batch-size", type=positive_int, default=None, help="tokens per step (default 524288)")
    r.add_argument("--batch-size", type=positive_int, default=None, help="sequences per micro-batch and rank (16)")
    r.add_argument("--data", default=None, help="FineWeb-Edu parquet shards (default data/fineweb-edu)")
    r.add_argument("--bundle", default=None, help="the CORE bundle (default data/eval_bundle)")
    r.set_defaults(run=cmd_recipe)

    p = sub.add_parser("demo", help="train a small LRT and its baseline on the bundled corpus (CPU, ~6 min)")
    p.add_argument("--out", default="runs/demo", help="folder of the two runs and the plot")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="LRT training steps (the baseline gets the same FLOPs)")
    p.add_argument("--quick", action="store_true", help="a tiny model for a few seconds (a smoke test)")
    p.add_argument("--json", type=output_file, metavar="PATH", help="also write the report as JSON")
    p.set_defaults(run=cmd_demo)
    return parser


def debug() -> bool:
    """LRT_DEBUG=1 (anything but empty or 0) shows tracebacks instead of one-line errors."""
    return os.environ.get("LRT_DEBUG", "0") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C). Under
    torchrun every rank exits so, and rank 0 alone prints the line."""
    keep_freed_memory()
    command, speaks = "lrt", distributed.launch().main

    def say(text: str) -> None:
        if speaks:
            print(text, file=sys.stderr)

    try:
        args = build_parser().parse_args(argv)
        command = f"lrt {args.command}"
        args.run(args)
    except UsageError as e:
        say(str(e))
        return 2
    except QuietExit:  # another rank failed and says why
        return 2
    except Interrupted as e:
        say(f"{command}: {e}")
        return 130
    except KeyboardInterrupt:
        say(f"{command}: interrupted")
        return 130
    except (ValueError, OSError) as e:  # bad input, and what the machine refuses (a full disk, a path)
        if debug():
            raise
        say(f"{command}: error: {' '.join(str(e).split())}")
        return 2
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
