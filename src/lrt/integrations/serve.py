"""`lrt serve`: the OpenAI completions API over HTTP (FastAPI and uvicorn, `pip install 'lrt[serve]'`),
and a playground page at `/`.

The HTTP layer only checks requests (openai_api.py) and carries tokens: decoding is the batcher's
(lrt.batching), which runs on a thread of its own and batches every request in flight. Each
choice of a request is one job of the batcher; its tokens come back through an asyncio queue. A
client that goes away mid-stream cancels its jobs, and their rows are free at the next step.
The server reads no file a request names, and binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..batching import Batcher, Job
from ..decoding import Decoder, compiled_by_default
from ..memory import Memory
from .openai_api import (
    ApiError,
    CompletionRequest,
    Limits,
    StopText,
    choice,
    completion_object,
    finish_reason,
    new_id,
    parse_body,
    parse_completion,
    usage,
)


def model_name(path: Path) -> str:
    """What a served run is called: its run folder's name (a checkpoint folder sits in
    RUN/checkpoints/), or the export folder's."""
    path = Path(path).resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


@dataclass
class Served:
    """What the server serves: the model's name, its tokenizer, the schedule a bare `parallel`
    reads with (None for an export), the batcher and the request limits."""

    name: str
    tokenizer: object
    schedule: str | None
    batcher: Batcher
    limits: Limits


def served_run(trained, *, name: str | None = None, **options) -> Served:
    """A loaded run (checkpoint.load_run) ready to serve, named after its folder unless `name`;
    `options` are served_model's."""
    return served_model(
        trained.model, trained.tokenizer, name=name or model_name(trained.path), schedule=trained.schedule, **options
    )


def served_model(
    model, tokenizer, *, name: str, schedule=None, max_batch: int = 32, max_tokens: int | None = None, compile=None
) -> Served:
    """A model ready to serve: its batcher (compiled by default on CUDA only, as generation) and limits
    (max_tokens per choice, at most the window)."""
    if compile is None:
        compile = compiled_by_default(model.wte.weight.device)
    window = model.config.sequence_len
    return Served(
        name=name,
        tokenizer=tokenizer,
        schedule=schedule,
        batcher=Batcher(Decoder(model, compile=compile), max_batch=max_batch),
        limits=Limits(max_tokens=min(max_tokens or window, window)),
    )


class Choice:
    """One choice in flight: its job, its text so far and how it ended."""

    def __init__(self, index: int, served: Served, stops: list[str]):
        self.index, self.text, self.tokens, self.reason = index, StopText(served.tokenizer, stops), 0, None
        self.job: Job | None = None


