"""Corpora prepared offline from an installed package: text large enough that a small model at
tens of tokens per parameter never reads a token twice (the bundled corpus repeats there).

GCIDE, the GNU Collaborative International Dictionary of English (Debian's `dict-gcide`, GPL,
about 40 MB): dictd stores it gzip-compressed (`.dict.dz` is gzip with random-access chunks). Its
lines that only cite a source ("[1913 Webster]", "[PJC]") are dropped: they follow nearly every
sense, and a model would spend its early training on them and score them almost free. The text
is cut into passages at blank lines (`sources.passages`); every `VALIDATION_EVERY`-th passage is
held out, so validation covers the whole alphabet rather than its last letters.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from .sources import passages

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
VALIDATION_EVERY = 40  # 2.5% held out
CITATION = re.compile(r"^\s*\[[^\]\n]{1,60}\]\s*$", re.MULTILINE)
DATABASE_INFO = re.compile(r"^00-?database-\S*.*?(?=\n\S)", re.MULTILINE | re.DOTALL)


def gcide_text(path: Path = GCIDE) -> str:
    """The dictionary's entries as plain text, citation-only lines removed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: install Debian's dict-gcide (apt-get install dict-gcide)")
    # three stray Windows-1252 bytes (a curly apostrophe) in 40 MB of UTF-8 become U+FFFD
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    text = DATABASE_INFO.sub("", text)
    return CITATION.sub("", text)


def prepare_gcide(out: str | Path, source: Path = GCIDE) -> tuple[Path, Path]:
    """Write `out`/train.txt and `out`/val.txt (passages separated by blank lines); the two paths.
    Refuses to overwrite an existing corpus."""
    out = Path(out)
    train, val = out / "train.txt", out / "val.txt"
    if train.exists() or val.exists():
        raise ValueError(f"{out} already holds a prepared corpus (train.txt / val.txt): choose another --out")
    parts = passages(gcide_text(source))
    held = [p for i, p in enumerate(parts) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    kept = [p for i, p in enumerate(parts) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    if not held:
        raise ValueError(f"{source} is too small: {len(parts)} passages, none held out for validation")
    out.mkdir(parents=True, exist_ok=True)
    for path, chunk in ((train, kept), (val, held)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n\n".join(chunk) + "\n")
        tmp.rename(path)
    return train, val
