"""Attention over a key/value buffer: how one computation sees the positions computed before it.

Two backends compute the same function. "sdpa" runs everywhere: a subset pass is split into a
few query blocks, each attending with a dense mask to the keys up to its last position. "flex"
(GPU) runs a subset pass as one FlexAttention call whose block mask skips the key blocks no query
of a tile can see; it is compiled, and it has no backward on CPU. A full causal pass without a
window is plain causal SDPA (flash attention) under both. Which backend runs is the model's choice
(`LRT(config, attention=...)`), carried by each pass's context: nothing here is process-wide, so
models with different backends live side by side.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

ATTENTION_BACKENDS = ("sdpa", "flex")
ATTENTION_CHOICES = ("auto", *ATTENTION_BACKENDS)


def check_attention(name: str) -> str:
    if name not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {name!r}")
    return name


def resolve_attention(name: str, device: torch.device) -> str:
    """The backend a model's choice means on `device`: "auto" is flex on CUDA (a compiled fused
    kernel there), sdpa elsewhere (FlexAttention has no backward on CPU)."""
    if check_attention(name) == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return name


@functools.lru_cache(maxsize=256)
def span_block_mask(start: int, step: int, n_queries: int, n_keys: int, window: int | None, device: str) -> BlockMask:
    """FlexAttention mask of queries at positions start, start+step, ... over keys 0..n_keys-1:
    causal by original position, within `window` when one is set. The span enters the mask as
    tensors, not constants: compiled attention takes them as inputs, so every span of one shape
    shares a graph (a constant is guarded on: a chunked pass or an exact prefill, a new start per
    call, would recompile until dynamo's limit and then run unfused)."""
    start, step = torch.tensor(start, device=device), torch.tensor(step, device=device)

    def visible(b, h, q, kv):
        p = start + q * step
        allowed = kv <= p
        return allowed if window is None else allowed & (p - kv <= window)

    return create_block_mask(visible, None, None, n_queries, n_keys, device=device)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q, k, v, block_mask: BlockMask) -> torch.Tensor:
    if q.is_cuda:  # eager FlexAttention is a slow reference; compiled, it is a fused kernel
        flex = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
        return flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    if torch.is_grad_enabled() and q.requires_grad:
        raise ValueError("attention backend 'flex' cannot train on CPU (no FlexAttention backward there): use 'sdpa'")
    with warnings.catch_warnings():  # off CUDA the unfused reference is what we want (tests, inference)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)


def put(
    buf: torch.Tensor | None, dim: int, pos: torch.Tensor, new: torch.Tensor, length: int, inplace: bool
) -> torch.Tensor:
    """`buf` (created with `length` positions along `dim` when None) with `new` written at `pos`
    ((n,) the same positions in every sequence, or (B, n)): in place (a decoding cache) or as a new
    tensor, so gradients flow through the old one (training)."""
    if buf is None:
        shape = list(new.shape)
        shape[dim] = length
        buf = new.new_zeros(shape)
    if pos.dim() == 1:
        return buf.index_copy_(dim, pos, new) if inplace else buf.index_copy(dim, pos, new)
    index = pos.view(pos.size(0), *([1] * (dim - 1)), pos.size(1), *([1] * (new.dim() - dim - 1)))
    index = index.expand_as(new)
    return buf.scatter_(dim, index, new) if inplace else buf.scatter(dim, index, new)


