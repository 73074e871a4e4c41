import collections

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lrt.data import PackedLoader, bundled_corpus, bundled_works, open_source, train_val_sources, validation_rows
from lrt.data.sources import VALIDATION_WORKS, TextSource, passages, pieces
from lrt.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def test_passages_cut_at_blank_lines_and_keep_everything():
    text = "\n\n".join(f"paragraph {i} " + "x" * (i * 7) for i in range(40))
    parts = passages(text, max_chars=200)
    assert all(len(p) <= 200 or "\n\n" not in p for p in parts) and len(parts) > 10
    assert "\n\n".join(parts) == text
    assert passages("one huge paragraph " * 50, max_chars=20) == [("one huge paragraph " * 50).strip()]


def test_long_documents_come_out_in_pieces_cut_at_whitespace():
    text = "lorem ipsum dolor " * 100 + "x" * 50
    parts = pieces(text, max_chars=64)
    assert "".join(parts) == text and all(len(p) <= 64 for p in parts)
    assert all(p.endswith(" ") for p in parts[:-2])  # cut after a space where there is one
    assert pieces("y" * 130, max_chars=64) == ["y" * 64, "y" * 64, "yy"]  # else a hard cut
    assert pieces("short", max_chars=64) == ["short"]


def test_sources_resume_in_the_middle_of_a_long_document(tmp_path, monkeypatch):
    monkeypatch.setattr("lrt.data.sources.MAX_DOCUMENT_CHARS", 16)
    docs = ["a long document of many words " * 3, "short one", "another fairly long document here"]
    pq.write_table(pa.table({"text": docs}), tmp_path / "shard.parquet")
    for src in (TextSource(docs, "t", shuffle=False), open_source(tmp_path / "shard.parquet")):
        walk = [(text, pos) for (text, pos), _ in zip(src.iterate(loop=False), range(100))]
        assert "".join(text for text, _ in walk) == "".join(docs) and max(len(t) for t, _ in walk) <= 16
        for k in range(len(walk) - 1):  # from any position, the rest of the walk
            assert [t for t, _ in src.iterate(walk[k][1], loop=False)] == [t for t, _ in walk[k + 1 :]]


def test_bundled_corpus_splits_by_whole_works():
    works = bundled_works()
    assert len(works) == 42 and set(VALIDATION_WORKS) <= set(works)
    train, val = bundled_corpus()
    val_chars = sum(map(len, val.documents))
    assert 0.05 < val_chars / (val_chars + sum(map(len, train.documents))) < 0.15
    assert not set(train.documents) & set(val.documents)
    assert "HAMLET, PRINCE OF DENMARK" in "".join(val.documents)
    assert "HAMLET, PRINCE OF DENMARK" not in "".join(train.documents)


def test_text_source_order_is_shuffled_deterministically_and_resumable():
    src = TextSource([f"doc{i}" for i in range(10)], "t")
    first = [d for (d, _), _ in zip(src.iterate(), range(25))]
    assert first[:10] != sorted(first[:10]) and sorted(first[:10]) == sorted(src.documents)
    assert first[10:20] != first[:10]  # each epoch has its own order
    assert first == [d for (d, _), _ in zip(src.iterate(), range(25))]
    it = src.iterate()
    for _ in range(13):
        _, pos = next(it)
    assert [d for (d, _), _ in zip(src.iterate(pos), range(12))] == first[13:]


def _loader(docs, batch=2, seq_len=15, **kw):
    return PackedLoader(TextSource(docs, "test"), TOK, batch, seq_len, **kw)


def test_rows_start_with_bos_and_nothing_is_dropped():
    docs = [chr(97 + i % 26) * (3 + (7 * i) % 40) for i in range(30)]
    loader = _loader(docs, buffer_docs=4)
    emitted = collections.Counter()
    for _ in range(20):
        x, y = loader.next_batch()
        rows = [[*xr, yr[-1]] for xr, yr in zip(x.tolist(), y.tolist())]
        for row in rows:
            assert row[0] == TOK.bos_id and len(row) == 16
            emitted.update(t for t in row if t != TOK.bos_id)
    buffered = collections.Counter(t for doc in loader.buffer for t in doc if t != TOK.bos_id)
    read = collections.Counter()
    for text, position in loader.source.iterate():
        read.update(TOK.encode(text))
        if position == loader.position:  # up to the last document the loader read
            break
    assert emitted + buffered == read


def test_best_fit_places_whole_documents_when_they_fit():
    loader = _loader(["aaaaaaa", "bbb", "cccc"], batch=1, seq_len=16, loop=False)
    row = loader.next_row()  # 17 tokens: BOS+7, BOS+4, BOS+3, longest first
    assert TOK.decode(row) == "aaaaaaaccccbbb"
    assert loader.next_row() is None


def test_loader_resumes_exactly():
    docs = [f"document number {i} " * (1 + i % 5) for i in range(50)]
    a = _loader(docs)
    for _ in range(7):
        a.next_batch()
    b = _loader(docs)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert xa.equal(xb) and ya.equal(yb)


