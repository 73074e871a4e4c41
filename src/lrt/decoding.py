"""Recurrent decoding (LRT_SPEC section 3): a KV cache plus one memory vector per sequence,
one forward per token, after the prompt is read with a memory mode (memory.py): `exact` (token
by token, the reference), `parallel` (a schedule's passes), `fixed-point`, or `zero`.

A state is *static* or not. A dynamic step attends to the cache positions in use so far (its
shapes grow by one key a token): the fastest eager step, and the reference. A static step
attends to the whole preallocated cache, masked by each row's position, and writes the memory
and positions in place, so every step has the same shapes and addresses: what a compiled step
and CUDA graphs need. Both compute the same function.

A `Decoder` is the engine: built from a model and whether to compile, it owns the run-time state
of decoding (the compiled static step and, through it, the CUDA graphs) and is kept and reused;
its states are static iff it compiles, unless told. The model stays a pure module. The functions
of this module (`new_state`, `step`, `decode`, `prefill`, `state_after`, `generate`) are the
eager engine: `step(model, ...)` is `Decoder(model).step(...)`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .attention import KVBuffer
from .memory import Memory, read
from .runtime import room_for_graphs


@dataclass
class DecodeState:
    """What a batch of sequences carries from one token to the next."""

    cache: KVBuffer  # keys/values of every layer, written in place
    memory: torch.Tensor | None  # (B, d): m for each sequence's next token; None when memory is off or absent
    pos: torch.Tensor  # (B,): each sequence's next cache position (PonderLM-2: slot; a token takes config.slots)
    length: int  # cache positions in use (the longest sequence so far)
    max_len: int  # cache positions
    static: bool = False  # fixed shapes: the whole cache attended, memory and positions written in place

    @property
    def batch_size(self) -> int:
        return self.pos.size(0)


def pinned(state: DecodeState) -> DecodeState:
    """A static CUDA state's tensors marked as fixed addresses: the compiled step writes them in
    place, which a CUDA graph replays only into inputs it knows never move."""
    if state.static and state.pos.is_cuda:
        for t in (*state.cache.k, *state.cache.v, *([] if state.memory is None else [state.memory])):
            torch._dynamo.mark_static_address(t)
    return state


def token_step(model, tokens: torch.Tensor, state: DecodeState, kv_len: int | None) -> torch.Tensor:
    """The final hidden state (B, 1, d) after one token per row: one forward, or PonderLM-2's
    token and thoughts one slot after another (each thought the previous slot's output). The
    memory is returned as the step's source state; the positions are left to the caller."""
    n = model.config.slots
    pos = state.pos.unsqueeze(1)
    memory = None if state.memory is None else state.memory.unsqueeze(1)
    h, source, inputs = None, None, None
    for j in range(n):
        h, source = model.forward_positions(
            tokens.unsqueeze(1),
            pos + j,
            memory,
            state.cache,
            kv_len=None if kv_len is None else min(kv_len + j, state.max_len),  # a finished row may sit at the end
            inputs=inputs,
            token_pos=pos // n if n > 1 else None,
        )
        inputs = h
    return h, source


def static_step(model, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """One token per row against the whole cache (keys past a row's position are masked out), the
    memory written in place: the same shapes and addresses at every step."""
    h, source = token_step(model, tokens, state, None)
    if state.memory is not None:
        state.memory.copy_(source[:, 0])
    return model.head(h)[:, 0]


def compiled_by_default(device: torch.device) -> bool:
    """Whether `lrt generate` compiles its step unless told: on CUDA, where the CUDA-graph step is
    7-8x faster per token than the eager one (d12/d20, docs/performance.md); not on CPU, where
    compiling takes 10-45 s to gain 1.1-1.3x."""
    return device.type == "cuda"


# prefill ------------------------------------------------------------------------------------------


def select_rows(state: DecodeState, index: torch.Tensor) -> DecodeState:
    """The state of rows `index` of a batch (in that order, repeats allowed): what beam search
    keeps of its beams. Every row's keys, values, memory and position go along."""
    cache = KVBuffer(len(state.cache.k), state.cache.length, inplace=True)
    cache.k = [k.index_select(0, index) for k in state.cache.k]
    cache.v = [v.index_select(0, index) for v in state.cache.v]
    memory = None if state.memory is None else state.memory.index_select(0, index)
    return pinned(
        DecodeState(cache, memory, state.pos.index_select(0, index), state.length, state.max_len, state.static)
    )


@dataclass
class Prefill:
    state: DecodeState
    logits: torch.Tensor  # (B, vocab): next-token logits after each prompt
    forwards: int  # sequential forward calls the prompt took (exact: its length)
    hidden: torch.Tensor  # (B, T, d): final hidden states of every prompt position (prompts right-padded)


def right_padded(prompts: list[list[int]], device) -> torch.Tensor:
    """Prompts of different lengths as one (B, T) batch: every step is causal in position, so the
    padding after a prompt never reaches its tokens."""
    T = max(map(len, prompts))
    return torch.tensor([p + [p[-1]] * (T - len(p)) for p in prompts], device=device)


# sampling and generation --------------------------------------------------------------------------


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row of logits (B, V): greedy at temperature 0; otherwise sampling from the
    softmax restricted to the top_k tokens and to the smallest set whose mass reaches top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@dataclass
class Generation:
    tokens: list[list[int]]  # generated tokens per prompt (the stop token excluded)
    stopped: list[str]  # per prompt: "stop" (end of text), "max_tokens" or "window"
    memory: Memory  # how the prompts were read
    prefill_forwards: int  # sequential forward calls reading the prompts took

    def summary(self) -> str:
        return (
            f"[prompt read with {self.memory.spec} memory: {self.prefill_forwards} forward calls; "
            f"stopped: {', '.join(self.stopped)}]"
        )


MIN_TEMPERATURE = 1e-6


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < float("inf")):
        # logits / a temperature near float32's smallest overflow to inf, and softmax gives NaN
        raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


# the engine ---------------------------------------------------------------------------------------


class Decoder:
    """The decoding engine of one model: it owns the run-time state of decoding, so the model stays
    a pure module. With `compile` it holds a compiled static step (one graph per batch size and
    cache length; `mode` defaults to "reduce-overhead" on CUDA, where the step is captured as a
    CUDA graph, one launch a token, and to inductor's default on CPU, fused elementwise kernels),
    and its states are static unless told; keep it and reuse it, and its graphs are reused. Without
    `compile` it is the eager engine, which the functions of this module are."""

    def __init__(self, model, *, compile: bool = False, mode: str | None = None):
        if mode is not None and not compile:
            raise ValueError(f"mode={mode!r} is a torch.compile mode: give it with compile=True")
        self.model = model
        if compile and mode is None:
            mode = "reduce-overhead" if model.wte.weight.is_cuda else "default"
        self.mode = mode
        self.compiled_step = torch.compile(static_step, mode=mode, dynamic=False) if compile else None

    @property
    def compiles(self) -> bool:
        return self.compiled_step is not None

    def __repr__(self) -> str:
        return f"Decoder({type(self.model).__name__}, compile={self.compiles}, mode={self.mode!r})"

    def new_state(
        self, batch_size: int, max_len: int | None = None, *, zero_memory: bool = False, static: bool | None = None
    ) -> DecodeState:
        """An empty state with its cache allocated for max_len positions (default: the model's
        sequence_len); with `zero_memory` the memory stays m = 0 for every token. `static` defaults
        to whether this engine compiles its step."""
        model = self.model
        if max_len is None:
            max_len = model.config.sequence_len
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        weight = model.lm_head.weight  # the matrices' dtype (the embedding tables may be kept in bfloat16)
        cfg = model.config
        pathway = cfg.injection != "none"  # only LRT carries a memory (PonderLM-2's thoughts live in its cache)
        memory = weight.new_zeros(batch_size, cfg.n_embd) if pathway and not zero_memory else None  # m_0 = 0
        pos = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
        if static is None:
            static = self.compiles
        max_len *= cfg.slots  # cache positions: PonderLM-2's token and thoughts each take one
        # a static step attends to its whole cache: rounded up to a power of two, the cache lengths of
        # all prompts and budgets make a few compiled graphs per batch size, not one per length
        capacity = 1 << (max_len - 1).bit_length() if static else max_len
        cache = KVBuffer(cfg.cache_layers, capacity, inplace=True)
        dtype = model.blocks[0].attn.c_k.weight.dtype
        for layer in range(cfg.cache_layers):
            for kv in (cache.k, cache.v):
                kv[layer] = weight.new_zeros(batch_size, cfg.n_kv_head, capacity, cfg.head_dim, dtype=dtype)
        return pinned(DecodeState(cache, memory, pos, 0, max_len, static))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: DecodeState, active: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per sequence (B,), return the next-token logits (B, vocab). With `active`
        (B,) bool, only those rows move on: the others (finished) are computed but keep their
        position, so each row of a batch runs to its own end (the caller keeps active rows in range).
        A static state takes this engine's compiled step where it has one, else the eager static step."""
        model = self.model
        if tokens.shape != (state.batch_size,):
            raise ValueError(
                f"tokens must have shape ({state.batch_size},) (one per sequence), got {tuple(tokens.shape)}"
            )
        n = model.config.slots
        if active is None and state.length >= state.max_len:
            raise ValueError(
                f"the decoding state is full (max_len={state.max_len // n} tokens); create it with a larger max_len"
            )
        kv_len = state.length + 1
        state.length = min(state.length + n, state.max_len)
        if state.static:
            compiled = self.compiled_step
            graphed = compiled is not None and tokens.is_cuda
            if graphed:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are read by now
            with room_for_graphs() if compiled is not None else contextlib.nullcontext():
                logits = (compiled or static_step)(model, tokens, state)
            if graphed:
                logits = logits.clone()  # a CUDA graph overwrites its outputs at the next replay
        else:
            h, source = token_step(model, tokens, state, kv_len)
            if state.memory is not None:
                state.memory = source[:, 0]
            logits = model.head(h)[:, 0]
        state.pos += n if active is None else n * active.long()
        return logits

    @torch.no_grad()
    def decode(self, idx: torch.Tensor, zero_memory: bool = False) -> torch.Tensor:
        """Exact token-by-token recurrence over a batch of sequences: the logits of every position."""
        B, T = idx.shape
        state = self.new_state(B, T, zero_memory=zero_memory)
        return torch.stack([self.step(idx[:, t], state) for t in range(T)], dim=1)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], max_len: int, *, memory: Memory | str = "exact") -> Prefill:
        """Read a batch of prompts (lengths may differ) into a decoding state of capacity max_len."""
        model = self.model
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        device = model.wte.weight.device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        if int(lengths.max()) > max_len:
            raise ValueError(f"a prompt of {int(lengths.max())} tokens does not fit max_len={max_len}")
        reading = read(model, right_padded(prompts, device), memory)
        state = self.state_after(reading, lengths, max_len)
        rows = torch.arange(len(prompts), device=device)
        hidden = reading.output.hidden
        return Prefill(state, model.head(hidden[rows, lengths - 1]), reading.forwards, hidden)

    @torch.no_grad()
    def state_after(self, reading, lengths: torch.Tensor, max_len: int) -> DecodeState:
        """The decoding state that continues each row after its first `lengths[b]` tokens of a reading."""
        buffer, T = reading.buffer, reading.buffer.length  # cache positions (PonderLM-2: slots)
        device = lengths.device
        state = self.new_state(lengths.numel(), max_len)
        state.length = T
        for layer in range(self.model.config.cache_layers):
            state.cache.write_kv(layer, torch.arange(T, device=device), buffer.k[layer], buffer.v[layer])
        if state.memory is not None:
            state.memory.copy_(buffer.source[torch.arange(lengths.numel(), device=device), lengths - 1])
        state.pos.copy_(lengths * self.model.config.slots)
        return state

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        *,
        memory: Memory | str = "exact",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop_token: int | None = None,
        on_token=None,
    ) -> Generation:
        """Continue a batch of prompts with the true recurrence: each generated token is one forward
        that reads and updates the memory; `memory` is how the prompts are read first. Generation stops
        at `stop_token`, after max_new_tokens, or at the model's window (config.sequence_len).
        `on_token(index, token)` streams the tokens."""
        model = self.model
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        window = model.config.sequence_len
        for p in prompts:
            if len(p) == 0:
                raise ValueError("the prompt is empty")
            if len(p) > window:
                raise ValueError(f"a prompt of {len(p)} tokens is longer than the model's window of {window} tokens")
        longest = max(len(p) for p in prompts)
        max_len = min(longest + max_new_tokens, window)
        memory = Memory.parse(memory)
        pre = self.prefill(prompts, max_len, memory=memory)
        device = model.wte.weight.device
        generator = torch.Generator(device=device).manual_seed(seed)
        out = [[] for _ in prompts]
        stopped = [""] * len(prompts)
        state, logits = pre.state, pre.logits
        for i in range(max_new_tokens):
            tokens = sample(logits, temperature, top_k, top_p, generator)
            for b, token in enumerate(tokens.tolist()):
                if stopped[b]:
                    continue
                if token == stop_token:
                    stopped[b] = "stop"
                    continue
                out[b].append(token)
                if on_token is not None:
                    on_token(b, token)
                if len(prompts[b]) + len(out[b]) >= window:
                    stopped[b] = "window"
            if all(stopped) or i == max_new_tokens - 1:
                break
            # a row still running has fewer than min(its prompt + max_new_tokens, window) tokens: it fits
            logits = self.step(tokens, state, active=torch.tensor([not s for s in stopped], device=device))
        stopped = [s or "max_tokens" for s in stopped]
        return Generation(out, stopped, memory, pre.forwards)


