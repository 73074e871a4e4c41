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
        ids = torch.tensor([prompt])  # with the mask it means: every column, the leading <|bos|> too
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, num_beams=3, do_sample=False, eos_token_id=None
        )
        # and without one: <|pad|> is not <|bos|>, so transformers' own mask keeps the <|bos|>
        assert torch.equal(model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, eos_token_id=None), out)
        assert out[0, len(prompt) :].tolist() == reference_beam_search(run.model, prompt, beams=3, steps=6)


def test_sampling_with_a_seed_is_reproducible(exported):
    model, tokenizer, _ = load(exported)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(model.generate(**batch, max_new_tokens=10, do_sample=True, top_k=20).tolist())
    assert draws[0] == draws[1]


NO_LRT = """
import importlib.abc, json, sys

class NoLrt(importlib.abc.MetaPathFinder):  # lrt is not installed here
    def find_spec(self, name, path, target=None):
        if name == "lrt" or name.startswith("lrt."):
            raise ImportError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, NoLrt())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

export, again = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
batch = tokenizer(["To be", "O"], return_tensors="pt", padding=True)
out = model.generate(**batch, max_new_tokens=8, do_sample=False)
model.save_pretrained(again)
tokenizer.save_pretrained(again)
reloaded = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True)
long = tokenizer(["x" * 22], return_tensors="pt")  # 23 tokens of a 64-token window
longest = model.generate(**long, max_new_tokens=100, do_sample=False, suppress_tokens=[tokenizer.bos_token_id])
print(json.dumps({
    "out": out.tolist(),
    "again": reloaded.generate(**batch, max_new_tokens=8, do_sample=False).tolist(),
    "width": batch["input_ids"].shape[1],
    "longest": longest.shape[1],
    "windows": [model.config.max_position_embeddings, tokenizer.model_max_length],
    "pad": [tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.bos_token_id],
    "lrt": sorted(m for m in sys.modules if m == "lrt" or m.startswith("lrt.")),
}))
"""


def test_the_export_needs_only_torch_and_transformers_and_round_trips(exported, tmp_path):
    """In a process where lrt cannot be imported: the export loads, generates what lrt generates,
    knows its window (generation stops there with what it made), pads with a token of its own, and
    survives save_pretrained / from_pretrained."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", NO_LRT, str(exported / "export"), str(tmp_path / "again")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    run = load_run(exported / "run", "cpu")
    assert got["lrt"] == [] and got["again"] == got["out"]
    for row, text in enumerate(["To be", "O"]):
        prompt = [run.tokenizer.bos_id] + run.tokenizer.encode(text)
        expected = generate(run.model, [prompt], 8, temperature=0, stop_token=run.tokenizer.bos_id).tokens[0]
        assert got["out"][row][got["width"] :][: len(expected)] == expected
    window = run.model.config.sequence_len
    assert got["longest"] == window and got["windows"] == [window, window]
    assert got["pad"][0] == "<|pad|>" and got["pad"][1] != got["pad"][2]
    files = {p.name: p for p in (exported / "export").iterdir()}
    assert {"generation_config.json", "README.md", "modeling_lrt.py", "model.py"} <= set(files)
    assert files["model.safetensors"].stat().st_mode & 0o044 == 0o044  # readable by others, as any file here
    assert "Written by lrt" in files["modeling_lrt.py"].read_text().splitlines()[0]


def test_a_forward_past_the_window_is_one_clear_error(exported):
    model, _, run = load(exported)
    with pytest.raises(ValueError, match="longer than the model's window"):
        model(torch.ones(1, run.model.config.sequence_len + 1, dtype=torch.long))


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


def test_the_labels_loss_of_a_left_padded_batch_is_its_rows_loss(exported):
    """labels give the mean next-token loss over the real tokens (read with config.memory): a
    left-padded row adds nothing for its padding, nor for its first token, which nothing precedes."""
    model, tokenizer, _ = load(exported)
    texts = ["To be, or not to be", "O"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss
        alone = [
            (model(ids := tokenizer(t, return_tensors="pt")["input_ids"], labels=ids).loss, ids.size(1) - 1)
            for t in texts
        ]
    expected = sum(loss_ * n for loss_, n in alone) / sum(n for _, n in alone)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def assert_steps_read_as_the_sequence(model, batch, atol: float) -> None:
    """generate(output_hidden_states=True): each decoding step's states of every layer are those of
    a read of the whole generated sequence at that position (the prompt's: the prompt's read)."""
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
        whole = model(out.sequences, output_hidden_states=True, use_cache=False).hidden_states
    width, steps = batch["input_ids"].size(1), out.hidden_states
    assert [len(s) for s in steps] == [len(whole)] * 4
    assert all(torch.allclose(s, w[:, :width], atol=atol) for s, w in zip(steps[0], whole))
    for k in range(1, 4):
        assert all(torch.allclose(s[:, 0], w[:, width + k - 1], atol=atol) for s, w in zip(steps[k], whole))


def test_hidden_states_of_every_layer_under_each_memory(exported):
    """transformers' layout (the embeddings, then each block's output, the last after the final
    norm), each position from the pass that computed it last: token by token (exact) and the
    converged fixed point's full passes must give the same states, and a left-padded row its own."""
    model, tokenizer, _ = load(exported)
    model.double()
    with torch.no_grad():  # weights far from the init, where the memory changes every layer's states
        for p in model.parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    batch = tokenizer(["To be, or not", "O"], return_tensors="pt", padding=True)
    ids, n = batch["input_ids"][:1], model.model.config.n_layer

    def states(memory, **inputs):
        model.config.memory = memory
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, use_cache=False)
        return out.hidden_states, out.logits

    exact, logits = states("exact", input_ids=ids)
    assert len(exact) == n + 1 and all(h.shape == (1, ids.size(1), model.model.config.n_embd) for h in exact)
    assert torch.equal(exact[0], model.model.embed(ids))
    assert torch.allclose(model.model.head(exact[-1]), logits, atol=1e-12)
    fixed, _ = states("fixed-point:0", input_ids=ids)
    zero, _ = states("zero", input_ids=ids)
    for layer in range(1, n + 1):
        assert torch.allclose(fixed[layer], exact[layer], atol=1e-9)
        assert not torch.allclose(zero[layer], exact[layer], atol=1e-3)  # the memory reaches every layer
    padded, _ = states("exact", **batch)
    width = int(batch["attention_mask"][1].sum())
    assert all(torch.allclose(p[0], e[0], atol=1e-12) for p, e in zip(padded, exact))
    short, _ = states("exact", input_ids=batch["input_ids"][1:, -width:])
    assert all(torch.allclose(p[1, -width:], s[0], atol=1e-12) for p, s in zip(padded, short))
    assert_steps_read_as_the_sequence(model, batch, atol=1e-9)  # generate() asks for them too


