import pytest

from lrt.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer, tokenizer_from_reference

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer — ünïcode too.\n" * 20


def test_byte_tokenizer_round_trip_and_bytes():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and max(ids) < 256
    tb = tok.token_bytes()
    assert tb[tok.bos_id] == 0 and tb[ids].sum() == len(TEXT.encode())
    assert tok.decode([tok.bos_id, *tok.encode("hi")]) == "hi"


def test_bpe_trains_saves_loads_and_counts_bytes(tmp_path):
    tok = BPETokenizer.train([TEXT], vocab_size=320)
    assert tok.vocab_size <= 320 and tok.bos_id is not None
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) / 2  # merges learned
    assert tok.decode(ids) == TEXT
    tb = tok.token_bytes()
    assert tb[tok.bos_id] == 0 and tb[ids].sum() == len(TEXT.encode())
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode(TEXT) == ids
    assert tokenizer_from_reference(tok.reference(), tmp_path).encode("question") == tok.encode("question")


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="at least 258"):
        BPETokenizer.train([TEXT], vocab_size=100)
