import pyarrow as pa
import pyarrow.parquet as pq

from helpers import tiny_train_args
from lrt.cli import main
from lrt.data.tokenizer import BPETokenizer
from lrt.train import checkpoint


def test_bpe_tokenizer_trains_and_travels_with_the_checkpoint(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(f"Passage {i}: the quick brown fox jumps over the lazy dog. " * 8 for i in range(60)))
    tok_path = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "--out", str(tok_path)]) == 0
    assert "bytes/token" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(tiny_train_args(out, steps=2, data=data, tokenizer=tok_path)) == 0
    model, tok, record = checkpoint.load_model(out)
    assert isinstance(tok, BPETokenizer) and record["tokenizer"] == {
        "kind": "bpe",
        "file": "tokenizer.json",
        "sha256": tok.sha256(),
    }
    assert model.config.vocab_size == tok.vocab_size <= 300


def test_download_shards_from_a_local_mirror(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"text": [f"shard {i}"]}), mirror / f"shard_{i:05d}.parquet")
    out = tmp_path / "shards"
    assert main(["download", "shards", "--num", "2", "--out", str(out), "--base-url", mirror.as_uri()]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert main(["download", "shards", "--num", "3", "--out", str(out), "--base-url", mirror.as_uri()]) == 2
    assert "could not download" in capsys.readouterr().err
    assert not list(out.glob("*.part"))


def test_download_core_bundle_from_a_local_mirror(tmp_path, capsys):
    import zipfile

    from helpers import LM_ITEMS, write_core_bundle

    source = write_core_bundle(tmp_path / "eval_bundle", {"lm": ("language_modeling", 0, LM_ITEMS)})
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in source.rglob("*"):
            z.write(f, f.relative_to(tmp_path))
    out = tmp_path / "data" / "bundle"
    assert main(["download", "core-bundle", "--out", str(out), "--url", archive.as_uri()]) == 0
    assert (out / "core.yaml").exists() and (out / "eval_data/sub/lm.jsonl").exists()
    (tmp_path / "junk.zip").write_text("not a zip")
    assert (
        main(["download", "core-bundle", "--out", str(tmp_path / "b2"), "--url", (tmp_path / "junk.zip").as_uri()]) == 2
    )
    assert "not a zip archive" in capsys.readouterr().err
