"""`lrt bench serve`: the server under load, LRT beside the same-size baseline, measured in one
process over loopback HTTP (pip install 'lrt[serve]').

Each model (random weights of a preset, byte-level vocabulary) is served on a port of its own by
this process; the clients are threads of another process.
A round sends, for each concurrency level and each model in turn, that many greedy streaming
requests at once (`ignore_eos`, so every request generates the same number of tokens), and
times each request from its send: the first chunk (time to first token), the end. Round 0 warms
up (and compiles, where the server compiles) and is not counted. Per level and model we report
requests per second and generated tokens per second (completed requests and tokens over the
wall time of the level), and the p50 / p99 over requests of the time to first token and of each
stream's own tokens per second after its first.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from ..config import LRTConfig
from ..data.tokenizer import ByteTokenizer
from ..model import LRT
from ..presets import VARIANTS, get_preset
from .serve import BackgroundServer, served_model

PROMPT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def stream_once(port: int, body: dict) -> dict:
    """One streaming request: seconds to its first chunk and to its end, and its completion tokens."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {response.read()[:200]!r}")
    first, tokens = None, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"]:
            first = time.perf_counter() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return {"first": first, "end": time.perf_counter() - t0, "tokens": tokens}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_level(port: int, name: str, streams: int, tokens: int) -> dict:
    """`streams` requests sent together; their timings and the wall time of the level."""
    results = [None] * streams

    def one(i):
        body = {
            "model": name,
            "prompt": f"{PROMPT} ({i})",
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        results[i] = stream_once(port, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if any(r is None for r in results):
        raise RuntimeError("a request failed (see above)")
    return {"wall": wall, "requests": results}


def bench_serve(
    config: str = "small",
    *,
    streams: tuple[int, ...] = (1, 8, 32),
    tokens: int = 64,
    rounds: int = 3,
    device: str = "cpu",
    compile: bool | None = None,
    variants: tuple[str, ...] = ("baseline", "LRT-shared"),
    progress=print,
) -> dict:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    tokenizer = ByteTokenizer()
    base = get_preset(config).config(vocab_size=tokenizer.vocab_size)
    if len(tokenizer.encode(PROMPT)) + 8 + tokens > base.sequence_len:
        raise ValueError(
            f"{tokens} tokens after the prompt do not fit the {base.sequence_len}-token window of {config}"
        )
    names = ["baseline", *(v for v in variants if v != "baseline")]
    servers = {}
    for name in names:
        torch.manual_seed(0)
        model = LRT(LRTConfig(**{**base.to_dict(), **VARIANTS[name]}), device=torch.device(device))
        served = served_model(model, tokenizer, name=name, max_batch=max(streams), compile=compile)
        servers[name] = BackgroundServer(served)
    samples = {(s, name): [] for s in streams for name in names}
    with contextlib.ExitStack() as running:
        for server in servers.values():
            running.enter_context(server)
        # the clients run in a process of their own, as real clients do: in the server's process they
        # would compete with it for the interpreter lock and count their own overhead as its
        clients = running.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
        for round_ in range(1 + rounds):
            for s in streams:
                for name in names:  # the models take turns, so a slow moment of the machine hits both
                    level = clients.submit(load_level, servers[name].port, name, s, tokens).result()
                    if round_ > 0:
                        samples[(s, name)].append(level)
            if progress:
                progress(f"round {round_ + 1}/{1 + rounds}" + (" (warmup)" if round_ == 0 else ""))
    levels = {}
    for s in streams:
        rows = levels[str(s)] = {}
        for name in names:
            runs = samples[(s, name)]
            requests = [r for level in runs for r in level["requests"]]
            wall = sum(level["wall"] for level in runs)
            rate = [(r["tokens"] - 1) / (r["end"] - r["first"]) for r in requests if r["end"] > r["first"]]
            rows[name] = {
                "requests_per_s": len(requests) / wall,
                "tokens_per_s": sum(r["tokens"] for r in requests) / wall,
                "ttft_p50": percentile([r["first"] for r in requests], 0.5),
                "ttft_p99": percentile([r["first"] for r in requests], 0.99),
                "stream_tokens_per_s_p50": percentile(rate, 0.5),
                "stream_tokens_per_s_p99": percentile(rate, 0.01),  # the slow tail: the 99th percentile from below
                "completed": len(requests),
                "tokens": sum(r["tokens"] for r in requests),
            }
    return {
        "kind": "serve",
        "config": config,
        "model": base.to_dict(),
        "device": device,
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "prompt_tokens": len(tokenizer.encode(PROMPT)) + 5,
        "rounds": rounds,
        "streams": list(streams),
        "levels": levels,
        "scaling": {
            name: {
                str(s): levels[str(s)][name]["tokens_per_s"] / levels[str(streams[0])][name]["tokens_per_s"]
                for s in streams
            }
            for name in names
        },
    }


def format_serve(report: dict) -> str:
    m = report["model"]
    lines = [
        f"lrt bench serve: config {report['config']} (d={m['n_embd']}, {m['n_layer']} layers, window "
        f"{m['sequence_len']}), {report['device']}, {report['threads']} threads; greedy streams of "
        f"{report['tokens']} tokens after a ~{report['prompt_tokens']}-token prompt, "
        f"{report['rounds']} rounds over HTTP",
        f"{'streams':<9}{'model':<13}{'req/s':>8}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'stream tok/s p50':>18}{'p99':>8}",
    ]
    for s, rows in report["levels"].items():
        for name, r in rows.items():
            lines.append(
                f"{s:<9}{name:<13}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>10.1f}"
                f"{r['ttft_p50'] * 1000:>8.0f}ms{r['ttft_p99'] * 1000:>8.0f}ms"
                f"{r['stream_tokens_per_s_p50']:>18.1f}{r['stream_tokens_per_s_p99']:>8.1f}"
            )
    first = str(report["streams"][0])
    for name, scaling in report["scaling"].items():
        rest = ", ".join(f"{x:.1f}x at {s}" for s, x in scaling.items() if s != first)
        lines.append(f"{name}: tokens/s against {first} stream: {rest}")
    return "\n".join(lines)
