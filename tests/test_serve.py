"""`lrt serve` (pip install 'lrt[serve]'): the OpenAI completions API over HTTP, batched decoding
across requests, bad input as OpenAI-style 400s, and the playground page in a real browser."""

import http.client
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from helpers import tiny_train_args  # noqa: E402
from lrt.batching import Batcher  # noqa: E402
from lrt.cli import main  # noqa: E402
from lrt.integrations.serve import BackgroundServer, served_run  # noqa: E402
from lrt.train.checkpoint import load_run  # noqa: E402

PROMPTS = ["To be, or", "HAMLET.", "What light", "O Romeo", "My lord", "Enter", "Now is the", "Friends, "]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained for a few steps (a 64-token window), and the server on it."""
    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(tiny_train_args(out, steps=8)) == 0
    return out


@pytest.fixture(scope="module")
def server(run):
    served = served_run(load_run(run, "cpu"), max_batch=32)
    with BackgroundServer(served) as url:
        yield served, url


def post(url, body, raw: bytes | None = None):
    """(status, JSON) of a POST to /v1/completions."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def generate_cli(run, prompt, max_tokens, tmp_path):
    out = tmp_path / f"gen{abs(hash(prompt))}.json"
    args = ["generate", str(run), "--prompt", prompt, "--temperature", "0", "--max-tokens", str(max_tokens)]
    assert main(args + ["--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    return result["completion"], {"stop": "stop", "max_tokens": "length", "window": "length"}[result["stopped"]]


def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def stream_text(url, name, prompt, **options):
    """A streamed completion read with the openai client: (text, finish_reason). lrt's own fields
    (ignore_eos, memory) travel as the client's extra_body."""
    extra = {k: options.pop(k) for k in ("ignore_eos", "memory") if k in options}
    text, reason = "", None
    for chunk in client(url).completions.create(model=name, prompt=prompt, stream=True, extra_body=extra, **options):
        for c in chunk.choices:
            text += c.text
            reason = c.finish_reason or reason
    return text, reason


def test_the_openai_client_gets_a_completion_and_a_stream(server):
    served, url = server
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["run"] == [served.name]
    done = api.completions.create(
        model="run", prompt="To be", max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    c = done.choices[0]
    assert c.finish_reason == "length" and c.text and done.usage.completion_tokens == 12
    assert done.usage.prompt_tokens == 1 + len("To be") and done.usage.total_tokens == done.usage.prompt_tokens + 12
    assert stream_text(url, "run", "To be", max_tokens=12, temperature=0, ignore_eos=True) == (c.text, "length")
    usage_chunks = [
        chunk.usage
        for chunk in api.completions.create(
            model="run", prompt="To be", max_tokens=5, stream=True, stream_options={"include_usage": True}, seed=1
        )
        if chunk.usage
    ]
    assert len(usage_chunks) == 1 and usage_chunks[0].prompt_tokens == 6


def test_greedy_text_over_http_equals_lrt_generate_alone_and_in_a_batch_of_eight(server, run, tmp_path):
    served, url = server
    expected = {p: generate_cli(run, p, 40, tmp_path) for p in PROMPTS}
    for p in PROMPTS[:2]:  # alone
        status, body = post(url, {"model": "run", "prompt": p, "max_tokens": 40, "temperature": 0})
        assert status == 200 and (body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == expected[p]
    served.batcher.states.clear()  # so that a state of 8 rows below proves eight decoded at once
    got = {}
    threads = [
        threading.Thread(
            target=lambda p=p: got.__setitem__(p, stream_text(url, "run", p, max_tokens=40, temperature=0))
        )
        for p in PROMPTS
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected
    assert 8 in served.batcher.states


def test_thirty_two_concurrent_streams_all_complete_as_they_do_alone(server):
    """The load test: 32 streams at once on loopback, none lost, each greedy text its single result."""
    _, url = server
    prompts = [f"{PROMPTS[i % 8]} {i}" for i in range(32)]
    options = dict(max_tokens=24, temperature=0)
    single = {p: stream_text(url, "run", p, **options) for p in prompts[:4]}
    got, errors = {}, []

    def one(p):
        try:
            got[p] = stream_text(url, "run", p, **options)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and len(got) == 32
    assert all(got[p] == single[p] for p in single)
    assert all(got[p] == stream_text(url, "run", p, **options) for p in prompts[4:12])


def test_sampling_choices_seeds_and_stop_strings(server):
    _, url = server
    body = {"model": "run", "prompt": ["To be", "HAMLET."], "max_tokens": 10, "temperature": 0.9, "seed": 7, "n": 2}
    status, first = post(url, body)
    assert status == 200 and [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert post(url, body)[1]["choices"] == first["choices"]  # a seed repeats
    assert first["choices"][0]["text"] != first["choices"][1]["text"]  # choices sample apart
    assert first["usage"]["prompt_tokens"] == (1 + 5) + (1 + 7)
    greedy = post(url, {"model": "run", "prompt": "To be", "max_tokens": 30, "temperature": 0, "ignore_eos": True})
    text = greedy[1]["choices"][0]["text"]
    stop = text[5:7]
    cut = text[: text.index(stop)]
    for stream in (False, True):
        options = dict(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop, "\x00never"])
        if stream:
            assert stream_text(url, "run", "To be", **options) == (cut, "stop")
        else:
            c = post(url, {"model": "run", "prompt": "To be", **options})[1]["choices"][0]
            assert (c["text"], c["finish_reason"]) == (cut, "stop")


BAD = {
    "not JSON": (b"{nope", 400, None),
    "a list": (b"[1, 2]", 400, None),
    "NaN": (b'{"model": "run", "prompt": "a", "temperature": NaN}', 400, None),
    "no model": ({"prompt": "a"}, 400, "model"),
    "unknown model": ({"model": "gpt-9", "prompt": "a"}, 404, "model"),
    "no prompt": ({"model": "run"}, 400, "prompt"),
    "prompt a number": ({"model": "run", "prompt": 5}, 400, "prompt"),
    "prompt over the window": ({"model": "run", "prompt": "x" * 64}, 400, "prompt"),
    "max_tokens 0": ({"model": "run", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens -1": ({"model": "run", "prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    "max_tokens absurd": ({"model": "run", "prompt": "a", "max_tokens": 10**12}, 400, "max_tokens"),
    "max_tokens a string": ({"model": "run", "prompt": "a", "max_tokens": "5"}, 400, "max_tokens"),
    "max_tokens true": ({"model": "run", "prompt": "a", "max_tokens": True}, 400, "max_tokens"),
    "temperature -1": ({"model": "run", "prompt": "a", "temperature": -1}, 400, "temperature"),
    "temperature 1e-45": ({"model": "run", "prompt": "a", "temperature": 1e-45}, 400, "temperature"),
    "temperature 1e308": ({"model": "run", "prompt": "a", "temperature": 1e308}, 400, "temperature"),
    "top_p 0": ({"model": "run", "prompt": "a", "top_p": 0}, 400, "top_p"),
    "top_p 2": ({"model": "run", "prompt": "a", "top_p": 2}, 400, "top_p"),
    "top_k 0": ({"model": "run", "prompt": "a", "top_k": 0}, 400, "top_k"),
    "top_k a float": ({"model": "run", "prompt": "a", "top_k": 2.5}, 400, "top_k"),
    "n 0": ({"model": "run", "prompt": "a", "n": 0}, 400, "n"),
    "n 1000": ({"model": "run", "prompt": "a", "n": 1000}, 400, "n"),
    "seed -1": ({"model": "run", "prompt": "a", "seed": -1}, 400, "seed"),
    "stop a number": ({"model": "run", "prompt": "a", "stop": 5}, 400, "stop"),
    "stop empty": ({"model": "run", "prompt": "a", "stop": [""]}, 400, "stop"),
    "five stops": ({"model": "run", "prompt": "a", "stop": list("abcde")}, 400, "stop"),
    "stream a string": ({"model": "run", "prompt": "a", "stream": "yes"}, 400, "stream"),
    "memory unknown": ({"model": "run", "prompt": "a", "memory": "bogus"}, 400, "memory"),
    "memory a number": ({"model": "run", "prompt": "a", "memory": 3}, 400, "memory"),
    "unknown field": ({"model": "run", "prompt": "a", "flux_capacitor": 1}, 400, "flux_capacitor"),
    "logprobs": ({"model": "run", "prompt": "a", "logprobs": 5}, 400, "logprobs"),
    "echo": ({"model": "run", "prompt": "a", "echo": True}, 400, "echo"),
    "a file path as prompt list": ({"model": "run", "prompt": [["/etc/passwd"]]}, 400, "prompt"),
    "too large": (b'{"prompt": "' + b"a" * (1 << 20) + b'"}', 413, None),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_requests_get_an_openai_style_error_never_a_500(server, name):
    _, url = server
    body, status, param = BAD[name]
    got, reply = post(url, None if isinstance(body, bytes) else body, raw=body if isinstance(body, bytes) else None)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and "Traceback" not in error["message"]


def test_other_routes_and_methods_are_json_errors_and_the_page_is_served(server):
    _, url = server
    for path, method, status in [("/v1/nope", "GET", 404), ("/v1/completions", "GET", 405)]:
        req = urllib.request.Request(url + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == status and "error" in json.loads(e.value.read())
    with urllib.request.urlopen(url + "/", timeout=10) as r:
        assert "lrt playground" in r.read().decode()
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_row(server, monkeypatch, stream):
    served, url = server
    batcher = served.batcher
    ends = []
    finish = Batcher._finish
    monkeypatch.setattr(
        Batcher, "_finish", lambda self, job, reason: (ends.append(reason), finish(self, job, reason))[1]
    )
    slow_step = batcher.decoder.step

    def step(*args, **kwargs):  # a slow model: the stream is surely still running when the client leaves
        time.sleep(0.05)
        return slow_step(*args, **kwargs)

    monkeypatch.setattr(batcher.decoder, "step", step)
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    body = {"model": "run", "prompt": "To be", "max_tokens": 60, "stream": stream, "ignore_eos": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    if stream:
        response = conn.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
    else:  # no answer until the end: leave while it decodes
        while not batcher.load["running"]:
            time.sleep(0.02)
    conn.sock.close()  # the client goes away
    conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (batcher.load["running"] or not ends):
        time.sleep(0.05)
    assert ends == ["cancelled"] and batcher.load["running"] == 0


def test_serve_refuses_a_port_in_use_in_one_line(run, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err


def _browser():
    """A headless Chromium driven by selenium, or the reason there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install 'lrt[test]')"
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        return None, "no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        options.add_argument(flag)
    try:
        return webdriver.Chrome(options=options, service=Service(driver)), None
    except Exception as e:  # noqa: BLE001 - any failure to start is a reason to skip
        return None, f"Chromium did not start: {type(e).__name__}: {str(e).splitlines()[0]}"


def test_the_playground_streams_text_in_a_real_browser(server, tmp_path):
    """Type a prompt, press Generate, see streamed text and tokens per second. LRT_SCREENSHOT=PATH
    saves the screenshot docs/serve_playground.png was taken with."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = server
    browser, reason = _browser()
    if browser is None:
        pytest.skip(reason)
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 20).until(lambda b: "window" in b.find_element(By.ID, "model").text)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("To be, or not to be")
        browser.find_element(By.ID, "seed").send_keys("3")
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "stats").get_attribute("data-done") == "1")
        assert browser.find_element(By.ID, "error").text == ""
        assert len(browser.find_element(By.ID, "completion").text) > 0
        assert "tokens/s" in browser.find_element(By.ID, "stats").text
        browser.save_screenshot(os.environ.get("LRT_SCREENSHOT") or str(tmp_path / "playground.png"))
    finally:
        browser.quit()
    assert Path(os.environ.get("LRT_SCREENSHOT") or tmp_path / "playground.png").stat().st_size > 10_000


def test_an_exported_folder_serves_what_its_run_serves(server, run, tmp_path):
    pytest.importorskip("transformers")
    _, url = server
    assert main(["export", "hf", str(run), str(tmp_path / "export")]) == 0
    body = {"prompt": "To be", "max_tokens": 12, "temperature": 0}
    with BackgroundServer(served_run(load_run(tmp_path / "export", "cpu"))) as export_url:
        status, got = post(export_url, {"model": "export", **body})
        assert status == 200 and got["model"] == "export"
        assert post(export_url, {"model": "export", **body, "memory": "parallel"})[0] == 400  # no training schedule
    assert got["choices"] == post(url, {"model": "run", **body})[1]["choices"]