def test_ranks_take_their_share_of_one_global_stream():
    """Rank r of N takes rows r B .. (r + 1) B - 1 of each global micro-batch of N B rows: one
    process with N B rows per batch reads the same rows (issue 22)."""
    docs = [f"doc {i:03d} " + "x" * (i % 7) for i in range(60)]
    one = _loader(docs, batch=6, seq_len=8)
    ranks = [_loader(docs, batch=2, seq_len=8, rank=rank, world_size=3) for rank in range(3)]
    for _ in range(12):
        x, y = one.next_batch()
        shares = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([s[0] for s in shares]), x) and torch.equal(torch.cat([s[1] for s in shares]), y)
    states = [loader.state_dict() for loader in ranks]
    assert all(s["position"] == one.state_dict()["position"] for s in states)  # every rank holds the global state


def test_a_parquet_stream_is_the_same_for_every_world_size_even_with_one_row_group(tmp_path):
    """A rank no longer owns row groups, so one row group feeds every rank (issue 22, bug 3)."""
    pq.write_table(pa.table({"text": [f"doc {i} " + "y" * i for i in range(12)]}), tmp_path / "one.parquet")
    src = open_source(tmp_path / "one.parquet")
    one = PackedLoader(src, TOK, batch_size=4, seq_len=8)
    ranks = [PackedLoader(src, TOK, batch_size=2, seq_len=8, rank=rank, world_size=2) for rank in range(2)]
    for _ in range(5):
        x, _ = one.next_batch()
        assert torch.equal(torch.cat([loader.next_batch()[0] for loader in ranks]), x)


def test_an_older_runs_ranks_restart_at_the_earliest_position():
    from lrt.data.sources import earliest

    src = TextSource([f"document {i:02d}" for i in range(40)], "t")
    positions = [position for (_, position), _ in zip(src.iterate(), range(9))]
    assert earliest([positions[8], positions[4], positions[6]]) == positions[4]
    assert earliest([{"epoch": 1, "index": 0, "piece": 0}, positions[8]]) == positions[8]


def test_text_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n\nsecond paragraph")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("another file")
    src = open_source(tmp_path)
    assert sorted(src.documents) == sorted(["first file\n\nsecond paragraph", "another file"])


def test_text_data_splits_off_validation(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(f"passage {i} " + "word " * 300 for i in range(40)))
    train, val = train_val_sources(str(f))
    assert len(val.documents) >= 1 and not set(train.documents) & set(val.documents)


@pytest.mark.parametrize(
    "setup, error, match",
    [
        (lambda p: p / "missing.txt", FileNotFoundError, "does not exist"),
        (lambda p: (p / "e.txt").write_text("") and None or p / "e.txt", ValueError, "holds no text"),
        (lambda p: (p / "l.txt").write_bytes(b"caf\xe9 latin-1") and None or p / "l.txt", ValueError, "not UTF-8"),
        (lambda p: (p / "d").mkdir() or p / "d", ValueError, "no .txt files"),
    ],
    ids=["missing", "empty", "latin1", "empty-folder"],
)
def test_bad_text_data(tmp_path, setup, error, match):
    with pytest.raises(error, match=match):
        open_source(setup(tmp_path))


def _shard(path, texts, row_group_size=2, column="text"):
    pq.write_table(pa.table({column: texts}), path, row_group_size=row_group_size)


def test_parquet_shards_stream_and_resume(tmp_path):
    for i in range(3):
        _shard(tmp_path / f"shard_{i:02d}.parquet", [f"shard {i} row {j}" for j in range(5)])
    train, val = train_val_sources(str(tmp_path))
    got = [t for t, _ in train.iterate(loop=False)]
    assert got == [f"shard {i} row {j}" for i in range(2) for j in range(5)]
    assert [t for t, _ in val.iterate(loop=False)] == [f"shard 2 row {j}" for j in range(5)]
    it = train.iterate()
    for _ in range(6):
        _, pos = next(it)
    assert [t for (t, _), _ in zip(train.iterate(pos), range(6))] == got[6:] + got[:2]


def test_parquet_errors(tmp_path):
    _shard(tmp_path / "a.parquet", ["x"], column="content")
    with pytest.raises(ValueError, match="no 'text' column"):
        open_source(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        open_source(tmp_path / "b.parquet")
    _shard(tmp_path / "c.parquet", ["only one shard"])
    with pytest.raises(ValueError, match="at least two parquet shards"):
        train_val_sources(str(tmp_path / "c.parquet"))


def test_validation_rows_respect_the_budget():
    _, val = bundled_corpus()
    rows = validation_rows(val, TOK, seq_len=64, max_tokens=1000)
    assert rows.shape == (15, 65) and (rows[:, 0] == TOK.bos_id).all()
    with pytest.raises(ValueError, match="less than one row"):
        validation_rows(val, TOK, seq_len=64, max_tokens=10)
