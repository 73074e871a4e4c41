import math

import pytest
import torch
import torch.nn.functional as F

import lrt
from helpers import LM_ITEMS, MC_ITEMS, SCHEMA_ITEMS, random_model, tiny_config, write_core_bundle
from lrt.data.tokenizer import ByteTokenizer
from lrt.decoding import decode
from lrt.evaluate import evaluate_bpb
from lrt.evaluate.core import Reader, evaluate_task, load_bundle, render, score_item

TOK = ByteTokenizer()


def _rows(n=4, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 256, (n, T + 1), generator=g)
    rows[:, 0] = TOK.bos_id
    rows[1, 4] = TOK.bos_id  # a document boundary inside a row: its target carries no bytes
    return rows


def _bpb(logits, rows):
    y = rows[:, 1:]
    nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    nbytes = TOK.token_bytes()[y.flatten()]
    return (nats * (nbytes > 0)).sum().item() / (math.log(2) * nbytes.sum().item())


ALL_MEMORIES = ("zero", "parallel:interleaved:8", "exact", "fixed-point:0")


def test_exact_bpb_equals_teacher_forced_decoding_bpb():
    model = random_model(tiny_config(vocab_size=257))
    rows = _rows()
    x = rows[:, :-1]
    result = evaluate_bpb(model, rows, TOK.token_bytes(), memories=ALL_MEMORIES, batch_size=3, bucket=3)
    with torch.no_grad():
        decoded = decode(model, x)
        zero = model(x)
    assert result.exact == pytest.approx(_bpb(decoded, rows), rel=1e-5)
    assert result.parallel == pytest.approx(result.exact, rel=1e-5)  # S = T is exact
    assert result.fixed_point == pytest.approx(result.exact, rel=1e-5)  # tol 0: run to the exact answer
    assert result.zero == pytest.approx(_bpb(zero, rows), rel=1e-6)
    assert result.parallel_passes[0] == pytest.approx(result.zero, rel=1e-6)  # pass 0 is the zero-memory forward
    assert result.parallel_schedule == "parallel:interleaved:8" and len(result.parallel_pass_labels) == 9
    assert result.bytes == 4 * 8 - 1 and result.tokens == 32
    assert [(a, b) for a, b, _ in result.exact_buckets] == [(0, 2), (3, 5), (6, 7)]
    assert result.gap == pytest.approx(0, abs=1e-5)
    text = result.format()
    assert "pass 8 (memory from the buffer, positions t mod 8 == 7)" in text and "exact BPB by position: 0-2" in text


def test_per_pass_bpb_scores_each_pass_on_its_own_positions():
    model = random_model(tiny_config(vocab_size=257))
    rows = _rows()
    result = evaluate_bpb(model, rows, TOK.token_bytes(), memories=[lrt.Memory("parallel", lrt.Interleaved(subsets=2))])
    with torch.no_grad():
        out = model(rows[:, :-1], schedule=lrt.Interleaved(subsets=2))
    pos, logits = out.pass_logits[2]  # odd positions
    assert pos.tolist() == [1, 3, 5, 7]
    sub = torch.cat([rows[:, :1], rows[:, 1:][:, pos]], 1)
    assert result.parallel_passes[2] == pytest.approx(_bpb(logits, sub), rel=1e-6)
    assert result.exact is None and result.zero is None


def test_baseline_models_report_only_zero_memory_bpb():
    model = random_model(tiny_config(vocab_size=257, injection="none"))
    result = evaluate_bpb(model, _rows(), TOK.token_bytes(), memories=ALL_MEMORIES)
    assert result.zero is not None and result.parallel is None and result.exact is None and result.gap is None
    assert "(ablation)" not in result.format(recurrent=False)


def test_each_memory_mode_is_scored_once():
    model = random_model(tiny_config(vocab_size=257))
    with pytest.raises(ValueError, match="scores each memory mode once"):
        evaluate_bpb(
            model, _rows(), TOK.token_bytes(), memories=("exact", "parallel:interleaved:2", "parallel:baseline")
        )


# CORE ---------------------------------------------------------------------------------------------


def oracle(known_texts):
    """A stand-in model that has memorised some prompts: where a row so far is a prefix of a known
    prompt it puts all weight on that prompt's next token, elsewhere it is uniform."""
    known = [[TOK.bos_id] + TOK.encode(t) for t in known_texts]

    def logits_fn(idx):
        out = torch.zeros(idx.size(0), idx.size(1), TOK.vocab_size)
        for b, row in enumerate(idx.tolist()):
            for t in range(len(row)):
                for g in known:
                    if len(g) > t + 1 and g[: t + 1] == row[: t + 1]:
                        out[b, t, g[t + 1]] = 30.0
                        break
        return out

    return logits_fn


