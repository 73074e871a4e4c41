"""`lrt prepare gcide` on a small stand-in for the dictd file (CI does not install dict-gcide)."""

import gzip

from lrt.cli import main
from lrt.data.prepare import VALIDATION_EVERY, prepare_gcide
from lrt.data.sources import read_text_files

ENTRY = "Word{i} \\Word{i}\\ n.\n   1. The {i}th sense of a word; as, a word in use.\n      [1913 Webster]\n"


def fake_dict(tmp_path, entries: int = 3000):
    path = tmp_path / "gcide.dict.dz"
    text = "\n".join(ENTRY.format(i=i) for i in range(entries))
    path.write_bytes(gzip.compress(text.encode() + b"\n   a stray \x92 byte\n"))
    return path


def test_citations_dropped_and_validation_held_out(tmp_path):
    train, val = prepare_gcide(tmp_path / "out", fake_dict(tmp_path))
    train_text, val_text = train.read_text(), val.read_text()
    assert "[1913 Webster]" not in train_text + val_text
    assert "\ufffd" in train_text + val_text  # the stray byte is replaced, not fatal
    docs, held = read_text_files(train).documents, read_text_files(val).documents
    assert held and len(held) <= len(docs) // (VALIDATION_EVERY - 1) + 1
    assert not set(held) & set(docs)
    words = {w for d in docs + held for w in d.split() if w.startswith("Word")}
    assert len(words) == 3000  # nothing lost: every entry is in one of the two


def test_cli_refuses_to_overwrite_and_missing_source(tmp_path, capsys):
    source = fake_dict(tmp_path)
    assert main(["prepare", "gcide", "--out", str(tmp_path / "c"), "--source", str(source)]) == 0
    before = (tmp_path / "c" / "train.txt").read_bytes()
    assert main(["prepare", "gcide", "--out", str(tmp_path / "c"), "--source", str(source)]) == 2
    assert (tmp_path / "c" / "train.txt").read_bytes() == before
    assert main(["prepare", "gcide", "--out", str(tmp_path / "d"), "--source", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("lrt prepare: error:") for line in err)
