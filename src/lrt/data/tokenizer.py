"""Tokenizers: byte-level (zero setup) and byte-level BPE trained with Hugging Face `tokenizers`.

Both put one special token, `<|bos|>`, at the start of every document; generation stops when
the model predicts it. `token_bytes()` gives the UTF-8 length of every token (0 for specials),
the denominator of bits per byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

BOS = "<|bos|>"


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is <|bos|>."""

    kind = "byte"

    def __init__(self):
        self.vocab_size = 257
        self.bos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        lengths = torch.ones(self.vocab_size, dtype=torch.long)
        lengths[self.bos_id] = 0
        return lengths

    def reference(self) -> dict:
        return {"kind": "byte"}


class BPETokenizer:
    """Byte-level BPE: every token string is a sequence of byte symbols, one character per byte."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.bos_id = tok.token_to_id(BOS)
        if self.bos_id is None:
            raise ValueError(f"the tokenizer has no {BOS} token; train it with `lrt tokenizer train`")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257 + 1:
            raise ValueError(f"vocab_size must be at least 258 (256 bytes, {BOS}, one merge), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[BOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=True,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        try:
            return cls(Tokenizer.from_str(path.read_text()))
        except Exception as e:  # tokenizers raises its own exception type for malformed JSON
            raise ValueError(f"{path} is not a tokenizer file: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.tok.to_str())

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self) -> torch.Tensor:
        lengths = torch.zeros(self.vocab_size, dtype=torch.long)
        specials = {self.bos_id}
        for token, i in self.tok.get_vocab().items():
            if i not in specials:
                lengths[i] = len(token)  # byte-level: one symbol per byte
        return lengths

    def reference(self) -> dict:
        """How a checkpoint names it: the copy beside the weights, and its content's hash."""
        return {"kind": "bpe", "file": "tokenizer.json", "sha256": self.sha256()}

    def sha256(self) -> str:
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()

    def summary(self, sample: str = "To be, or not to be, that is the question.") -> str:
        bytes_per_token = len(sample.encode()) / len(self.encode(sample))
        return f"{self.vocab_size} tokens; {bytes_per_token:.2f} bytes/token on {sample!r}"


Tokenizer = ByteTokenizer | BPETokenizer


class TextStream:
    """Prints a prompt, then its continuation as tokens arrive, holding back a partial UTF-8
    character until its last byte is there."""

    def __init__(self, tokenizer: Tokenizer, prompt: str):
        self.tokenizer, self.tokens, self.printed = tokenizer, [], ""
        print(prompt, end="", flush=True)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if not text.endswith("\ufffd"):
            print(text[len(self.printed) :], end="", flush=True)
            self.printed = text

    def close(self) -> None:
        print(self.tokenizer.decode(self.tokens)[len(self.printed) :])


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """`byte`, or the path of a BPE tokenizer JSON file."""
    if str(spec) == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(spec)


def tokenizer_from_reference(ref: dict, directory: Path) -> Tokenizer:
    """Rebuild the tokenizer a checkpoint refers to: its JSON sits beside the weights (a reference
    leading outside the checkpoint's folder is refused) and must have the recorded content hash."""
    if ref.get("kind") == "byte":
        return ByteTokenizer()
    if ref.get("kind") != "bpe" or not isinstance(ref.get("file"), str):
        raise ValueError(f"unknown tokenizer reference {json.dumps(ref)}")
    directory = Path(directory).resolve()
    path = (directory / ref["file"]).resolve()
    if path.parent != directory:
        raise ValueError(f"the tokenizer reference {ref['file']!r} leads outside the checkpoint folder {directory}")
    tokenizer = BPETokenizer.load(path)
    if "sha256" in ref and tokenizer.sha256() != ref["sha256"]:  # checkpoints before hashes carry none
        raise ValueError(f"{path} does not match the checkpoint's tokenizer (content hash differs)")
    return tokenizer
