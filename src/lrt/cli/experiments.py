"""`lrt params`, `lrt bench`, `lrt demo`, `lrt study` and `lrt recipe`: comparisons of LRT with its
baseline."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..config import VALUE_EMBEDS, LRTConfig
from ..presets import COMPARATOR_SCHEDULES, PATHWAY_VARIANTS, PRESET_NAMES, VARIANTS
from ..train.config import DTYPES, flag_fields
from .args import (
    Parser,
    add_config_flags,
    device_and_json,
    keywords,
    natural,
    output_file,
    positive_int,
    positive_ints,
    positive_number,
    row_length,
    write_json,
)


def cmd_params(args) -> None:
    from ..model import parameter_counts

    print(f"depth {args.depth}, vocab {args.vocab_size}, value embeddings: {args.value_embeds}")
    print(f"{'variant':<16}{'total':>16}{'pathway':>14}{'share':>9}{'stack passes/token':>21}")
    for name, overrides in VARIANTS.items():
        config = LRTConfig.from_depth(
            args.depth, vocab_size=args.vocab_size, value_embeds=args.value_embeds, **overrides
        )
        c = parameter_counts(config)
        passes = config.loops * config.slots  # what generating one token costs, in forwards through the stack
        print(f"{name:<16}{c.total:>16,}{c.pathway:>14,}{100 * c.share:>8.3f}%{passes:>21}")


def cmd_bench_train(args) -> None:
    from ..experiments.bench import bench_train, format_train
    from ..runtime import resolve_device

    report = bench_train(
        args.config,
        schedules=args.schedules.split(",") if args.schedules is not None else None,
        comparators=tuple(args.comparators.split(",")) if args.comparators else (),
        batch=args.batch_size,
        device=str(resolve_device(args.device)),
        progress=lambda msg: print(msg, file=sys.stderr),
        **keywords(
            args,
            "repeats",
            "warmup",
            "seq_len",
            "total_batch_size",
            "dtype",
            "compile",
            "attention",
            "activation_checkpointing",
            "peak_tflops",
        ),
    )
    print(format_train(report))
    write_json(args.json, report)


def cmd_bench_decode(args) -> None:
    from ..experiments.bench import bench_decode, format_decode
    from ..runtime import resolve_device

    report = bench_decode(
        args.config,
        batches=tuple(args.batch),
        device=str(resolve_device(args.device)),
        variants=tuple(args.variants.split(",")),
        progress=lambda msg: print(msg, file=sys.stderr),
        **keywords(args, "tokens", "prompt_len", "repeats", "dtype", "compile"),
    )
    print(format_decode(report))
    write_json(args.json, report)


def cmd_bench_serve(args) -> None:
    from ..runtime import resolve_device
    from .models import needs

    bench = needs("serve", "lrt.integrations.serve_bench")
    serve = needs("serve", "lrt.integrations.serve")
    device = resolve_device(args.device)
    serve.serving_threads(args.threads, device)
    report = bench.bench_serve(
        args.config,
        streams=tuple(args.streams),
        device=str(device),
        variants=tuple(args.variants.split(",")),
        progress=lambda msg: print(msg, file=sys.stderr),
        **keywords(args, "tokens", "rounds", "compile"),
    )
    print(bench.format_serve(report))
    write_json(args.json, report)


def given_settings(args, base):
    """`base` (a settings dataclass: defaults or a preset like QUICK) with the flags given."""
    return dataclasses.replace(
        base, **{f.name: vars(args)[f.name] for f, _ in flag_fields(type(base)) if f.name in vars(args)}
    )


def cmd_demo(args) -> None:
    from ..experiments.demo import QUICK, DemoSettings, format_report, run_demo

    settings = given_settings(args, QUICK if args.quick else DemoSettings())
    report = run_demo(settings, log=lambda msg: print(msg, file=sys.stderr))
    print(format_report(report))
    print(f"curves: {Path(settings.out) / 'curves.png'}; runs and checkpoints under {settings.out}/")
    write_json(args.json, report)


def cmd_study_run(args) -> None:
    from ..experiments.study import describe, run_study
    from ..experiments.study_spec import load_spec

    spec = load_spec(args.spec, args.out)
    print(describe(spec), file=sys.stderr)
    if args.dry_run:
        return
    failures = run_study(spec, Path(args.out), jobs=args.jobs)
    if failures:
        raise ValueError(f"{len(failures)} run(s) failed: " + " | ".join(failures))
    print(f"all {len(spec.jobs)} runs finished; lrt study report {args.out}")


def cmd_study_report(args) -> None:
    from ..experiments.study_report import write_report
    from ..experiments.study_results import study_records
    from ..experiments.study_spec import open_study

    spec = open_study(Path(args.dir))
    print(write_report(spec, study_records(spec, bundle=args.bundle)))


def cmd_study_status(args) -> None:
    from ..experiments.study import status
    from ..experiments.study_spec import open_study

    print(status(open_study(Path(args.dir))))


def cmd_study_publish(args) -> None:
    from ..experiments.study_publish import publish
    from ..experiments.study_spec import open_study

    out = publish(open_study(Path(args.dir)), Path(args.out), every=args.every)
    print(f"published {out}: lrt study report {out} writes its report.md again")


def cmd_study_restore(args) -> None:
    from ..experiments.study_publish import restore

    out = restore(Path(args.published), Path(args.out))
    print(f"restored {out}: lrt study run {out / 'spec.toml'} --out {out} continues it")


def cmd_recipe(args) -> None:
    from ..experiments.recipe import SMOKE, RecipeSettings, format_recipe, run_recipe

    settings = given_settings(args, SMOKE if vars(args).get("smoke") else RecipeSettings())
    print(format_recipe(run_recipe(settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))))


def add_commands(sub) -> None:
    from ..attention import ATTENTION_CHOICES
    from ..experiments.bench import TRAIN_SCHEDULES
    from ..experiments.demo import DemoSettings
    from ..experiments.recipe import RecipeSettings

    p = sub.add_parser("params", help="parameter counts of baseline, LRT-shared and LRT-layerwise at a depth")
    p.add_argument("--depth", type=positive_int, default=20)
    p.add_argument("--vocab-size", type=positive_int, default=32768)
    p.add_argument("--value-embeds", choices=VALUE_EMBEDS, default="all")
    p.set_defaults(run=cmd_params)

    p = sub.add_parser("bench", help="speed and memory of LRT against the baseline, in one process")
    bsub = p.add_subparsers(dest="bench_command", required=True, parser_class=Parser)
    b = bsub.add_parser("train", help="training step time, FLOP ratio and memory per schedule")
    b.add_argument("--config", default="small", help=f"model preset: {PRESET_NAMES}")
    b.add_argument(
        "--schedules",
        default=None,
        help=f"comma-separated schedule specs, baseline included (default: {','.join(TRAIN_SCHEDULES)})",
    )
    b.add_argument(
        "--comparators",
        default=None,
        help=f"comma-separated comparators, each with its own schedule ({','.join(COMPARATOR_SCHEDULES)})",
    )
    b.add_argument("--repeats", type=positive_int, default=5)
    b.add_argument("--warmup", type=natural, default=1)
    b.add_argument("--batch-size", type=positive_int, default=None)
    b.add_argument("--seq-len", type=row_length, default=None)
    b.add_argument(
        "--total-batch-size",
        type=positive_int,
        default=None,
        help="tokens per optimizer step, accumulated over micro-batches as training does (default: one micro-batch)",
    )
    b.add_argument("--dtype", choices=DTYPES, default="float32")
    b.add_argument("--device", default="auto")
    b.add_argument("--compile", action="store_true", help="compile each block (as lrt train --compile)")
    b.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    b.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="auto",
        help="subset-pass attention: auto (flex on CUDA, else sdpa), sdpa or flex",
    )
    b.add_argument(
        "--peak-tflops",
        type=positive_number,
        default=None,
        help="the device's peak (dense bf16) TFLOP/s for MFU; H100, H200 and A100 are known",
    )
    b.add_argument("--json", type=output_file, metavar="PATH")
    b.set_defaults(run=cmd_bench_train)
    b = bsub.add_parser("decode", help="per-token decoding latency and prefill time")
    b.add_argument("--config", default="wide", help=f"model preset: {PRESET_NAMES}")
    b.add_argument("--batch", type=positive_ints, default="1,8", help="comma-separated batch sizes")
    b.add_argument("--tokens", type=positive_int, default=64)
    b.add_argument("--prompt-len", type=positive_int, default=64)
    b.add_argument("--repeats", type=positive_int, default=5)
    b.add_argument("--dtype", choices=DTYPES, default="float32")
    b.add_argument(
        "--compile",
        action="store_true",
        help="also time the compiled static step (a CUDA graph on GPU) of every variant",
    )
    b.add_argument(
        "--variants",
        default=",".join(PATHWAY_VARIANTS),
        help=f"comma-separated variants, the baseline always timed: {','.join(VARIANTS)} (default: "
        f"{','.join(PATHWAY_VARIANTS)})",
    )
    device_and_json(b)
    b.set_defaults(run=cmd_bench_decode)
    b = bsub.add_parser("serve", help="the server under load: requests/s, time to first token, tokens/s (lrt[serve])")
    b.add_argument("--config", default="small", help=f"model preset (random weights): {PRESET_NAMES}")
    b.add_argument("--streams", type=positive_ints, default="1,8,32", help="comma-separated concurrent streams")
    b.add_argument("--tokens", type=positive_int, default=64, help="tokens each request generates")
    b.add_argument("--rounds", type=positive_int, default=3)
    b.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve with the compiled step, a CUDA graph per batch size on GPU (default: on CUDA only)",
    )
    b.add_argument(
        "--variants",
        default="baseline,LRT-shared",
        help=f"comma-separated variants, the baseline always served: {','.join(VARIANTS)}",
    )
    b.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the models (default: cores - 1)")
    device_and_json(b)
    b.set_defaults(run=cmd_bench_serve)

    p = sub.add_parser("demo", help="train a small LRT and its baseline on the bundled corpus (CPU, 8-12 min)")
    add_config_flags(p, DemoSettings)
    p.add_argument("--quick", action="store_true", help="a tiny model for a few seconds (a smoke test)")
    p.add_argument("--json", type=output_file, metavar="PATH", help="also write the report as JSON")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("study", help="a grid of runs with seeds (the paper's comparisons) and its report")
    ssub = p.add_subparsers(dest="study_command", required=True, parser_class=Parser)
    st = ssub.add_parser("run", help="run every cell (skips finished runs, resumes interrupted ones)")
    st.add_argument("spec", help="a study spec (TOML), e.g. studies/cpu.toml")
    st.add_argument("--out", required=True, help="the study's folder")
    st.add_argument(
        "--jobs", type=positive_int, default=1, help="runs side by side (a GPU each, or a share of the cores)"
    )
    st.add_argument("--dry-run", action="store_true", help="print every cell, its steps and FLOPs, and stop")
    st.set_defaults(run=cmd_study_run)
    st = ssub.add_parser(
        "report", help="report.md, results.jsonl and plots: paired intervals and a verdict per budget and pairing"
    )
    st.add_argument("dir", help="the study's folder")
    st.add_argument("--bundle", default=None, help="a CORE bundle: also CORE with exact memory of every branch end")
    st.set_defaults(run=cmd_study_report)
    st = ssub.add_parser("status", help="runs and training FLOPs done per stage, runs under way, the rest's cost")
    st.add_argument("dir", help="the study's folder")
    st.set_defaults(run=cmd_study_status)
    st = ssub.add_parser(
        "publish", help="the report, its records and each run's small files (no checkpoints) in a folder to commit"
    )
    st.add_argument("dir", help="the study's folder")
    st.add_argument("--out", required=True, help="a new (or empty) folder, e.g. docs/study")
    st.add_argument(
        "--every", type=positive_int, default=10, help="keep every N-th step's training record (validations: all)"
    )
    st.set_defaults(run=cmd_study_publish)
    st = ssub.add_parser(
        "restore", help="a published study as a study folder again, for lrt study run to continue (more seeds)"
    )
    st.add_argument("published", help="a folder lrt study publish wrote, e.g. docs/study")
    st.add_argument("--out", required=True, help="a new (or empty) folder for the study")
    st.set_defaults(run=cmd_study_restore)

    p = sub.add_parser("recipe", help="end-to-end recipes (the paper's pretraining comparison)")
    rsub = p.add_subparsers(dest="recipe", required=True, parser_class=Parser)
    r = rsub.add_parser("paper-d20", help="tokenizer, baseline and LRT pretraining at equal FLOPs, eval bpb and core")
    add_config_flags(r, RecipeSettings)
    r.set_defaults(run=cmd_recipe)
