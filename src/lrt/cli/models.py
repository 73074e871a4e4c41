"""`lrt eval`, `lrt generate` and `lrt export`: reading a trained model."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..memory import MEMORY_SPECS, Memory
from ..train import distributed
from .args import Parser, device_and_json, keywords, natural, port_number, positive_int, row_length, word, write_json


def memory_of(run, spec: str) -> Memory:
    """A --memory value; a bare "parallel" is the run's training schedule."""
    return Memory.parse(spec, schedule=run.schedule)


def cmd_eval_bpb(args) -> None:
    from ..evaluate.scoring import score_run
    from ..train.checkpoint import load_run

    world, device = distributed.setup(args.device)
    run = load_run(args.checkpoint, str(device))
    cfg = run.model.config
    scored = score_run(
        run,
        args.memory.split(","),
        progress=world.main,
        world=world,
        **keywords(args, "tokens", "data", "seq_len", "batch_size", "bucket"),
    )
    if not world.main:
        return
    result = scored.result
    print(
        f"checkpoint {run.record.get('step')} steps: {cfg.describe()}; training schedule: {run.train_config.schedule}"
    )
    print(f"data: {scored.data}, {scored.rows} rows x {scored.seq_len} tokens, {result.bytes:,} bytes")
    print(result.format(recurrent=cfg.injection != "none" or cfg.latent_thoughts > 0))
    write_json(
        args.json,
        {
            "checkpoint": str(run.path),
            "data": scored.data,
            "rows": scored.rows,
            "seq_len": scored.seq_len,
            **dataclasses.asdict(result),
            "gap": result.gap,
        },
    )


def cmd_eval_core(args) -> None:
    from ..evaluate.core import evaluate_core
    from ..train.checkpoint import load_run

    world, device = distributed.setup(args.device)
    run = load_run(args.checkpoint, str(device))
    memory = memory_of(run, args.memory)
    result = evaluate_core(
        run.model,
        run.tokenizer,
        args.bundle,
        memory=memory,
        max_per_task=args.max_per_task,
        progress=world.main,
        world=world,
    )
    if not world.main:
        return
    print(f"CORE of {run.model.config.describe()}, prompts read with {memory.describe()}")
    print(result.format())
    write_json(
        args.json,
        {
            "checkpoint": str(run.path),
            "memory": result.memory,
            "core": result.core,
            "tasks": [dataclasses.asdict(t) for t in result.tasks],
        },
    )


def cmd_generate(args) -> None:
    from ..data.sources import read_utf8
    from ..data.tokenizer import TextStream
    from ..decoding import Decoder, compiled_by_default
    from ..train.checkpoint import load_run

    run = load_run(args.checkpoint, args.device)
    compiled = args.compile if args.compile is not None else compiled_by_default(run.model.wte.weight.device)
    decoder = Decoder(run.model, compile=compiled)
    tok = run.tokenizer
    texts = list(args.prompt or [])
    if args.prompt_file:
        texts += [line for line in read_utf8(args.prompt_file).splitlines() if line.strip()]
    if not texts:
        raise ValueError("give a prompt with --prompt or --prompt-file")
    if not all(texts):
        raise ValueError("the prompt is empty: generation continues a text, give it at least one character")
    prompts = [[tok.bos_id] + tok.encode(t) for t in texts]  # documents start with BOS in training
    stream = TextStream(tok, texts[0]) if len(prompts) == 1 and not args.quiet else None
    result = decoder.generate(
        prompts,
        args.max_tokens,
        memory=memory_of(run, args.memory),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token=tok.bos_id,
        on_token=(lambda b, token: stream.add(token)) if stream else None,
    )
    completions = [tok.decode(t) for t in result.tokens]
    if stream:
        stream.close()
    elif not args.quiet:
        for text, completion in zip(texts, completions):
            print(f"=== {text!r}\n{text}{completion}\n")
    print(result.summary(), file=sys.stderr)
    write_json(
        args.json,
        {
            "memory": result.memory.spec,
            "prefill_forwards": result.prefill_forwards,
            "results": [
                {"prompt": t, "completion": c, "tokens": len(ids), "stopped": s}
                for t, c, ids, s in zip(texts, completions, result.tokens, result.stopped)
            ],
        },
    )


def needs(extra: str, module: str):
    """Import an optional integration, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"this needs the optional extra: pip install 'lrt[{extra}]' ({e})") from None


def cmd_export_hf(args) -> None:
    from ..train.checkpoint import load_run

    hf = needs("hf", "lrt.integrations.hf")
    out = hf.export_hf(load_run(args.checkpoint, "cpu"), args.out)
    print(f"exported {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")


def cmd_serve(args) -> None:
    from ..train.checkpoint import load_run

    serve = needs("serve", "lrt.integrations.serve")
    trained = load_run(args.checkpoint, args.device)
    serve.serving_threads(args.threads, trained.model.wte.weight.device)
    served = serve.served_run(
        trained, name=args.name, max_batch=args.max_batch, max_tokens=args.max_tokens, compile=args.compile
    )
    serve.serve(served, host=args.host, port=args.port)


def cmd_eval_harness(args) -> None:
    harness = needs("eval", "lrt.integrations.lm_eval")
    options = keywords(args, "memory", "include_path", "limit", "batch_size", "num_fewshot", "device")
    results = harness.evaluate(args.checkpoint, tasks=args.tasks.split(","), **options)
    print(harness.table(results))
    write_json(args.json, harness.summary(results))


def add_commands(sub) -> None:
    memory_help = f"which memory the model reads with: {MEMORY_SPECS} (bare parallel: the run's training schedule)"
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = p.add_subparsers(dest="eval_command", required=True, parser_class=Parser)
    e = esub.add_parser("bpb", help="bits per byte under each memory: per pass and merged, exact, zero")
    e.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    e.add_argument("--data", default=None, help="text file(s) or parquet shards (default: the run's validation split)")
    e.add_argument("--tokens", type=positive_int, default=65536, help="tokens to evaluate")
    e.add_argument("--seq-len", type=row_length, default=None, help="row length (default: the model's sequence_len)")
    e.add_argument(
        "--memory",
        default="parallel,exact,zero",
        help=f"comma-separated memories, each scored ({memory_help}); exact is the slow one",
    )
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
    p.add_argument(
        "--memory",
        default="exact",
        help=f"how the prompt is read before generating ({memory_help}); generation itself is exact",
    )
    p.add_argument("--max-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=natural, default=0)
    p.add_argument("--quiet", action="store_true", help="print nothing but the JSON/stderr summary")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode with the compiled fixed-shape step, a CUDA graph on GPU (default: on CUDA only; "
        "compiling takes 10-30 s the first time)",
    )
    device_and_json(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("serve", help="an OpenAI-compatible server and a playground page (pip install 'lrt[serve]')")
    p.add_argument("checkpoint", help="a run folder, a checkpoint folder or an exported HF folder")
    p.add_argument("--host", type=word, default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--name", type=word, default=None, help="the model's name in the API (default: the run folder's)")
    p.add_argument("--max-batch", type=positive_int, default=32, help="requests decoding at once; later ones wait")
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="the most tokens one choice may ask for (default: the window)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode with the compiled step, a CUDA graph per batch size on GPU (default: on CUDA only)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the model (default: cores - 1)")
    p.set_defaults(run=cmd_serve)