def create_app(served: Served) -> FastAPI:
    batcher = served.batcher

    @contextlib.asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()
        thread = threading.Thread(target=batcher.run, args=(stop,), name="lrt-batcher", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(10)

    app = FastAPI(title="lrt serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return JSONResponse(ApiError(str(e.detail), status=e.status_code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):  # never a traceback to a client
        return JSONResponse(ApiError(f"internal error: {type(e).__name__}", status=500).body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return resources.files("lrt.integrations").joinpath("playground.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name, **batcher.load}

    @app.get("/v1/models")
    async def models():
        window = batcher.window
        entry = {"id": served.name, "object": "model", "created": 0, "owned_by": "lrt", "max_model_len": window}
        entry["max_tokens"] = served.limits.max_tokens  # ours: the most one choice may ask for
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse_body(await request.body())
        req = parse_completion(body, model=served.name, limits=served.limits)
        try:
            memory = Memory.parse(req.memory, schedule=served.schedule)
        except ValueError as e:
            raise ApiError(f"memory: {e}", param="memory") from None
        tok = served.tokenizer
        prompts = [[tok.bos_id] + tok.encode(p) for p in req.prompts]  # documents start with BOS, as in training
        longest = max(map(len, prompts))
        if longest > batcher.window:
            raise ApiError(
                f"a prompt of {longest} tokens is longer than the model's window of {batcher.window} tokens",
                param="prompt",
            )
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        choices = start(served, req, prompts, memory, queue, loop)
        prompt_tokens = sum(map(len, prompts))
        cid = new_id()
        if req.stream:
            events = stream_events(served, req, choices, queue, cid, prompt_tokens)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            texts = {c.index: "" for c in choices}
            async for c, text in progress(batcher, choices, queue, request):
                texts[c.index] += text
        finally:
            cancel(batcher, choices)
        if any(c.reason is None for c in choices):  # the client went away: nobody reads an answer
            raise ApiError("the client closed the connection", status=499)
        failed = [c.reason for c in choices if c.reason.startswith("error")]
        if failed:
            raise ApiError(f"decoding failed: {failed[0]}", status=500)
        out = [choice(c.index, texts[c.index], finish_reason(c.reason)) for c in choices]
        return completion_object(cid, served.name, out, usage=usage(prompt_tokens, sum(c.tokens for c in choices)))

    return app


def start(served: Served, req: CompletionRequest, prompts, memory, queue, loop) -> list[Choice]:
    """Submit a job per choice (prompt i, sample j: index i * n + j), each delivering into `queue`."""
    choices = []
    for i, prompt in enumerate(prompts):
        for j in range(req.n):
            c = Choice(i * req.n + j, served, req.stop)

            def deliver(token, finish, c=c):
                loop.call_soon_threadsafe(queue.put_nowait, (c, token, finish))

            c.job = Job(
                prompt=prompt,
                max_new_tokens=req.max_tokens,
                deliver=deliver,
                memory=memory,
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=req.top_p,
                seed=req.choice_seed(c.index),
                stop_token=None if req.ignore_eos else served.tokenizer.bos_id,
            )
            choices.append(c)
    for c in choices:
        served.batcher.submit(c.job)
    return choices


async def progress(batcher: Batcher, choices: list[Choice], queue, request: Request | None = None):
    """(choice, new text) as tokens arrive, until every choice has ended; a choice that meets a stop
    string ends there (its job is cancelled). A non-streaming request whose client has gone is
    cancelled too (checked every half second)."""
    open_ = len(choices)
    checked = time.monotonic()
    while open_:
        if request is not None and time.monotonic() - checked > 0.5:
            if await request.is_disconnected():
                return
            checked = time.monotonic()
        try:
            c, token, finish = await asyncio.wait_for(queue.get(), 0.5)
        except asyncio.TimeoutError:
            continue
        if c.reason is not None:
            continue  # ended by a stop string: what its job still sends is dropped
        if finish is None:
            c.tokens += 1
            text, stopped = c.text.add(token)
            if stopped:
                c.reason = "stop"
                batcher.cancel(c.job)
        else:
            text, c.reason = c.text.rest(), finish
        if c.reason is not None:
            open_ -= 1
        yield c, text


def cancel(batcher: Batcher, choices: list[Choice]) -> None:
    for c in choices:
        if not c.job.finished:
            batcher.cancel(c.job)


async def stream_events(served: Served, req: CompletionRequest, choices, queue, cid: str, prompt_tokens: int):
    """The server-sent events of a streamed completion: a chunk per piece of text, one with each
    choice's finish reason, the usage when asked, then [DONE]."""

    def event(payload) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    try:
        async for c, text in progress(served.batcher, choices, queue):
            if c.reason is not None and c.reason.startswith("error"):
                yield event(ApiError(f"decoding failed: {c.reason}", status=500).body())
                continue
            reason = None if c.reason is None else finish_reason(c.reason)
            if text or reason:
                yield event(completion_object(cid, served.name, [choice(c.index, text, reason)]))
        if req.include_usage:
            tokens = sum(c.tokens for c in choices)
            yield event(completion_object(cid, served.name, [], usage=usage(prompt_tokens, tokens)))
        yield "data: [DONE]\n\n"
    finally:  # the client went away, or we are done: free every row at once
        cancel(served.batcher, choices)


# running it ---------------------------------------------------------------------------------------


def serving_threads(requested: int | None, device) -> int:
    """The threads a server's matrix products get on a CPU (set for this process, which is the
    server's own): `requested`, else all cores but one, which the HTTP loop needs: with every core
    given to the products, OpenMP threads and the loop fight over them (docs/performance.md)."""
    import os

    import torch

    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    threads = requested or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    return threads


def serve(served: Served, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    try:  # an address in use or not ours is a one-line error before anything starts
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"lrt serve: {served.name} on http://{host}:{port} (playground at /, OpenAI API at /v1)", flush=True)
    uvicorn.run(create_app(served), host=host, port=port, log_level=log_level)


class BackgroundServer:
    """A server on a free loopback port, on a thread of this process, for tests and `lrt bench
    serve`: `with BackgroundServer(served) as url: ...`."""

    def __init__(self, served: Served):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(served), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="lrt-serve", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
