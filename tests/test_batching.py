"""Continuous batching (lrt.batching): requests that join and leave a running batch decode exactly
what each decodes alone with Decoder.generate."""

import threading

import pytest
import torch

from helpers import random_model, tiny_config
from lrt.batching import Batcher, Job, bucket
from lrt.decoding import Decoder
from lrt.memory import Memory

CONFIGS = {
    "lrt": tiny_config(sequence_len=24),
    "lrt layerwise": tiny_config(sequence_len=24, projection="layerwise"),
    "baseline": tiny_config(sequence_len=24, injection="none"),
    "looped": tiny_config(sequence_len=24, injection="none", loops=2),
    "ponder": tiny_config(sequence_len=24, injection="none", latent_thoughts=1),
}


def collect(job_kwargs):
    """A job whose deliveries are recorded: (tokens, [finish reasons])."""
    tokens, ends = [], []

    def deliver(token, finish):
        assert not ends, "nothing is delivered after the end"
        (tokens.append(token) if finish is None else ends.append(finish))

    return Job(deliver=deliver, **job_kwargs), tokens, ends


def alone(model, job_kwargs):
    kw = dict(job_kwargs)
    prompt, n = kw.pop("prompt"), kw.pop("max_new_tokens")
    result = Decoder(model).generate([prompt], n, **kw)
    reason = {"max_tokens": "length"}.get(result.stopped[0], result.stopped[0])
    return result.tokens[0], reason


def drain(batcher, limit=500):
    for _ in range(limit):
        if not batcher.rows and not batcher.waiting:
            return
        batcher.tick()
    raise AssertionError("the batcher did not finish")


def requests(config, count, seed=0):
    """Prompts of different lengths, each read with another memory, greedy and sampled."""
    g = torch.Generator().manual_seed(seed)
    memories = ["exact", "parallel:interleaved:2", "zero", "fixed-point"]
    out = []
    for i in range(count):
        length = 1 + int(torch.randint(0, 9, (1,), generator=g))
        out.append(
            dict(
                prompt=torch.randint(1, config.vocab_size, (length,), generator=g).tolist(),
                max_new_tokens=3 + i % 5 * 3,
                memory=Memory.parse(memories[i % 4] if config.injection != "none" else "exact"),
                temperature=0.0 if i % 2 == 0 else 0.9,
                top_k=None if i % 3 else 20,
                seed=100 + i,
                stop_token=0,
            )
        )
    return out


@pytest.mark.parametrize(
    "name, static", [(name, False) for name in CONFIGS] + [("lrt", True), ("ponder", True)], ids=str
)
@pytest.mark.parametrize("arrival", ["one per tick", "together"])
def test_jobs_joining_a_running_batch_decode_what_they_decode_alone(name, static, arrival):
    """Eight requests, joining one per tick while the others decode (rows leave as they finish, the
    batch moves between states of 1, 2, 4 and 8 rows) or all at once (their prompts read as one
    batch per memory mode): each gets the tokens and the end that Decoder.generate gives it alone,
    greedy and sampled with its seed. Static states (a compiling engine's) too."""
    model = random_model(CONFIGS[name], torch.float64)
    batcher = Batcher(Decoder(model), max_batch=8, static=static)
    jobs = requests(model.config, 8)
    got = []
    for kwargs in jobs:
        job, tokens, ends = collect(kwargs)
        batcher.submit(job)
        got.append((tokens, ends))
        if arrival == "one per tick":
            batcher.tick()
    drain(batcher)
    for kwargs, (tokens, ends) in zip(jobs, got):
        expected_tokens, expected_end = alone(model, kwargs)
        assert (tokens, ends) == (expected_tokens, [expected_end]), kwargs
    assert all(state.static == static for state in batcher.states.values())
    assert set(batcher.states) <= {1, 2, 4, 8} and len(batcher.states) >= (3 if arrival == "one per tick" else 2)
    assert not batcher.rows and batcher.state is None


def test_states_are_kept_per_batch_size_and_reused():
    """A second wave of requests decodes in the very tensors the first used (a compiled step and its
    CUDA graphs see the same addresses)."""
    model = random_model(CONFIGS["lrt"])
    batcher = Batcher(Decoder(model), max_batch=4, static=True)

    def wave():
        for kwargs in requests(model.config, 4, seed=5):
            batcher.submit(collect(kwargs)[0])
        drain(batcher)
        return {size: [t.data_ptr() for t in (s.pos, s.memory, *s.cache.k)] for size, s in batcher.states.items()}

    first = wave()
    assert wave() == first and 4 in first


def test_more_requests_than_rows_wait_their_turn():
    model = random_model(CONFIGS["baseline"])
    batcher = Batcher(Decoder(model), max_batch=2)
    jobs = [collect(dict(prompt=[1, 2], max_new_tokens=4, temperature=0.0)) for _ in range(5)]
    for job, _, _ in jobs:
        batcher.submit(job)
    batcher.tick()
    assert batcher.load == {"running": 2, "waiting": 3, "max_batch": 2}
    drain(batcher)
    assert all(ends == ["length"] and len(tokens) == 4 for _, tokens, ends in jobs)
    assert len({tuple(tokens) for _, tokens, _ in jobs}) == 1  # the same prompt, greedy