def _bundle(tmp_path):
    return write_core_bundle(
        tmp_path,
        {
            "mc": ("multiple_choice", 0, MC_ITEMS),
            "schema": ("schema", 0, SCHEMA_ITEMS),
            "lm": ("language_modeling", 0, LM_ITEMS),
        },
        baselines={"mc": 25.0, "schema": 50.0, "lm": 0.0},
    )


def test_core_scoring_of_hand_built_items(tmp_path):
    tasks = {t.label: t for t in load_bundle(_bundle(tmp_path))}
    assert tasks["mc"].random_baseline == 0.25 and tasks["mc"].delimiter == " "
    known = []
    for i, item in enumerate(MC_ITEMS):  # right on three items, wrong on the last
        answer = item["gold"] if i < 3 else (item["gold"] + 1) % 4
        known.append(render("multiple_choice", item, " ", [])[answer])
    known += [render("schema", SCHEMA_ITEMS[0], " ", [])[0], render("schema", SCHEMA_ITEMS[1], " ", [])[1]]
    known += [render("language_modeling", item, " ", [])[1] for item in LM_ITEMS[:2]]
    known.append("The capital... " + LM_ITEMS[2]["context"] + " green")
    fn = oracle(known)
    results = {label: evaluate_task(t, Reader(TOK.encode, TOK.bos_id, 256, fn)) for label, t in tasks.items()}
    assert results["mc"].accuracy == 0.75 and results["mc"].centered == pytest.approx((0.75 - 0.25) / 0.75)
    assert results["schema"].accuracy == 0.5 and results["schema"].centered == pytest.approx(0.0)
    assert results["lm"].accuracy == pytest.approx(2 / 3) and results["lm"].centered == pytest.approx(2 / 3)
    core = lrt.evaluate.core.CoreResult("exact", list(results.values())).core
    assert core == pytest.approx(((0.75 - 0.25) / 0.75 + 0.0 + 2 / 3) / 3)


def test_language_modeling_needs_every_continuation_token():
    item = {"context": "abc", "continuation": "xyz"}
    fn = oracle(["abc xyQ"])  # right on x and y, wrong on z
    prompts = render("language_modeling", item, " ", [])
    assert score_item(Reader(TOK.encode, TOK.bos_id, 64, fn), "language_modeling", prompts).correct is False
    assert score_item(Reader(TOK.encode, TOK.bos_id, 64, oracle(["abc xyz"])), "language_modeling", prompts).correct


def test_an_empty_continuation_is_scored_on_the_delimiter():
    """nanochat errors on it; lrt predicts the delimiter, and with no delimiter there is nothing to miss."""
    item = {"context": "abc", "continuation": ""}
    read = lambda known, delimiter: score_item(  # noqa: E731
        Reader(TOK.encode, TOK.bos_id, 64, oracle([known])),
        "language_modeling",
        render("language_modeling", item, delimiter, []),
    )
    assert read("abc ", " ").correct and not read("abcd", " ").correct
    assert read("abcd", "").correct


def test_a_choice_that_is_a_prefix_of_another_is_scored_on_its_last_token():
    """nanochat's core_eval scores an empty region here (a NaN mean); lrt scores the shorter choice on
    its last token, which both prompts predict from the same context (README, evaluation)."""
    item = {"query": "The pet is a", "choices": ["cat", "cat food"], "gold": 0}
    prompts = render("multiple_choice", item, " ", [])
    seqs = [[TOK.bos_id] + TOK.encode(p) for p in prompts]
    short, long = len(seqs[0]), len(seqs[1])
    assert lrt.evaluate.core.answer_regions("multiple_choice", seqs) == [(short - 1, short), (short, long)]

    def read(known):
        return score_item(Reader(TOK.encode, TOK.bos_id, 64, oracle([known])), "multiple_choice", prompts, gold=0)

    nap = read("The pet is a cat nap")  # sure of "cat", not of " food": the short choice wins
    assert nap.correct and nap.scores[0] == pytest.approx(0.0) and nap.scores[1] > 1.0
    food = read("The pet is a cat food")  # sure of both: a tie, which goes to the first choice
    assert food.scores == pytest.approx([0.0, 0.0]) and food.correct


def test_fewshot_examples_exclude_the_item_and_tolerate_small_tasks(tmp_path):
    bundle = write_core_bundle(tmp_path, {"lm": ("language_modeling", 10, LM_ITEMS)})
    seen = []

    def spy(idx):
        seen.append(TOK.decode(idx[0].tolist()))
        return torch.zeros(idx.size(0), idx.size(1), TOK.vocab_size)

    result = evaluate_task(load_bundle(bundle)[0], Reader(TOK.encode, TOK.bos_id, 4096, spy))
    assert result.items == 3 and len(seen) == 3
    for prompt in seen:  # two shots (all the others), then the item: each context appears once
        assert sum(prompt.count(item["context"]) for item in LM_ITEMS) == 3
        assert prompt.count("\n\n") == 2


