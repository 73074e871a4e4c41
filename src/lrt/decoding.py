"""Recurrent decoding (LRT_SPEC section 3): a KV cache plus one memory vector per sequence,
and one forward per token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import KVBuffer


@dataclass
class DecodeState:
    """What a batch of sequences carries from one token to the next."""

    cache: KVBuffer  # keys/values of every layer, written in place
    memory: torch.Tensor | None  # (B, d): m for each sequence's next token; None when memory is off
    pos: torch.Tensor  # (B,): each sequence's next position
    length: int  # cache positions in use (the longest sequence so far)
    max_len: int

    @property
    def batch_size(self) -> int:
        return self.pos.size(0)


def new_state(model, batch_size: int, max_len: int, zero_memory: bool = False) -> DecodeState:
    """An empty state; with `zero_memory` the memory stays m = 0 for every token."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    weight = model.wte.weight
    memory = None if zero_memory else weight.new_zeros(batch_size, model.config.n_embd)  # m_0 = 0
    pos = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
    return DecodeState(KVBuffer(model.config.n_layer, max_len, inplace=True), memory, pos, 0, max_len)


@torch.no_grad()
def step(model, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """Feed one token per sequence (B,), return the next-token logits (B, vocab)."""
    if tokens.shape != (state.batch_size,):
        raise ValueError(f"tokens must have shape ({state.batch_size},) (one per sequence), got {tuple(tokens.shape)}")
    if state.length >= state.max_len:
        raise ValueError(f"the decoding state is full (max_len={state.max_len}); create it with a larger max_len")
    memory = None if state.memory is None else state.memory.unsqueeze(1)
    state.length += 1
    h, source = model.forward_positions(tokens.unsqueeze(1), state.pos.unsqueeze(1), memory, state.cache, kv_len=state.length)
    if state.memory is not None:
        state.memory = source[:, 0]
    state.pos += 1
    return model.head(h)[:, 0]


@torch.no_grad()
def decode(model, idx: torch.Tensor, zero_memory: bool = False) -> torch.Tensor:
    """Exact token-by-token recurrence over a batch of sequences: the logits of every position."""
    B, T = idx.shape
    state = new_state(model, B, T, zero_memory)
    return torch.stack([step(model, idx[:, t], state) for t in range(T)], dim=1)


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row of logits (B, V): greedy at temperature 0, else softmax sampling from
    the top_k most likely tokens."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, stop_token: int | None = None) -> list[int]:
    """Continue one prompt with the true recurrence: the prompt token by token, then one forward
    per generated token, each reading and updating the memory."""
    if not prompt:
        raise ValueError("the prompt is empty")
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    state = new_state(model, 1, len(prompt) + max_new_tokens)
    for token in prompt:
        logits = step(model, torch.tensor([token], device=device), state)
    out = []
    for _ in range(max_new_tokens):
        token = sample(logits, temperature, top_k, generator)
        if stop_token is not None and token.item() == stop_token:
            break
        out.append(token.item())
        logits = step(model, token, state)
    return out
