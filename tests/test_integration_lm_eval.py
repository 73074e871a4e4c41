"""lm-evaluation-harness model `lrt` (issue 13): the harness receives lrt's own exact-memory
scores, offline, on a task defined by a local YAML over local JSONL."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from helpers import tiny_train_args, write_lm_eval_task  # noqa: E402
from lrt.cli import main  # noqa: E402
from lrt.decoding import decode, generate  # noqa: E402
from lrt.integrations.lm_eval import LRTLM, evaluate  # noqa: E402
from lrt.train.checkpoint import load_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    assert main(tiny_train_args(root / "run", steps=3)) == 0
    return root / "run"


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return write_lm_eval_task(tmp_path / "tasks", "lrt_local_mc")


def exact_logprob(model, tokens: list[int], n: int) -> float:
    """log p(last n tokens | the rest), by lrt's token-by-token decoding."""
    idx = torch.tensor([tokens[:-1]])
    logprobs = torch.log_softmax(decode(model, idx)[0].float(), -1)
    return sum(logprobs[t, tokens[t + 1]].item() for t in range(len(tokens) - 1 - n, len(tokens) - 1))


def test_the_harness_receives_lrts_exact_memory_scores(run, task_dir):
    results = evaluate(str(run), tasks=["lrt_local_mc"], include_path=str(task_dir), batch_size=3, log_samples=True)
    trained = load_run(run, "cpu")
    tok = trained.tokenizer
    samples = results["samples"]["lrt_local_mc"]
    assert len(samples) == 4 and "acc,none" in results["results"]["lrt_local_mc"]
    for sample in samples:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            tokens = [tok.bos_id] + tok.encode(context + continuation)
            expected = exact_logprob(trained.model, tokens, len(tok.encode(continuation)))
            assert response[0][0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "flags", [["--schedule", "jacobi:2"], ["--schedule", "baseline", "--set", "loops=2"]], ids=["ponder", "loop-2"]
)
def test_the_comparators_scores_are_their_decoding_scores(tmp_path, flags):
    """PonderLM-2 scored with its exact recurrence (what generation gets), a looped transformer with
    its only memory: the harness gets what token-by-token decoding gives."""
    assert main([*tiny_train_args(tmp_path / "run", steps=2), *flags]) == 0
    lm = LRTLM(str(tmp_path / "run"))
    with torch.no_grad():  # weights far from the init, where each memory gives other scores
        for p in lm.model.parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    tok = lm.tokenizer
    pairs = [("To be, or not", " to be"), ("Friends, Romans", ", countrymen")]
    scores = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for (context, continuation), (score, _) in zip(pairs, scores):
        tokens = [tok.bos_id] + tok.encode(context + continuation)
        expected = exact_logprob(lm.model, tokens, len(tok.encode(continuation)))
        assert score == pytest.approx(expected, abs=1e-4)


def test_rolling_loglikelihood_is_the_exact_decoding_nll(run):
    lm = LRTLM(str(run))
    trained = load_run(run, "cpu")
    text = "Whether 'tis nobler in the mind to suffer"
    (score,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    tokens = [trained.tokenizer.bos_id] + trained.tokenizer.encode(text)
    assert score == pytest.approx(exact_logprob(trained.model, tokens, len(tokens) - 1), abs=1e-4)
    long_text = text * 4  # longer than the 64-token window: read in windows, every token scored once
    (long_score,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (long_text,), 0)])
    assert long_score < score < 0


def test_generate_until_stops_at_the_given_strings(run):
    lm = LRTLM(str(run))
    trained = load_run(run, "cpu")
    prompt = "To be, or not"
    free = generate(
        trained.model, [[trained.tokenizer.bos_id] + trained.tokenizer.encode(prompt)], 30, temperature=0
    ).tokens[0]
    text = trained.tokenizer.decode(free)
    stop = text[3]  # a character the greedy continuation writes
    (out,) = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 30}), 0)])
    assert out == text[: text.index(stop)] and stop not in out


