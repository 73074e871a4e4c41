"""Attention over a key/value buffer: how one computation sees the positions computed before it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class KVBuffer:
    """Keys and values of every layer at every position of a batch of sequences, plus the normed
    source states each position hands on as memory.

    A computation writes its fresh keys/values at its positions, then attends to the whole buffer
    (masked causally by original position), so it sees the latest value of every earlier position.
    Training writes out of place, so gradients flow through the buffer into the passes that filled
    it; decoding writes in place into a cache allocated once.
    """

    def __init__(self, n_layer: int, length: int, inplace: bool = False):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.source: torch.Tensor | None = None  # (B, length, d), only kept by training schedules
        self.length = length
        self.inplace = inplace

    def _put(self, buf: torch.Tensor | None, dim: int, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if buf is None:
            shape = list(new.shape)
            shape[dim] = self.length
            buf = new.new_zeros(shape)
        if pos.dim() == 1:  # the same positions in every sequence
            return buf.index_copy_(dim, pos, new) if self.inplace else buf.index_copy(dim, pos, new)
        index = pos.view(pos.size(0), *([1] * (dim - 1)), pos.size(1), *([1] * (new.dim() - dim - 1)))
        index = index.expand_as(new)
        return buf.scatter_(dim, index, new) if self.inplace else buf.scatter(dim, index, new)

    def write_kv(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, full: bool):
        """Store k, v (B, H, Tq, D) at `pos` and return the layer's buffered keys and values."""
        if full:  # every position is recomputed: the fresh keys are the buffer
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = self._put(self.k[layer], 2, pos, k)
            self.v[layer] = self._put(self.v[layer], 2, pos, v)
        return self.k[layer], self.v[layer]

    def write_source(self, pos: torch.Tensor, source: torch.Tensor, full: bool) -> None:
        self.source = source if full else self._put(self.source, 1, pos, source)


@dataclass
class PassContext:
    """What every layer of one call of `forward_positions` shares."""

    buffer: KVBuffer
    pos: torch.Tensor  # (Tq,) or (B, Tq): original positions of the computed tokens
    full: bool  # computes positions 0..T-1 of a fresh buffer: plain causal attention
    kv_len: int | None  # attend to the first kv_len buffer positions (None: all)
    cos: torch.Tensor
    sin: torch.Tensor

    def attend(self, layer: int, window: int | None, q, k, v) -> torch.Tensor:
        keys, values = self.buffer.write_kv(layer, self.pos, k, v, self.full)
        if self.kv_len is not None:
            keys, values = keys[:, :, : self.kv_len], values[:, :, : self.kv_len]
        if self.full and window is None:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
        key_pos = torch.arange(keys.size(2), device=q.device)
        query_pos = self.pos.unsqueeze(-1)  # (..., Tq, 1)
        allowed = key_pos <= query_pos
        if window is not None:
            allowed = allowed & (query_pos - key_pos <= window)
        if allowed.dim() == 3:  # per-sequence positions: (B, Tq, Tk) -> (B, 1, Tq, Tk)
            allowed = allowed.unsqueeze(1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, enable_gqa=True)