def test_a_cancelled_job_leaves_at_the_next_tick_and_hears_nothing_more():
    model = random_model(CONFIGS["lrt"])
    batcher = Batcher(Decoder(model), max_batch=4)
    (a, a_tokens, a_ends), (b, b_tokens, b_ends) = (
        collect(dict(prompt=[3, 4, 5], max_new_tokens=15, temperature=0.0)) for _ in range(2)
    )
    batcher.submit(a)
    batcher.submit(b)
    while len(a_tokens) < 2:
        batcher.tick()
    assert batcher.load["running"] == 2
    batcher.cancel(a)
    batcher.tick()
    assert batcher.load["running"] == 1 and a_ends == ["cancelled"] and len(a_tokens) == 2
    drain(batcher)
    assert b_ends == ["length"] and len(b_tokens) == 15 and a_ends == ["cancelled"]
    waiting, _, w_ends = collect(dict(prompt=[1], max_new_tokens=3))
    batcher.submit(waiting)
    batcher.cancel(waiting)  # before it was ever admitted
    batcher.tick()
    assert w_ends == ["cancelled"] and batcher.load["running"] == 0


def test_a_prompt_read_in_the_batch_does_not_stall_the_rows_that_decode():
    """With exact memory a new prompt is read one token a step beside the decoding rows: each step
    still gives every decoding row its token, and the newcomer's first token comes after its prompt."""
    model = random_model(CONFIGS["lrt"])
    batcher = Batcher(Decoder(model))
    a, a_tokens, _ = collect(dict(prompt=[3, 4], max_new_tokens=20, temperature=0.0))
    batcher.submit(a)
    while not a_tokens:
        batcher.tick()
    b, b_tokens, _ = collect(dict(prompt=list(range(1, 11)), max_new_tokens=5, temperature=0.0))
    batcher.submit(b)
    for step in range(10):
        before = len(a_tokens)
        batcher.tick()
        assert len(a_tokens) == before + 1 and len(b_tokens) == (1 if step == 9 else 0)


@pytest.mark.parametrize("static", [False, True])
def test_a_request_stops_at_the_window_and_its_row_is_left_in_range(static):
    """A prompt of the whole window ends after one token; the row it leaves, at the cache's end,
    idles at position 0 while a neighbour decodes on."""
    model = random_model(CONFIGS["ponder"])
    batcher = Batcher(Decoder(model), static=static)
    jobs = [
        collect(dict(prompt=list(range(1, 25)), max_new_tokens=50, temperature=0.0)),
        collect(dict(prompt=[1, 2], max_new_tokens=10, temperature=0.0)),
        collect(
            dict(
                prompt=list(range(1, 21)), max_new_tokens=50, temperature=0.0, memory=Memory.parse("parallel:jacobi:2")
            )
        ),
    ]
    for job, _, _ in jobs:
        batcher.submit(job)
    drain(batcher)
    assert [(len(tokens), ends) for _, tokens, ends in jobs] == [(1, ["window"]), (10, ["length"]), (4, ["window"])]


def test_bad_jobs_are_refused_at_submit_and_a_failed_prompt_ends_only_its_job():
    model = random_model(CONFIGS["lrt"])
    batcher = Batcher(Decoder(model))
    for kwargs, match in [
        (dict(prompt=[], max_new_tokens=3), "empty"),
        (dict(prompt=[1] * 25, max_new_tokens=3), "window of 24"),
        (dict(prompt=[1], max_new_tokens=0), "max_new_tokens"),
        (dict(prompt=[1], max_new_tokens=3, temperature=float("nan")), "temperature"),
        (dict(prompt=[999], max_new_tokens=3), "from 0 to 60"),
    ]:
        with pytest.raises(ValueError, match=match):
            batcher.submit(collect(kwargs)[0])
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(Decoder(model), max_batch=0)
    read = batcher.decoder.prefill

    def prefill(prompts, max_len, memory):
        if memory.mode == "zero":
            raise RuntimeError("out of memory")
        return read(prompts, max_len, memory=memory)

    batcher.decoder.prefill = prefill
    bad, _, bad_ends = collect(dict(prompt=[3], max_new_tokens=3, memory=Memory.parse("zero")))
    good, good_tokens, good_ends = collect(dict(prompt=[1, 2], max_new_tokens=3))
    batcher.submit(bad)
    batcher.submit(good)
    drain(batcher)
    assert bad_ends[0].startswith("error: ") and good_ends == ["length"] and len(good_tokens) == 3


def test_the_batcher_thread_serves_concurrent_submitters():
    model = random_model(CONFIGS["lrt"])
    batcher = Batcher(Decoder(model), max_batch=8)
    stop = threading.Event()
    thread = threading.Thread(target=batcher.run, args=(stop,), daemon=True)
    thread.start()
    jobs = requests(model.config, 12, seed=3)
    done = [threading.Event() for _ in jobs]
    got = []
    for kwargs, event in zip(jobs, done):
        tokens, ends = [], []

        def deliver(token, finish, tokens=tokens, ends=ends, event=event):
            (tokens.append(token) if finish is None else (ends.append(finish), event.set()))

        got.append((tokens, ends))
        batcher.submit(Job(deliver=deliver, **kwargs))
    assert all(event.wait(60) for event in done)
    stop.set()
    thread.join(5)
    for kwargs, (tokens, ends) in zip(jobs, got):
        assert (tokens, ends) == (lambda t, e: (t, [e]))(*alone(model, kwargs))


def test_bucket_sizes():
    assert [bucket(n, 32) for n in (1, 2, 3, 5, 8, 9, 32)] == [1, 2, 4, 8, 8, 16, 32]
    assert bucket(7, 6) == 6
