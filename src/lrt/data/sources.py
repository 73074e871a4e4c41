"""Where documents come from: the bundled Shakespeare corpus, local text files, parquet shards.

A source walks its documents in a fixed order from a resumable position (a small JSON-able
dict), looping over epochs for training or making one pass for validation. A document longer
than MAX_DOCUMENT_CHARS comes out in pieces (cut at whitespace where there is some), each its own
document, so what the packing loader holds stays bounded whatever the data's document lengths.
Nothing here downloads anything.
"""

from __future__ import annotations

import io
import random
import re
import tarfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

# Whole works held out for validation: four plays, about 10% of the corpus's bytes.
VALIDATION_WORKS = ("hamlet", "macbeth", "tempest", "twelfth_night")
# The longest document a source hands on (about 2 rows of 2048 BPE tokens; every passage of the
# bundled corpus is shorter, so it is cut only where a text has long stretches without blank lines).
MAX_DOCUMENT_CHARS = 8192


def pieces(text: str, max_chars: int | None = None) -> list[str]:
    """`text` cut into pieces of at most max_chars (default MAX_DOCUMENT_CHARS), after the last
    whitespace of each where there is one: joined again they are the text."""
    max_chars = max_chars or MAX_DOCUMENT_CHARS
    out, start = [], 0
    while len(text) - start > max_chars:
        cut = max(text.rfind(" ", start, start + max_chars), text.rfind("\n", start, start + max_chars))
        end = cut + 1 if cut > start else start + max_chars
        out.append(text[start:end])
        start = end
    return out + [text[start:]]


def _resume_pieces(text: str, piece: int, position: dict):
    """The pieces of one document from `piece` on, each with the position after it: the next piece
    of this document, or (piece 0 of) the next document."""
    parts = pieces(text)
    for k in range(piece, len(parts)):
        yield parts[k], k + 1 < len(parts), {**position, "piece": k + 1}


def passages(text: str, max_chars: int = 2000) -> list[str]:
    """Cut a text at blank lines into passages of at most max_chars (a longer paragraph stays
    whole), so a long work becomes documents of reasonable length with nothing dropped."""
    out, current = [], ""
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        if current and len(current) + 2 + len(paragraph) > max_chars:
            out.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        out.append(current)
    return out


# epochs per seed before two (seed, epoch) pairs share a shuffle: far more than any run reads
SEED_STRIDE = 1_000_003


class TextSource:
    """Documents held in memory, addressed by (epoch, index, piece). With `shuffle` each epoch visits
    them in its own fixed random order: passages of one work are contiguous, and a model fed
    them in order would chase the current work instead of learning the corpus (and a validation
    budget would cover only the first work)."""

    def __init__(self, documents: list[str], name: str, shuffle: bool = True):
        if not documents:
            raise ValueError(f"{name} holds no text")
        self.documents = documents
        self.name = name
        self.shuffle = shuffle

    def order(self, epoch: int, seed: int = 0) -> list[int]:
        """Epoch `epoch`'s order under `seed`: runs with the same seed read the same documents in
        the same order (what pairs a baseline with an LRT), runs with different seeds do not.
        Seed 0 is the order lrt has always used (epoch e shuffled by Random(e))."""
        order = list(range(len(self.documents)))
        if self.shuffle:
            random.Random(epoch + SEED_STRIDE * seed).shuffle(order)
        return order

    def iterate(self, position: dict | None = None, loop: bool = True, seed: int = 0) -> Iterator[tuple[str, dict]]:
        """Documents from `position` on, in `seed`'s order."""
        p = {"epoch": 0, "index": 0, "piece": 0, **(position or {})}
        epoch, index, piece = p["epoch"], p["index"], p["piece"]
        while True:
            order = self.order(epoch, seed)
            while index < len(order):
                here = {"epoch": epoch, "index": index}
                for text, more, after in _resume_pieces(self.documents[order[index]], piece, here):
                    yield text, after if more else {"epoch": epoch, "index": index + 1, "piece": 0}
                index, piece = index + 1, 0
            if not loop:
                return
            epoch, index = epoch + 1, 0

    def split(self, val_fraction: float) -> tuple["TextSource", "TextSource"]:
        """Hold out the last documents, about val_fraction of the characters, for validation."""
        total = sum(map(len, self.documents))
        cut, held = len(self.documents), 0
        while cut > 1 and held < val_fraction * total:
            cut -= 1
            held += len(self.documents[cut])
        if cut == len(self.documents):
            raise ValueError(f"{self.name} is too small to hold out validation text; give --val-data")
        return (
            TextSource(self.documents[:cut], self.name, self.shuffle),
            TextSource(self.documents[cut:], f"{self.name} (validation)", self.shuffle),
        )


