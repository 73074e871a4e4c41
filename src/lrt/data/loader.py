"""Packing documents into training rows: BOS-aligned best fit, resumable, nothing dropped.

Every row of T+1 tokens starts with <|bos|>. Documents (BOS + tokens) wait in a small buffer;
each row is filled with the longest document that still fits, again and again; when none fits,
the oldest document is split: its head fills the row and its tail returns to the buffer as a new
document with its own BOS. So every token of the data is trained on, and rows never straddle a
document without a BOS. The loader's state (source position + buffer) is a JSON-able dict.

**One global stream.** The rows are the same whatever the world size: every rank packs the whole
stream and keeps its share of each global micro-batch (rank r of N the rows r B .. (r + 1) B - 1 of
N B), so one process and N ranks at the same total batch train on the same rows, every rank's
state is the same, and a run resumes on any world size exactly where it stopped. The price is
that each rank tokenizes the whole stream, not 1/N of it.
"""

from __future__ import annotations

import torch


class PackedLoader:
    """Rows packed from `source`; with rank and world_size, this rank's share of each global
    micro-batch of world_size x batch_size rows (one stream for every world size)."""

    def __init__(
        self,
        source,
        tokenizer,
        batch_size: int,
        seq_len: int,
        buffer_docs: int = 32,
        rank: int = 0,
        world_size: int = 1,
        loop: bool = True,
        seed: int = 0,
    ):
        self.source, self.tokenizer = source, tokenizer
        self.batch_size, self.row_len = batch_size, seq_len + 1
        self.buffer_docs, self.rank, self.world_size, self.loop = buffer_docs, rank, world_size, loop
        self.seed = seed  # the source's document order (TextSource.order)
        self.position: dict | None = None  # source position after the last document read
        self.buffer: list[list[int]] = []
        self._iterator = None

    def _next_document(self) -> list[int] | None:
        if self._iterator is None:
            self._iterator = self.source.iterate(self.position, loop=self.loop, seed=self.seed)
        for text, position in self._iterator:
            self.position = position
            return [self.tokenizer.bos_id] + self.tokenizer.encode(text)
        return None

    def _fill(self) -> None:
        while len(self.buffer) < self.buffer_docs:
            doc = self._next_document()
            if doc is None:
                return
            self.buffer.append(doc)

    def next_row(self) -> list[int] | None:
        """One row of row_len tokens, or None when a non-looping source is used up."""
        row: list[int] = []
        while len(row) < self.row_len:
            self._fill()
            if not self.buffer:
                return None
            room = self.row_len - len(row)
            fits = [i for i, doc in enumerate(self.buffer) if len(doc) <= room]
            if fits:
                row += self.buffer.pop(max(fits, key=lambda i: len(self.buffer[i])))
            else:
                doc = self.buffer.pop(0)
                row += doc[:room]
                self.buffer.insert(0, [self.tokenizer.bos_id] + doc[room:])
        return row

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(inputs, targets), each (batch_size, seq_len): this rank's share of the next global
        micro-batch; None when a one-pass source ends."""
        rows = []
        for _ in range(self.world_size * self.batch_size):
            row = self.next_row()
            if row is None:
                break
            rows.append(row)
        rows = rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        if not rows:
            return None
        data = torch.tensor(rows, dtype=torch.long)
        return data[:, :-1], data[:, 1:]

    def state_dict(self) -> dict:
        """Source position and the buffered documents (as one token tensor and their lengths)."""
        return {
            "position": self.position,
            "buffer_tokens": torch.tensor([t for doc in self.buffer for t in doc], dtype=torch.long),
            "buffer_lengths": torch.tensor([len(doc) for doc in self.buffer], dtype=torch.long),
        }

    def restart(self, position: dict | None) -> None:
        """Continue from `position` with an empty buffer (a multi-rank run of an older lrt, whose
        ranks read disjoint parts of the stream, resumed with another world size)."""
        self.position, self.buffer, self._iterator = position, [], None

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
        tokens = state["buffer_tokens"].tolist()
        self.buffer, start = [], 0
        for n in state["buffer_lengths"].tolist():
            self.buffer.append(tokens[start : start + n])
            start += n
        self._iterator = None


def validation_rows(source, tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The first rows of one pass over a validation source: (N, seq_len + 1), N*seq_len <= max_tokens."""
    if max_tokens < seq_len:
        raise ValueError(f"the validation budget ({max_tokens} tokens) is less than one row of {seq_len}")
    loader = PackedLoader(source, tokenizer, batch_size=1, seq_len=seq_len, loop=False)
    rows = []
    while (len(rows) + 1) * seq_len <= max_tokens:
        row = loader.next_row()
        if row is None:
            break
        rows.append(row)
    if not rows:
        raise ValueError(f"{source.name} has too little text for one row of {seq_len + 1} tokens")
    return torch.tensor(rows, dtype=torch.long)