class KVBuffer:
    """Keys and values of every layer at every position of a batch of sequences, plus the normed
    source states each position hands on as memory.

    A computation writes its fresh keys/values at its positions, then attends to the whole buffer
    (masked causally by original position), so it sees the latest value of every earlier position.
    Training writes out of place, so gradients flow through the buffer into the passes that filled
    it; decoding writes in place into a cache allocated once. The blocks never touch it: each gets
    its layer's keys and values and returns the new ones (a pure function: compiled per block, and
    recomputed by activation checkpointing, it sees the buffer as it was).
    """

    def __init__(self, n_layer: int, length: int, inplace: bool = False, kept: bool = False):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.source: torch.Tensor | None = None  # (B, length, d), only kept by training schedules
        self.length = length
        self.inplace = inplace
        # later steps read it: a full pass stores its keys and values contiguous (they come out of
        # attention transposed), so every later pass sees one layout and shares compiled graphs
        self.kept = kept

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor, full: bool) -> None:
        if full and self.kept:
            keys, values = keys.contiguous(), values.contiguous()
        self.k[layer], self.v[layer] = keys, values

    def write_kv(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, H, n, D) at `pos` of `layer`."""
        self.k[layer] = put(self.k[layer], 2, pos, k, self.length, self.inplace)
        self.v[layer] = put(self.v[layer], 2, pos, v, self.length, self.inplace)

    def write_source(self, pos: torch.Tensor, source: torch.Tensor, full: bool) -> None:
        self.source = source if full else put(self.source, 1, pos, source, self.length, self.inplace)


@dataclass
class PassContext:
    """What every block of one call of `forward_positions` shares: where the computed tokens sit,
    how they attend, and the pass's inputs (x0, memory). Masks are prepared before the first block,
    so a block only reads it."""

    pos: torch.Tensor  # (Tq,) or (B, Tq): original positions of the computed tokens
    span: range | None  # the same positions as a range, when every sequence computes the same ones
    full: bool  # computes positions 0..T-1 of a fresh buffer: plain causal attention
    kv_len: int | None  # attend to the first kv_len buffer positions (None: all)
    length: int  # positions of the key/value buffer
    inplace: bool  # the buffer is a decoding cache, written in place
    cos: torch.Tensor
    sin: torch.Tensor
    x0: torch.Tensor | None = None  # the normed embeddings of the computed tokens
    memory: torch.Tensor | None = None  # m of each computed token (None: zero memory)
    shared_mem_kv: torch.Tensor | None = None  # LRT-shared Wk m, Wv m
    backend: str = "sdpa"  # how a subset pass attends (ATTENTION_BACKENDS); the model's choice
    masks: dict = field(default_factory=dict)  # window -> what attend needs, from prepare()

    # derived, not a field: FSDP2's mixed precision rebuilds the context (dataclasses.replace) to
    # cast its tensors, which a field set in __post_init__ cannot survive
    @property
    def per_sequence(self) -> bool:
        """Each sequence at its own positions (decoding): one dense mask."""
        return self.span is None

    def _mask(self, window: int | None, query_pos: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        key_pos = torch.arange(lo, hi, device=query_pos.device)
        query_pos = query_pos.unsqueeze(-1)  # (..., Tq, 1)
        allowed = key_pos <= query_pos
        if window is not None:
            allowed = allowed & (query_pos - key_pos <= window)
        return allowed.unsqueeze(1) if allowed.dim() == 3 else allowed  # per-sequence: (B, 1, Tq, Tk)

    def _blocks(self, window: int | None, n_keys: int):
        """Query blocks with the key slice each needs: a block of positions up to p attends to
        keys <= p only, so slicing the keys skips work a dense mask would do and discard. The
        slices are rounded to whole strides (a few keys more, masked out), so that every subset
        pass of a schedule slices alike: t mod S == 0 and t mod S == 1 share one compiled graph."""
        r = self.span
        base = r.start - r.start % r.step  # the stride's origin: 0 for every subset of an interleaved pass
        n = len(r)
        size = max(32, -(-n // 8))  # at most 8 blocks of at least 32 queries
        blocks = []
        for a in range(0, n, size):
            b = min(a + size, n)
            hi = min(base + b * r.step, n_keys)  # past the block's last position, start + (b - 1) step
            lo = 0 if window is None else max(0, base + a * r.step - window)
            blocks.append((a, b, lo, hi, self._mask(window, self.pos[a:b], lo, hi)))
        return blocks

    def prepare(self, windows) -> None:
        """The masks of every window the blocks use, built once for all of them."""
        n_keys = self.kv_len if self.kv_len is not None else self.length
        for window in set(windows):
            if self.full and window is None:
                continue  # plain causal attention
            if self.per_sequence:
                self.masks[window] = self._mask(window, self.pos, 0, n_keys)
            elif self.backend == "flex":
                r = self.span
                self.masks[window] = span_block_mask(r.start, r.step, len(r), n_keys, window, str(self.pos.device))
            else:
                self.masks[window] = self._blocks(window, n_keys)

    def merge(self, past: tuple, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's buffered keys and values (past) with the fresh k, v (B, H, Tq, D) at pos."""
        if self.full:  # every position is recomputed: the fresh keys are the buffer
            return k, v
        return tuple(put(old, 2, self.pos, new, self.length, self.inplace) for old, new in zip(past, (k, v)))

    def attend(self, window: int | None, q, keys, values) -> torch.Tensor:
        # reads no range: a compiled block would specialise on its values (a graph per subset)
        if self.kv_len is not None:
            keys, values = keys[:, :, : self.kv_len], values[:, :, : self.kv_len]
        if self.full and window is None:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
        mask = self.masks[window]
        if self.per_sequence:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        if self.backend == "flex":
            return flex_attend(q, keys, values, mask)
        outs = [
            F.scaled_dot_product_attention(
                q[:, :, a:b], keys[:, :, lo:hi], values[:, :, lo:hi], attn_mask=m, enable_gqa=True
            )
            for a, b, lo, hi, m in mask
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