def bundled_works() -> dict[str, str]:
    """The 42 works of the bundled corpus, by name (e.g. 'hamlet')."""
    archive = resources.files("lrt.data").joinpath("shakespeare.tar.xz").read_bytes()
    works = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:xz") as tar:
        for member in tar.getmembers():
            name = member.name.removesuffix("_gut.txt")
            works[name] = tar.extractfile(member).read().decode("ascii")
    return dict(sorted(works.items()))


def bundled_corpus() -> tuple[TextSource, TextSource]:
    """(train, validation) sources of the bundled corpus, split by whole works."""
    works = bundled_works()
    train = [p for name, text in works.items() if name not in VALIDATION_WORKS for p in passages(text)]
    val = [p for name in VALIDATION_WORKS for p in passages(works[name])]
    return TextSource(train, "the bundled Shakespeare corpus"), TextSource(val, "Shakespeare validation works")


def read_text_files(path: str | Path) -> TextSource:
    """A .txt file, or every .txt file under a folder (sorted), cut into passages."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .txt files under {path}")
    documents = []
    for f in files:
        documents += passages(read_utf8(f))
    return TextSource(documents, str(path))


def read_utf8(path: str | Path) -> str:
    """A text file's content; one that is not UTF-8 is an error naming it (a bare
    UnicodeDecodeError says neither which file nor where)."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None


class ParquetSource:
    """Parquet shards with a `text` column (the FineWeb-Edu layout of nanochat), streamed one row
    group at a time. Position: (epoch, file, row group, row, piece)."""

    def __init__(self, files: list[Path], name: str):
        import pyarrow.parquet as pq

        if not files:
            raise ValueError(f"{name} holds no parquet files")
        self.files, self.name, self.row_groups = files, name, []
        for f in files:
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises several types for non-parquet input
                raise ValueError(f"{f} is not a readable parquet file ({e})") from None
            if "text" not in meta.schema_arrow.names:
                raise ValueError(f"{f} has no 'text' column (columns: {', '.join(meta.schema_arrow.names)})")
            self.row_groups.append(meta.num_row_groups)

    def iterate(self, position: dict | None = None, loop: bool = True, seed: int = 0) -> Iterator[tuple[str, dict]]:
        """Documents from `position` on. Shards are read in file order whatever the seed:
        pretraining shards come shuffled (FineWeb-Edu), and reordering row groups would cost a
        read per group."""
        import pyarrow.parquet as pq

        p = {"epoch": 0, "file": 0, "group": 0, "row": 0, "piece": 0, **(position or {})}
        while True:
            while p["file"] < len(self.files):
                pf = pq.ParquetFile(self.files[p["file"]])
                while p["group"] < self.row_groups[p["file"]]:
                    texts = pf.read_row_group(p["group"], columns=["text"]).column("text").to_pylist()
                    while p["row"] < len(texts):
                        here = {k: p[k] for k in ("epoch", "file", "group", "row")}
                        for text, more, after in _resume_pieces(texts[p["row"]], p["piece"], here):
                            yield text, after if more else {**here, "row": p["row"] + 1, "piece": 0}
                        p["row"], p["piece"] = p["row"] + 1, 0
                    p["group"], p["row"] = p["group"] + 1, 0
                p["file"], p["group"] = p["file"] + 1, 0
            if not loop:
                return
            p = {"epoch": p["epoch"] + 1, "file": 0, "group": 0, "row": 0, "piece": 0}

    def split(self, val_fraction: float) -> tuple["ParquetSource", "ParquetSource"]:
        """The last shard is validation (nanochat's rule); val_fraction does not apply."""
        if len(self.files) < 2:
            raise ValueError(
                f"{self.name}: need at least two parquet shards (the last one is validation), or give --val-data"
            )
        return ParquetSource(self.files[:-1], self.name), ParquetSource(
            self.files[-1:], f"{self.files[-1]} (validation)"
        )


def earliest(positions: list[dict]) -> dict:
    """The position no later than any of `positions` (of one source): where the ranks of an older
    lrt's run, which read disjoint parts of the stream, restart, so that no document is skipped
    (a few are read again)."""
    keys = ("epoch", "file", "group", "index", "row", "piece")
    return min(positions, key=lambda p: tuple(p.get(k, 0) for k in keys))


def leading_texts(source, max_chars: int) -> Iterator[str]:
    """The documents of one pass over `source`, until about max_chars characters are read."""
    budget = max_chars
    for text, _ in source.iterate(loop=False):
        if budget <= 0:
            return
        budget -= len(text)
        yield text


def open_source(path: str | Path):
    """One source from a path: parquet shard(s) or text file(s)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        return ParquetSource(files, str(path))
    return read_text_files(path)


def train_val_sources(data: str | None, val_data: str | None = None, val_fraction: float = 0.05):
    """The training and validation sources for a run: the bundled corpus when `data` is None."""
    if data is None:
        if val_data is not None:
            return bundled_corpus()[0], open_source(val_data)
        return bundled_corpus()
    if val_data is not None:
        return open_source(data), open_source(val_data)
    return open_source(data).split(val_fraction)
