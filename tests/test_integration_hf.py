"""Hugging Face export (issue 13): an exported model generates exactly what lrt generates, inside
generate(), beam search included; its memory rides in the cache."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import tiny_train_args  # noqa: E402
from lrt.cli import main  # noqa: E402
from lrt.decoding import decode, generate, prefill, select_rows, step  # noqa: E402
from lrt.integrations.hf import LRTCache  # noqa: E402
from lrt.train.checkpoint import load_run  # noqa: E402

PROMPTS = ["To be", "HAMLET. Or not to be", "O"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    assert main(tiny_train_args(root / "run", steps=3)) == 0
    assert main(["export", "hf", str(root / "run"), str(root / "export")]) == 0
    return root


def load(exported, **kwargs):
    model = transformers.AutoModelForCausalLM.from_pretrained(exported / "export", trust_remote_code=True, **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported / "export", trust_remote_code=True)
    return model, tokenizer, load_run(exported / "run", "cpu")


def test_the_export_loads_with_the_auto_classes_and_keeps_the_weights(exported):
    model, tokenizer, run = load(exported)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], tensor), name
    for text in PROMPTS:  # the tokenizer puts <|bos|> first, as lrt reads a prompt
        assert tokenizer(text)["input_ids"] == [run.tokenizer.bos_id] + run.tokenizer.encode(text)
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_forward_without_a_cache_is_exact_memory(exported):
    model, _, run = load(exported)
    idx = torch.tensor([[run.tokenizer.bos_id] + run.tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        assert (model(idx).logits - decode(run.model, idx)).abs().max() < 1e-5
    parallel, _, _ = load(exported, memory="parallel:interleaved:2")  # the training schedule's passes instead
    with torch.no_grad():
        expected = run.model(idx, schedule=run.train_config.make_schedule()).logits
        assert (parallel(idx).logits - expected).abs().max() < 1e-5


def test_greedy_generate_is_lrt_generate_batched_with_left_padding(exported):
    model, tokenizer, run = load(exported)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padding in play
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    for row, text in enumerate(PROMPTS):
        prompt = [run.tokenizer.bos_id] + run.tokenizer.encode(text)
        expected = generate(run.model, [prompt], 8, temperature=0, memory="exact").tokens[0]
        assert out[row, batch["input_ids"].size(1) :].tolist()[: len(expected)] == expected


def reference_beam_search(model, prompt: list[int], beams: int, steps: int) -> list[int]:
    """Beam search over lrt's own decoding step: each beam carries its own state (memory included)."""
    pre = prefill(model, [prompt], len(prompt) + steps + 1)
    candidates = [(0.0, [], pre.state, pre.logits)]
    for _ in range(steps):
        expanded = []
        for score, tokens, state, logits in candidates:
            logprobs = torch.log_softmax(logits[0].float(), -1)
            values, ids = logprobs.topk(2 * beams)
            expanded += [(score + v.item(), tokens + [i.item()], state) for v, i in zip(values, ids)]
        expanded.sort(key=lambda c: -c[0])
        candidates = []
        for score, tokens, state in expanded[:beams]:
            state = select_rows(state, torch.tensor([0]))  # a copy for this beam
            candidates.append((score, tokens, state, step(model, torch.tensor([tokens[-1]]), state)))
    return max(candidates, key=lambda c: c[0])[1]


def test_beam_search_moves_the_memory_with_the_beams(exported):
    model, tokenizer, run = load(exported)
    for text in PROMPTS[:2]:
        prompt = [run.tokenizer.bos_id] + run.tokenizer.encode(text)
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=6,
            num_beams=3,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=run.tokenizer.bos_id,
        )
        assert out[0, len(prompt) :].tolist() == reference_beam_search(run.model, prompt, beams=3, steps=6)


def test_sampling_with_a_seed_is_reproducible(exported):
    model, tokenizer, _ = load(exported)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(model.generate(**batch, max_new_tokens=10, do_sample=True, top_k=20).tolist())
    assert draws[0] == draws[1]


def test_the_cache_refuses_to_roll_back():
    with pytest.raises(ValueError, match="cannot be cropped"):
        LRTCache().crop(3)


def test_corrupt_or_mismatched_exports_are_clear_errors(exported, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported / "export", broken)
    config = json.loads((broken / "config.json").read_text())
    config["lrt"]["n_layer"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weights do not match"):
        transformers.AutoModelForCausalLM.from_pretrained(broken, trust_remote_code=True)
    del config["lrt"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not an LRT export"):
        transformers.AutoModelForCausalLM.from_pretrained(broken, trust_remote_code=True)


def test_export_refuses_a_folder_that_is_not_empty(exported, capsys):
    assert main(["export", "hf", str(exported / "run"), str(exported / "export")]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_a_bpe_run_exports_its_tokenizer(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(f"Passage {i}: the quick brown fox jumps over the lazy dog. " * 8 for i in range(60)))
    assert (
        main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "--out", str(tmp_path / "tok.json")])
        == 0
    )
    assert main(tiny_train_args(tmp_path / "run", data=data, tokenizer=tmp_path / "tok.json")) == 0
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export", trust_remote_code=True)
    run = load_run(tmp_path / "run", "cpu")
    text = "the quick brown fox"
    assert tokenizer(text)["input_ids"] == [run.tokenizer.bos_id] + run.tokenizer.encode(text)