# the eager engine as functions: what a caller that does not compile uses ----------------------------


def new_state(
    model, batch_size: int, max_len: int, *, zero_memory: bool = False, static: bool | None = None
) -> DecodeState:
    """An empty state (Decoder.new_state), dynamic unless `static`."""
    return Decoder(model).new_state(batch_size, max_len, zero_memory=zero_memory, static=static)


def step(model, tokens: torch.Tensor, state: DecodeState, active: torch.Tensor | None = None) -> torch.Tensor:
    """One eager step (Decoder.step); a static state takes the eager static step."""
    return Decoder(model).step(tokens, state, active)


def decode(model, idx: torch.Tensor, zero_memory: bool = False) -> torch.Tensor:
    """The exact recurrence over a batch, every position's logits (Decoder.decode)."""
    return Decoder(model).decode(idx, zero_memory)


def prefill(model, prompts: list[list[int]], max_len: int, *, memory: Memory | str = "exact") -> Prefill:
    """Read a batch of prompts into a dynamic decoding state (Decoder.prefill)."""
    return Decoder(model).prefill(prompts, max_len, memory=memory)


def state_after(model, reading, lengths: torch.Tensor, max_len: int) -> DecodeState:
    """The dynamic state that continues each row of a reading (Decoder.state_after)."""
    return Decoder(model).state_after(reading, lengths, max_len)


def generate(model, prompts: list[list[int]], max_new_tokens: int, **options) -> Generation:
    """Continue a batch of prompts with the eager step (Decoder.generate); `options` are its keyword-only
    options (memory, temperature, top_k, top_p, seed, stop_token, on_token), passed on as they are."""
    return Decoder(model).generate(prompts, max_new_tokens, **options)