def test_embeddings_and_gradient_checkpointing(exported):
    model, tokenizer, _ = load(exported)
    ids = tokenizer(["To be, or not"], return_tensors="pt")["input_ids"]
    assert model.get_input_embeddings() is model.model.wte
    with pytest.raises(NotImplementedError, match="cannot change its vocabulary"):
        model.resize_token_embeddings(model.config.vocab_size + 4)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_enable()
        assert model.model.activation_checkpointing == checkpointing
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.wte.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_lora_adapter_trains_with_transformers_trainer(exported, tmp_path):
    """PEFT LoRA (query, value, MLP and head projections), a few Trainer steps on CPU, the
    loss computed with the training schedule's passes (memory=parallel:...): the loss goes down."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    model, tokenizer, _ = load(exported, memory="parallel:interleaved:2")
    targets = ["c_q", "c_v", "c_fc", "lm_head"]  # the tiny model trained 3 steps: its attention adds little yet
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, lora_dropout=0.0))
    encoded = tokenizer(["To be, or not to be, that is the question."] * 8)
    data = [{"input_ids": ids, "attention_mask": mask, "labels": ids} for ids, mask in zip(*encoded.values())]
    probe = {k: torch.tensor([v]) for k, v in data[0].items()}

    def loss() -> float:
        with torch.no_grad():
            return lora(**probe).loss.item()

    before = loss()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=12,
        learning_rate=2e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
    )
    transformers.Trainer(model=lora, args=args, train_dataset=data).train()
    assert loss() < before - 0.1
    assert all(not p.requires_grad for n, p in lora.named_parameters() if "lora_" not in n)


def test_a_text_generation_pipeline_stops_at_the_window(exported):
    model, tokenizer, run = load(exported)
    generator = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    options = dict(max_new_tokens=100, do_sample=False, suppress_tokens=[tokenizer.bos_token_id], return_tensors=True)
    out = generator("x" * 22, **options)
    assert len(out[0]["generated_token_ids"]) == run.model.config.sequence_len  # <|bos|> + 22 + what fits


@pytest.mark.parametrize(
    "flags", [["--schedule", "jacobi:2"], ["--schedule", "baseline", "--set", "loops=2"]], ids=["ponder", "looped"]
)
def test_the_comparators_export_and_generate_what_lrt_generates(tmp_path, flags):
    assert main([*tiny_train_args(tmp_path / "run", steps=2), *flags]) == 0
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", trust_remote_code=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export", trust_remote_code=True)
    run = load_run(tmp_path / "run", "cpu")
    inputs = tokenizer(["To be"], return_tensors="pt")
    hidden = model(**inputs, output_hidden_states=True).hidden_states  # every pass of a looped stack counts
    assert len(hidden) == run.model.config.cache_layers + 1
    assert torch.allclose(run.model.head(hidden[-1]), model(**inputs).logits, atol=1e-5)
    assert_steps_read_as_the_sequence(model, inputs, atol=1e-5)  # PonderLM-2: a token's last slot
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    prompt = [run.tokenizer.bos_id] + run.tokenizer.encode("To be")
    expected = generate(run.model, [prompt], 6, temperature=0, stop_token=run.tokenizer.bos_id).tokens[0]
    assert out[0, len(prompt) :].tolist()[: len(expected)] == expected
