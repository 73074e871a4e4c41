"""`lrt bench`: what LRT costs next to the baseline, measured in one process on one machine.

Every measurement is repeated in rounds that visit the baseline and each LRT variant in turn,
so machine noise lands on all of them alike; we report medians, the spread (min-max), and the
median over rounds of each variant's time over the baseline's time in the same round.

- train: time of a forward+backward, and of a whole step with the optimizer, per schedule; the
  ideal FLOP ratio of each schedule (from its plan); activation memory (bytes saved for backward,
  exact on any device) and, on CUDA, the allocator's peak.
- decode: per-token latency of the KV-cache + memory step for baseline, LRT-shared and
  LRT-layerwise at several batch sizes; prefill time of the three prefill modes.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch

from ..attention import resolve_attention
from ..budget import Arm, baseline_of, micro_batches
from ..config import LRTConfig
from ..decoding import Decoder, prefill
from ..flops import decode_floor
from ..model import LRT, compile_model, parameter_counts
from ..presets import COMPARATOR_SCHEDULES, PATHWAY_VARIANTS, VARIANTS, get_preset
from ..runtime import device_name, known_peak_tflops
from ..schedules import parse_schedule
from ..train.optim import OptimConfig, build_optimizers

# the schedules `lrt bench train` compares by default (spec strings; any others may be given)
TRAIN_SCHEDULES = ("baseline", "interleaved:2", "interleaved:4", "multirefine:1", "chunked:64")
# how `lrt bench decode` reads the prompt before timing the per-token step
PREFILL_MEMORIES = ("exact", "parallel:interleaved:2", "fixed-point")


# dense bf16 datasheet peaks, TFLOP/s


def bench_config(name: str, **overrides) -> tuple[LRTConfig, int]:
    """A preset's model at bench's vocabulary, and its bench micro-batch."""
    preset = get_preset(name)
    return preset.config(**overrides), preset.bench_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


@dataclass
class Timing:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict:
        return {"median": self.median, "min": min(self.samples), "max": max(self.samples), "samples": self.samples}


def activation_bytes(model, fn) -> int:
    """Bytes of the tensors autograd keeps for backward during fn(), parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return sum(kept.values())