def test_generate_until_batches_requests_and_keeps_their_order(run):
    """Requests of one length are generated together (batch_size at a time, each row on its own);
    greedy, every answer is what the request gets alone."""
    lm = LRTLM(str(run), batch_size=2)
    requests = [
        Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": n}), i)
        for i, (prompt, n) in enumerate(
            [("To be", 12), ("O Romeo, Romeo", 12), ("Now is the winter", 7), ("A horse", 12)]
        )
    ]
    together = lm.generate_until(requests)
    assert together == [lm.generate_until([r])[0] for r in requests]
    assert len(set(together)) > 1


def test_an_exported_folder_scores_like_its_run(run, tmp_path):
    pytest.importorskip("transformers")
    assert main(["export", "hf", str(run), str(tmp_path / "export")]) == 0
    request = [Instance("loglikelihood", {}, ("The sky is", " blue"), 0)]
    assert LRTLM(str(tmp_path / "export")).loglikelihood(request) == LRTLM(str(run)).loglikelihood(request)


def test_lrt_eval_harness_from_the_command_line(run, task_dir, tmp_path, capsys):
    report = tmp_path / "harness.json"
    assert (
        main(
            [
                "eval",
                "harness",
                str(run),
                "--tasks",
                "lrt_local_mc",
                "--include-path",
                str(task_dir),
                "--memory",
                "parallel",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    assert "lrt_local_mc" in capsys.readouterr().out
    assert "acc,none" in json.loads(report.read_text())["results"]["lrt_local_mc"]


def test_a_folder_that_is_not_an_export_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not an LRT export"):
        LRTLM(str(tmp_path))


def test_an_unknown_task_is_one_line(run, capsys):
    assert main(["eval", "harness", str(run), "--tasks", "no_such_task", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s): no_such_task" in err and len(err.strip().splitlines()) == 1


def test_context_and_continuation_split_as_lm_evals_own_models_split_them(run):
    """A context's trailing spaces move to the continuation (lm-eval's TemplateLM._encode_pair); an
    empty continuation scores log 1."""
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM

    lm = LRTLM(str(run))
    builtin = SimpleNamespace(backend="causal", tok_encode=lm.tokenizer.encode)
    for context, continuation in [("To be ", "or not"), ("Hello  ", "world"), ("abc", " def"), ("x\n", "y")]:
        assert lm.split(context, continuation) == TemplateLM._encode_pair(builtin, context, continuation)
    requests = [
        Instance("loglikelihood", {}, (c, x), 0) for c, x in [("To be ", "or"), ("To be", " or"), ("To be", "")]
    ]
    spaced, plain, empty = lm.loglikelihood(requests)
    assert spaced == pytest.approx(plain) and empty == (0.0, True)


def test_importing_the_integration_keeps_lm_evals_own_models():
    from lm_eval.api.registry import MODEL_REGISTRY, get_model

    import lrt.integrations.lm_eval  # noqa: F401

    # "hf" is registered (loading its class needs accelerate, which the [eval] extra does not install)
    assert get_model("lrt") is LRTLM and {"hf", "vllm", "local-completions"} <= set(MODEL_REGISTRY.keys())


def test_lm_evals_own_hf_model_reads_an_export_as_lrt_does(run, tmp_path):
    """lm-eval's `hf` model on an exported folder: it knows the window; its loglikelihoods are lrt's;
    its rolling ones too with add_bos_token=False (the tokenizer puts <|bos|> first itself, and the
    harness prefixes one more to a rolling window: README, lm-evaluation-harness)."""
    pytest.importorskip("accelerate")
    from lm_eval.models.huggingface import HFLM

    assert main(["export", "hf", str(run), str(tmp_path / "export")]) == 0
    ours = LRTLM(str(run))
    text = "To be, or not to be, that is the question."
    pair = [Instance("loglikelihood", {}, ("To be, or not", " to be"), 0)]
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    default = HFLM(pretrained=str(tmp_path / "export"), trust_remote_code=True, device="cpu", batch_size=2)
    assert default.max_length == ours.window
    assert default.loglikelihood(pair)[0][0] == pytest.approx(ours.loglikelihood(pair)[0][0], abs=1e-4)
    no_bos = HFLM(
        pretrained=str(tmp_path / "export"), trust_remote_code=True, device="cpu", batch_size=2, add_bos_token=False
    )
    assert no_bos.loglikelihood_rolling(rolling)[0] == pytest.approx(ours.loglikelihood_rolling(rolling)[0], abs=1e-3)