@pytest.mark.parametrize("memory", ["zero", "parallel:interleaved:2", "exact", "fixed-point"])
def test_core_runs_a_real_model_in_every_memory_mode(tmp_path, memory):
    model = random_model(tiny_config(vocab_size=257, sequence_len=64))
    result = lrt.evaluate_core(model, TOK, _bundle(tmp_path), memory=memory, progress=False)
    assert len(result.tasks) == 3 and -3 <= result.core <= 1 and result.memory == memory
    assert result.format().endswith(f"CORE = {result.core:.4f}")


def test_core_parallel_with_an_exact_schedule_matches_exact(tmp_path):
    model = random_model(tiny_config(vocab_size=257, sequence_len=64))
    bundle = _bundle(tmp_path)
    exact = lrt.evaluate_core(model, TOK, bundle, memory="exact", progress=False)
    parallel = lrt.evaluate_core(model, TOK, bundle, memory=lrt.Memory("parallel", lrt.Sequential()), progress=False)
    assert [t.accuracy for t in exact.tasks] == [t.accuracy for t in parallel.tasks]


def _point_task(root, label, uri):
    """Point task `label` of the bundle at `uri`, and leave a valid data file outside eval_data/:
    what a `..` or absolute dataset_uri reads (issue 25, 15)."""
    (root / "outside.jsonl").write_text((root / f"eval_data/sub/{label}.jsonl").read_text())
    yaml = root / "core.yaml"
    yaml.write_text(yaml.read_text().replace(f"sub/{label}.jsonl", uri))


def _link_task(root, label):
    """A data file that is a symbolic link to a file outside the bundle."""
    _point_task(root, label, f"sub/{label}.jsonl")
    data = root / f"eval_data/sub/{label}.jsonl"
    data.unlink()
    data.symlink_to(root / "outside.jsonl")


def _duplicate_first_task(root):
    """List the first task of core.yaml twice: it would count twice in CORE's mean."""
    yaml = root / "core.yaml"
    first = yaml.read_text().split("-\n")[1]
    yaml.write_text(yaml.read_text() + "-\n" + first)


@pytest.mark.parametrize(
    "breakage, error, match",
    [
        (lambda root: (root / "core.yaml").unlink(), FileNotFoundError, "has no core.yaml"),
        (lambda root: (root / "eval_data/sub/mc.jsonl").unlink(), FileNotFoundError, "mc.jsonl is missing"),
        (
            lambda root: (root / "core.yaml").write_text(
                (root / "core.yaml").read_text().replace("schema\n", "ranking\n")
            ),
            ValueError,
            "unknown icl_task_type 'ranking'",
        ),
        (
            lambda root: (root / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,25\n"),
            ValueError,
            "no random baseline",
        ),
        (lambda root: _point_task(root, "lm", "../outside.jsonl"), ValueError, "task 'lm': .* outside"),
        (lambda root: _point_task(root, "lm", "sub/../../outside.jsonl"), ValueError, "task 'lm': .* outside"),
        (lambda root: _point_task(root, "lm", str(root / "outside.jsonl")), ValueError, "task 'lm': .* outside"),
        (lambda root: _link_task(root, "lm"), ValueError, "task 'lm': .* outside"),
        (_duplicate_first_task, ValueError, "task 'mc' is listed twice"),
    ],
    ids=[
        "no-yaml",
        "no-data",
        "unknown-type",
        "no-baseline",
        "uri-up",
        "uri-up-through-sub",
        "uri-absolute",
        "uri-symlink-out",
        "duplicate-task",
    ],
)
def test_bad_bundles(tmp_path, breakage, error, match):
    root = _bundle(tmp_path)
    breakage(root)
    with pytest.raises(error, match=match):
        load_bundle(root)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    root = _bundle(tmp_path)
    path = root / "eval_data/sub/lm.jsonl"
    path.write_text(path.read_text() + '{"context": "x", \n')
    task = [t for t in load_bundle(root) if t.label == "lm"][0]
    with pytest.raises(ValueError, match=r"lm\.jsonl, line 4: malformed JSON"):
        evaluate_task(task, Reader(TOK.encode, TOK.bos_id, 64, lambda idx: None))
    path.write_text('{"context": "x"}\n')
    with pytest.raises(ValueError, match=r"line 1: a language_modeling item needs continuation"):
        evaluate_task(task, Reader(TOK.encode, TOK.bos_id, 64, lambda idx: None))
    path.write_bytes(b'\xff{"context": "x"}\n')  # not UTF-8: a bare UnicodeDecodeError named no file
    with pytest.raises(ValueError, match=r"lm\.jsonl is not UTF-8 text"):
        evaluate_task(task, Reader(TOK.encode, TOK.bos_id, 64, lambda idx: None))