def memory_use(model, loss_fn, device: torch.device, measure_saved: bool = True) -> dict:
    """Bytes autograd saves for backward (not under torch.compile, whose graphs hide them) and,
    on CUDA, the allocator's peak above what was allocated before the forward."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    if measure_saved:
        saved = activation_bytes(model, loss_fn)
    else:
        saved = None
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated(device) - start if device.type == "cuda" else None
    return {"activation_bytes": saved, "cuda_peak_bytes": peak}


def bench_train(
    config: str = "small",
    *,
    schedules: list[str] | None = None,
    comparators: tuple[str, ...] = (),
    repeats: int = 5,
    warmup: int = 1,
    batch: int | None = None,
    seq_len: int | None = None,
    total_batch_size: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    attention: str = "auto",
    activation_checkpointing: bool = False,
    peak_tflops: float | None = None,
    progress=print,
) -> dict:
    """Forward+backward and step time, FLOP ratio and memory of each schedule (spec strings; the
    baseline is always measured) and of each comparator (names in COMPARATOR_SCHEDULES, trained
    with its schedule), in rounds that alternate between them. A step accumulates gradients over
    `total_batch_size` tokens (default: one micro-batch), as training does, so the optimizer's share
    of a step is training's."""
    names = [parse_schedule(n).spec for n in (schedules or TRAIN_SCHEDULES)]
    if "baseline" not in names:
        raise ValueError(f"schedules must include baseline (the ratios' denominator), got {names}")
    unknown = [c for c in comparators if c not in COMPARATOR_SCHEDULES]
    if unknown:
        raise ValueError(f"unknown comparator {unknown[0]!r}: choose from {', '.join(COMPARATOR_SCHEDULES)}")
    device = torch.device(device)
    peak_tflops = peak_tflops or (known_peak_tflops(device) if dtype == "bfloat16" else None)
    lrt_config, default_batch = bench_config(config, **({"sequence_len": seq_len} if seq_len else {}))
    batch = batch or default_batch
    T = lrt_config.sequence_len
    accum = 1 if total_batch_size is None else micro_batches(total_batch_size, batch * T, f"batch {batch} x length {T}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, lrt_config.vocab_size, (batch, T + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]
    arms = {name: (baseline_of(lrt_config) if name == "baseline" else lrt_config, name) for name in names}
    for name in comparators:
        arms[name] = (LRTConfig(**{**lrt_config.to_dict(), **VARIANTS[name]}), COMPARATOR_SCHEDULES[name])
    runs = {}
    for name, (cfg, schedule) in arms.items():
        torch.manual_seed(0)
        model = LRT(cfg, attention=attention, activation_checkpointing=activation_checkpointing, device=device)
        forward = compile_model(model) if compile else model
        runs[name] = dict(
            model=model,
            forward=forward,
            schedule=parse_schedule(schedule),
            optimizers=build_optimizers(model, OptimConfig()),
            fb=[],
            optimizer=[],
            step=[],
            first=None,
        )

    def loss_of(run):
        with autocast:
            return run["forward"](x, y, schedule=run["schedule"], return_logits=False).loss

    def forward_backward(run):
        loss_of(run).backward()

    def optimizer_step(run):
        for opt in run["optimizers"]:
            opt.step()
        for opt in run["optimizers"]:
            opt.zero_grad(set_to_none=True)

    for round_ in range(warmup + repeats):
        for name, run in runs.items():
            fb = _timed(lambda: forward_backward(run), device)
            run["model"].zero_grad(set_to_none=True)
            accumulated = sum(_timed(lambda: forward_backward(run), device) for _ in range(accum))
            opt = _timed(lambda: optimizer_step(run), device)
            if run["first"] is None:  # a compiled run compiles here: its cold compile time
                run["first"] = fb
            if round_ >= warmup:
                run["fb"].append(fb)
                run["optimizer"].append(opt)
                run["step"].append(accumulated + opt)
        if progress:
            progress(f"round {round_ + 1}/{warmup + repeats}" + (" (warmup)" if round_ < warmup else ""))

    results = {}
    for name, run in runs.items():
        model = run["model"]
        arm = Arm(model.config, run["schedule"], tokens_per_step=accum * batch * T)  # one step of one process
        flops = arm.flops_per_step
        results[name] = {
            "forward_backward": Timing(run["fb"]).as_dict(),
            "optimizer": Timing(run["optimizer"]).as_dict(),
            "step": Timing(run["step"]).as_dict(),
            "first_forward_backward": run["first"],
            "ideal_flop_ratio": arm.flop_ratio,
            "params": parameter_counts(model).total,
            "tokens_per_s": accum * batch * T / statistics.median(run["step"]),
            "tflops_per_s": flops / statistics.median(run["step"]) / 1e12,
            **memory_use(model, lambda: loss_of(run), device, measure_saved=not compile),
        }
        if peak_tflops:
            results[name]["mfu"] = results[name]["tflops_per_s"] / peak_tflops
    base = results["baseline"]
    for name, r in results.items():
        for key in ("forward_backward", "step"):  # median of the per-round ratios: noise common to a round cancels
            r[f"ratio_{key}"] = statistics.median(a / b for a, b in zip(r[key]["samples"], base[key]["samples"]))
        for key in ("activation_bytes", "cuda_peak_bytes"):
            if r.get(key) is not None:
                r[f"ratio_{key}"] = r[key] / base[key]
    return {
        "kind": "train",
        "config": config,
        "model": lrt_config.to_dict(),
        "batch": batch,
        "seq_len": T,
        "tokens_per_step": accum * batch * T,
        "dtype": dtype,
        "device": str(device),
        "device_name": device_name(device),
        "compile": compile,
        "activation_checkpointing": activation_checkpointing,
        "attention": resolve_attention(attention, device),
        "peak_tflops": peak_tflops,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "results": results,
    }


def format_train(report: dict) -> str:
    m, results = report["model"], report["results"]
    has = {
        key: any(r.get(key) is not None for r in results.values())
        for key in ("activation_bytes", "cuda_peak_bytes", "mfu")
    }
    header = f"{'schedule':<18}{'fwd+bwd ms':>19}{'x':>6}{'step ms':>19}{'x':>6}{'optim ms':>10}"
    header += f"{'ideal':>7}{'tok/s':>10}"
    header += f"{'act MB':>9}{'x':>6}" if has["activation_bytes"] else ""
    header += f"{'peak MB':>9}{'x':>6}" if has["cuda_peak_bytes"] else ""
    header += f"{'MFU':>7}" if has["mfu"] else ""
    lines = [
        f"lrt bench train: config {report['config']} (d={m['n_embd']}, {m['n_layer']} layers, T={report['seq_len']}, "
        f"batch {report['batch']}, {report.get('tokens_per_step', report['batch'] * report['seq_len']):,} tokens "
        f"per step), {report['dtype']}, {report['device_name']}, {report['threads']} threads, "
        f"attention {report['attention']}{', compiled per block' if report['compile'] else ''}"
        f"{', activation checkpointing' if report.get('activation_checkpointing') else ''}, "
        f"{report['repeats']} rounds",
        header,
    ]
    for name, r in results.items():
        row = f"{name:<18}"
        for key in ("forward_backward", "step"):
            t = r[key]
            row += (
                f"{1e3 * t['median']:>8.1f} ({1e3 * t['min']:.0f}-{1e3 * t['max']:.0f})".rjust(19)
                + f"{r[f'ratio_{key}']:>6.2f}"
            )
        optimizer = r.get("optimizer")  # older reports did not time it apart
        row += f"{1e3 * optimizer['median']:>10.1f}" if optimizer else f"{'':>10}"
        row += f"{r['ideal_flop_ratio']:>7.2f}{r['tokens_per_s']:>10.0f}"
        for key in ("activation_bytes", "cuda_peak_bytes"):
            if has[key]:
                row += f"{r[key] / 2**20:>9.0f}{r[f'ratio_{key}']:>6.2f}"
        if has["mfu"]:
            row += f"{100 * r['mfu']:>6.1f}%"
        lines.append(row)
    if report["compile"]:
        lines.append(
            "first forward+backward (compiling included): "
            + ", ".join(f"{name} {r['first_forward_backward']:.1f} s" for name, r in results.items())
        )
    lines.append(
        "step: the micro-batches of a step, then the optimizer (optim); "
        "x: median over rounds of time / the baseline's time in the same round; ideal: FLOP ratio of the "
        "schedule's passes; act: bytes saved for backward; peak: CUDA allocator peak during fwd+bwd"
        + (f"; MFU against {report['peak_tflops']:.0f} TFLOP/s" if has["mfu"] else "")
    )
    return "\n".join(lines)


def bench_decode(
    config: str = "wide",
    *,
    batches: tuple[int, ...] = (1, 8),
    tokens: int = 64,
    prompt_len: int = 64,
    repeats: int = 5,
    device: str = "cpu",
    dtype: str = "float32",
    compile: bool = False,
    variants: tuple[str, ...] = PATHWAY_VARIANTS,
    progress=print,
) -> dict:
    """Per-token latency of each variant (names in VARIANTS, the baseline always among them; a
    comparator's token is all its forwards: a loop's stack passes, PonderLM-2's token and thought) at
    each batch size, eager (the dynamic step) and, with `compile`, the compiled static step
    (a compiling decoding.Decoder); each variant's arithmetic floor; and prefill time of each prompt
    memory (PREFILL_MEMORIES) with the first LRT variant."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    device = torch.device(device)
    lrt_config, _ = bench_config(config)
    names = ["baseline", *(v for v in VARIANTS if v in variants and v != "baseline")]
    configs = {name: LRTConfig(**{**lrt_config.to_dict(), **VARIANTS[name]}) for name in names}
    modes = ("eager", "compiled") if compile else ("eager",)
    decoders = {}
    for mode in modes:
        for name, variant in configs.items():
            torch.manual_seed(0)
            model = LRT(variant, device=device)
            if dtype == "bfloat16":
                model.to(torch.bfloat16)
            decoders[(mode, name)] = Decoder(model, compile=mode == "compiled")
    g = torch.Generator().manual_seed(0)
    samples = {(key, b): [] for key in decoders for b in batches}
    first_step = {}  # (model, batch) -> seconds of its first step: a compiled one compiles there
    for round_ in range(1 + repeats):
        for b in batches:
            prompts = torch.randint(0, lrt_config.vocab_size, (b, prompt_len), generator=g).tolist()
            states, next_tokens = {}, {}
            for key, decoder in decoders.items():
                pre = decoder.prefill(prompts, prompt_len + tokens + 1)
                states[key], next_tokens[key] = pre.state, pre.logits.argmax(-1)
            # token by token, the models take turns, so a slow moment of the machine hits all of them
            for _ in range(tokens):
                for key, decoder in decoders.items():
                    t0 = time.perf_counter()
                    next_tokens[key] = decoder.step(next_tokens[key], states[key]).argmax(-1)
                    _sync(device)
                    if round_ > 0:  # round 0 warms up (and compiles)
                        samples[(key, b)].append(time.perf_counter() - t0)
                    else:
                        first_step.setdefault((key, b), time.perf_counter() - t0)
        if progress:
            progress(f"round {round_ + 1}/{1 + repeats}" + (" (warmup)" if round_ == 0 else ""))
    element_bytes = torch.finfo(getattr(torch, dtype)).bits // 8
    per_token = {}
    for b in batches:
        rows = per_token[str(b)] = {}
        for mode, name in decoders:
            median = statistics.median(samples[((mode, name), b)])
            floor = decode_floor(configs["baseline"], configs[name], b, prompt_len + tokens // 2, element_bytes)
            rows[f"{name} {mode}" if compile else name] = {
                **Timing(samples[((mode, name), b)]).as_dict(),
                "mode": mode,
                "overhead": median / statistics.median(samples[((mode, "baseline"), b)]) - 1,
                "speedup": statistics.median(samples[(("eager", name), b)]) / median,
                "floor": max(floor.values()),
                "floor_bytes": floor["bytes"],
                "floor_flops": floor["flops"],
                "first_step": first_step[((mode, name), b)],
            }
    # prefill: each memory on one prompt batch, with an LRT model (its memory is what they differ in)
    lrt_name = next((name for name in names if configs[name].injection != "none"), None)
    prefill_times = (
        {}
        if lrt_name is None
        else time_prefill(
            decoders[("eager", lrt_name)].model, batch=batches[-1], prompt_len=prompt_len, repeats=repeats, generator=g
        )
    )
    return {
        "kind": "decode",
        "config": config,
        "model": lrt_config.to_dict(),
        "tokens": tokens,
        "prompt_len": prompt_len,
        "device": str(device),
        "dtype": dtype,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "compile": compile,
        "per_token": per_token,
        "prefill": prefill_times,
        "prefill_batch": batches[-1],
        "prefill_model": lrt_name,
    }


def time_prefill(model, *, batch: int, prompt_len: int, repeats: int, generator) -> dict:
    """Time to read one prompt batch under each memory of PREFILL_MEMORIES, and its forward calls."""
    device = model.wte.weight.device
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=generator).tolist()
    prefill_times = {}
    for memory in PREFILL_MEMORIES:
        times, forwards = [], None
        for _ in range(1 + repeats):
            out = None

            def run():
                nonlocal out
                out = prefill(model, prompts, prompt_len + 1, memory=memory)

            times.append(_timed(run, device))
            forwards = out.forwards
        prefill_times[memory] = {**Timing(times[1:]).as_dict(), "forwards": forwards}
    return prefill_times


def format_decode(report: dict) -> str:
    m = report["model"]
    lines = [
        f"lrt bench decode: config {report['config']} "
        f"(d={m['n_embd']}, {m['n_layer']} layers, vocab {m['vocab_size']}), "
        f"{report['dtype']}, {report['device']}, {report['threads']} threads; {report['tokens']} tokens after a "
        f"{report['prompt_len']}-token prompt, {report['repeats']} rounds",
        f"{'batch':<7}{'model':<24}{'ms/token':>10}{'min-max':>16}{'overhead':>10}{'floor':>8}{'gap':>8}"
        f"{'vs eager':>10}",
    ]
    for b, rows in report["per_token"].items():
        for name, r in rows.items():
            spread = f"{1e3 * r['min']:.2f}-{1e3 * r['max']:.2f}"
            lines.append(
                f"{b:<7}{name:<24}{1e3 * r['median']:>10.3f}{spread:>16}{100 * r['overhead']:>+9.1f}%"
                f"{100 * r['floor']:>+7.1f}%{100 * (r['overhead'] - r['floor']):>+7.1f}%{r['speedup']:>9.2f}x"
            )
    if report["compile"]:
        firsts = [
            r["first_step"] for rows in report["per_token"].values() for r in rows.values() if r["mode"] == "compiled"
        ]
        lines.append(
            f"compiling: the first compiled step of a model and batch size took {min(firsts):.1f}-{max(firsts):.1f} s"
        )
    lines.append(
        "overhead: over the baseline of the same mode; floor: the pathway's extra share of the bytes read "
        "and FLOPs per token (the larger); gap: overhead - floor; vs eager: the eager step's time / this one's"
    )
    if report["prefill"]:
        lines.append(
            f"prefill of {report['prefill_batch']} x {report['prompt_len']} tokens "
            f"({report.get('prefill_model', 'LRT-shared')}):"
        )
    for memory, r in report["prefill"].items():
        lines.append(f"  {memory:<24}{1e3 * r['median']:>9.1f} ms  ({r['forwards']} forward calls)")
    return "\n".join(lines)
