"""Continuous batching: many requests decoding in one batch, each at its own position (what
`lrt serve` runs; the HTTP layer only hands requests in and tokens out).

A `Batcher` owns a decoding engine (decoding.Decoder) and, for the life of the server, one
decoding state per batch size it has used (powers of two up to `max_batch`). With a compiling
engine the states are static, so it records its step (a CUDA graph on GPU) once per batch size
instead of once per request; the eager engine's states attend, each step, to the positions in
use only (up to the longest row's), the faster step on a CPU.
Each `tick`:

1. drops the rows whose request was cancelled (a client went away) or finished;
2. admits waiting requests while rows are free. A prompt read with exact memory (the default) by
   a model with recurrence is fed one token a step in the batch itself: the exact reading is that
   sequence of steps, so a new prompt neither waits for the running rows nor stalls them. Other
   prompts are read at once (one batch per memory mode, right-padded as `lrt generate` reads a
   batch) and their first tokens sampled from their prompts' logits;
3. moves the live rows into the smallest state that holds them (order kept, so a row only ever
   moves to a lower index of the same state, or into another state);
4. takes one step for every row (a prompt token or its last sampled token) and samples each
   decoding row's next token with its own generator.

A row's keys, values, memory and position are its own (the static step masks each row by its
position), and each request samples with its own seeded generator, so a request's text does not
depend on which others share its batch.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .decoding import Decoder, DecodeState, check_sampling, sample
from .memory import Memory

# why a request ended: its stop token, its token budget, the model's window, or the client left
FINISH_REASONS = ("stop", "length", "window", "cancelled", "error")


@dataclass
class Job:
    """One request to the batcher: what to continue and how to sample. `deliver(token, finish)` is
    called from the batcher's thread: (token, None) for each generated token, then (None, reason)
    once at the end (a reason of FINISH_REASONS; "error: ..." when the engine failed)."""

    prompt: list[int]
    max_new_tokens: int
    deliver: Callable[[int | None, str | None], None]
    memory: Memory = field(default_factory=lambda: Memory.parse("exact"))
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop_token: int | None = None
    cancelled: bool = False  # set by cancel(); the batcher frees the row at its next tick
    finished: bool = False  # set by the batcher once the end is delivered


@dataclass
class _Row:
    job: Job
    generator: torch.Generator
    next_token: int  # sampled, not yet fed
    generated: int = 1  # tokens sampled so far (the first from the prompt's logits)
    source: DecodeState | None = None  # where this row's cache is now (None: in place)
    index: int = 0  # its row in `source`
    pending: list[int] = field(default_factory=list)  # prompt tokens still to feed (a prompt read by steps)
    fresh: bool = False  # a row that starts empty in the batch (m = 0, position 0)
    length: int = 0  # cache positions it has filled (its position; PonderLM-2: slots)


def bucket(n: int, max_batch: int) -> int:
    """The batch size of the state that holds n rows: the next power of two, at most max_batch."""
    return min(1 << max(n - 1, 0).bit_length(), max_batch)


class Batcher:
    """The decoding engine's server side: `submit` jobs from any thread, call `tick` (or `run`) on
    one thread. `max_batch` bounds the rows decoding at once; later jobs wait in arrival order.
    `static` (default: whether the engine compiles) makes the states fixed-shape."""

    def __init__(self, decoder: Decoder, *, max_batch: int = 32, static: bool | None = None):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.decoder, self.model, self.max_batch = decoder, decoder.model, max_batch
        self.static = decoder.compiles if static is None else static  # fixed-shape states (a compiled step's)
        self.window = self.model.config.sequence_len
        self.device = self.model.wte.weight.device
        self.states: dict[int, DecodeState] = {}  # batch size -> its static state, kept for life
        self.state: DecodeState | None = None  # the one in use
        self.rows: list[_Row] = []  # live rows, in the order of their rows in self.state
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()

    # from any thread ------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job after checking it (ValueError names what is wrong)."""
        check_sampling(job.temperature, job.top_k, job.top_p, job.max_new_tokens)
        if not job.prompt:
            raise ValueError("the prompt is empty")
        if len(job.prompt) > self.window:
            raise ValueError(
                f"a prompt of {len(job.prompt)} tokens is longer than the model's window of {self.window} tokens"
            )
        vocab = self.model.config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in job.prompt):
            raise ValueError(f"every prompt token must be an id from 0 to {vocab - 1}")
        with self.wake:
            self.waiting.append(job)
            self.wake.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: its row is freed at the next tick, and it gets no more tokens."""
        with self.wake:
            job.cancelled = True
            self.wake.notify()

    @property
    def load(self) -> dict:
        return {"running": len(self.rows), "waiting": len(self.waiting), "max_batch": self.max_batch}

    # the batcher's own thread ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set, sleeping while there is nothing to do. An engine failure ends the
        jobs it touched with an error and the loop goes on."""
        while not stop.is_set():
            with self.wake:
                if not self.rows and not self.waiting:
                    self.wake.wait(0.1)
                    continue
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - a server survives a failed step; its jobs are told
                print(f"lrt serve: decoding failed: {type(e).__name__}: {e}", file=sys.stderr)
                for row in self.rows:
                    if not row.job.finished:
                        self._finish(row.job, f"error: {type(e).__name__}: {e}")
                self.rows, self.state = [], None

    @torch.no_grad()
    def tick(self) -> None:
        """One round: drop, admit, pack, step (module docstring)."""
        self.rows = [r for r in self.rows if not self._ended(r)]
        with self.wake:
            admitted = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.max_batch - len(self.rows)))]
        self.rows += self._admit(admitted)
        if not self.rows:
            self.state = None
            return
        self._pack()
        state = self.state
        feed = [row.pending.pop(0) if row.pending else row.next_token for row in self.rows]
        tokens = torch.zeros(state.batch_size, dtype=torch.long, device=self.device)
        tokens[: len(self.rows)] = torch.tensor(feed, device=self.device)
        active = torch.arange(state.batch_size, device=self.device) < len(self.rows)
        if not state.static:  # the eager step attends to the positions in use: up to the longest row's
            state.length = max(row.length for row in self.rows)
        logits = self.decoder.step(tokens, state, active)
        slots = self.model.config.slots
        for i, row in enumerate(self.rows):
            row.length += slots
            if row.pending:
                continue  # still reading its prompt
            row.next_token = self._sample(row, logits[i : i + 1])  # after its prompt's last token: the first
            row.generated += 1
            self._offer(row)

    # parts of a tick ------------------------------------------------------------------------------

    def _admit(self, jobs: list[Job]) -> list[_Row]:
        """Rows for new jobs. A prompt read with exact memory by a model with recurrence is read in
        the batch, one token a step beside the rows that decode (the exact reading is that sequence of
        steps), so it neither waits for nor stalls the others. Other prompts are read at once, those
        with the same memory together as one batch, and their first tokens sampled. Jobs already
        over (cancelled while waiting, or done after one token) get no row."""
        for job in jobs:
            if job.cancelled:
                self._finish(job, "cancelled")
        jobs = [job for job in jobs if not job.finished]
        rows = [self._row(job, pending=list(job.prompt), fresh=True) for job in jobs if self._stepped(job)]
        jobs = [job for job in jobs if not self._stepped(job)]
        slots = self.model.config.slots
        while jobs:
            group = [job for job in jobs if job.memory == jobs[0].memory]
            jobs = [job for job in jobs if job.memory != jobs[0].memory]
            try:
                pre = self.decoder.prefill([job.prompt for job in group], self.window, memory=group[0].memory)
            except Exception as e:  # noqa: BLE001 - prompts that cannot be read end their own jobs only
                for job in group:
                    self._finish(job, f"error: {type(e).__name__}: {e}")
                continue
            for k, job in enumerate(group):
                row = self._row(job, source=pre.state, index=k, generated=1, length=len(job.prompt) * slots)
                row.next_token = self._sample(row, pre.logits[k : k + 1])
                if not self._offer(row):
                    rows.append(row)
        return rows

    def _stepped(self, job: Job) -> bool:
        cfg = self.model.config
        return job.memory.mode == "exact" and (cfg.injection != "none" or cfg.latent_thoughts > 0)

    def _row(self, job: Job, **fields) -> _Row:
        generator = torch.Generator(device=self.device).manual_seed(job.seed)
        return _Row(job, generator, next_token=0, **{"generated": 0, **fields})

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        job = row.job
        return int(sample(logits, job.temperature, job.top_k, job.top_p, row.generator)[0])

    def _offer(self, row: _Row) -> bool:
        """Hand the row's new token to its job, or end the job; whether it ended. The order of the
        checks is `Decoder.generate`'s, so a request ends where `lrt generate` ends it."""
        job = row.job
        if job.cancelled:
            return self._finish(job, "cancelled")
        if row.next_token == job.stop_token:
            return self._finish(job, "stop")
        job.deliver(row.next_token, None)
        if len(job.prompt) + row.generated >= self.window:
            return self._finish(job, "window")
        if row.generated >= job.max_new_tokens:
            return self._finish(job, "length")
        return False

    def _finish(self, job: Job, reason: str) -> bool:
        job.finished = True  # nothing more is delivered, and the row is dropped at the next tick
        job.deliver(None, reason)
        return True

    def _ended(self, row: _Row) -> bool:
        if row.job.cancelled and not row.job.finished:
            self._finish(row.job, "cancelled")
        return row.job.finished

    def _pack(self) -> None:
        """Move the live rows into rows 0..n-1 of the state for their number, order kept."""
        size = bucket(len(self.rows), self.max_batch)
        target = self.states.get(size)
        if target is None:
            target = self.states[size] = self.decoder.new_state(size, self.window, static=self.static)
        for i, row in enumerate(self.rows):
            if row.fresh:
                clear_row(target, i)
            else:
                source = row.source if row.source is not None else self.state
                if source is not target or row.index != i:
                    copy_row(target, i, source, row.index)
            row.source, row.index, row.fresh = None, i, False
        target.pos[len(self.rows) :].zero_()  # idle rows at 0: one that left at the cache's end must not write past it
        self.state = target


def clear_row(state: DecodeState, i: int) -> None:
    """Row i as a new sequence: m = 0 and position 0 (the keys it had are masked by its position)."""
    if state.memory is not None:
        state.memory[i].zero_()
    state.pos[i].zero_()


def copy_row(dst: DecodeState, i: int, src: DecodeState, j: int) -> None:
    """Row j of `src` into row i of `dst` in place (dst's tensors keep their addresses, which its
    compiled step and CUDA graphs need): keys and values of every position both caches hold,
    memory and position."""
    n = min(dst.cache.k[0].size(2), src.cache.k[0].size(2))
    for kv_dst, kv_src in ((dst.cache.k, src.cache.k), (dst.cache.v, src.cache.v)):
        for layer in range(len(kv_dst)):
            kv_dst[layer][i, :, :n].copy_(kv_src[layer][j, :, :n])
    if dst.memory is not None:
        dst.memory[i].copy_(src.memory[j])
    dst.pos[i].copy_(src.pos[j])
