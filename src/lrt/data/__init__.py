"""Data: document sources (bundled corpus, text files, parquet shards) and row packing."""

from .loader import PackedLoader, validation_rows
from .sources import bundled_corpus, bundled_works, leading_texts, open_source, train_val_sources

__all__ = [
    "PackedLoader",
    "validation_rows",
    "bundled_corpus",
    "bundled_works",
    "leading_texts",
    "open_source",
    "train_val_sources",
]
