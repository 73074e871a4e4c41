"""The OpenAI completions API as `lrt serve` speaks it, without the web server: a request body
checked into a `CompletionRequest` (any fault is an `ApiError` that becomes an HTTP status and an
OpenAI-style error object), the response and stream chunk objects, and `StopText`, which turns
a choice's tokens into text as they come, holding back what may still become a stop string or
a UTF-8 character.

Supported: prompt (a string or a list of strings), max_tokens, temperature, top_p, top_k, stop,
seed, n, stream, stream_options.include_usage, user; and two fields of our own: `memory` (how the
prompt is read: exact, parallel[:SCHEDULE], fixed-point[:TOL] or zero) and `ignore_eos` (vLLM's
name: keep going past the end-of-text token, for benchmarks). The fields OpenAI defines that lrt
cannot honour (logprobs, echo, best_of, suffix, penalties, logit_bias) are refused unless they
hold their no-op value; any other field is refused by name.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field

from ..decoding import MIN_TEMPERATURE

MAX_BODY_BYTES = 1 << 20
MAX_STOPS = 4
MAX_STOP_CHARS = 256
MAX_PROMPTS = 16


class ApiError(Exception):
    """A request the server refuses: its HTTP status and the OpenAI error object."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code
        self.kind = "invalid_request_error" if status < 500 else "server_error"

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the model's window bounds every prompt as well."""

    max_tokens: int  # the most tokens one choice may generate
    max_n: int = 8  # choices per prompt
    max_prompts: int = MAX_PROMPTS


@dataclass
class CompletionRequest:
    prompts: list[str]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    memory: str = "exact"
    ignore_eos: bool = False

    def choice_seed(self, index: int) -> int:
        """The seed of choice `index`: seed + index when a seed is given, else a fresh random one."""
        return secrets.randbits(62) if self.seed is None else self.seed + index


def parse_body(body: bytes) -> dict:
    """The JSON object of a request body (no NaN or Infinity: they are not JSON)."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(f"the request body is {len(body):,} bytes; the limit is {MAX_BODY_BYTES:,}", status=413)

    def refuse(constant):
        raise ValueError(f"{constant} is not a JSON number")

    try:
        value = json.loads(body, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ApiError("the request body must be a JSON object")
    return value


def _int(body, key, low, high, default):
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(f"{key} must be an integer from {low} to {high}, got {value!r}", param=key)
    return value


def _number(body, key, low, high, default, *, open_low=False):
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value if open_low else low <= value) or value > high:
        bound = f"in ({low}, {high}]" if open_low else f"from {low} to {high}"
        raise ApiError(f"{key} must be a number {bound}, got {value!r}", param=key)
    return float(value)


def _bool(body, key, default=False):
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(f"{key} must be true or false, got {value!r}", param=key)
    return value


# fields OpenAI defines that lrt serves only at their no-op value
NO_OP = {
    "logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None,),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
}
KNOWN = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "user",
    "memory",
    "ignore_eos",
    *NO_OP,
}


def parse_completion(body: dict, *, model: str, limits: Limits) -> CompletionRequest:
    """A completions request checked against the API and the limits (ApiError names the field)."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}", param=unknown[0])
    for key, allowed in NO_OP.items():
        if key in body and not any(body[key] == a and type(body[key]) is type(a) for a in allowed):
            raise ApiError(f"{key} is not supported by lrt serve (got {body[key]!r})", param=key)
    name = body.get("model")
    if not isinstance(name, str):
        raise ApiError("model must be given, as a string: the name GET /v1/models lists", param="model")
    if name != model:
        raise ApiError(f"the model {name!r} does not exist; this server has {model!r}", param="model", status=404)
    prompt = body.get("prompt", None)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError("prompt must be a string or a non-empty list of strings", param="prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(f"at most {limits.max_prompts} prompts per request, got {len(prompts)}", param="prompt")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(f"a stop string may have at most {MAX_STOP_CHARS} characters", param="stop")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError("stream_options takes only include_usage", param="stream_options")
    if not isinstance(body.get("user", ""), str):
        raise ApiError("user must be a string", param="user")
    memory = body.get("memory", "exact")
    if not isinstance(memory, str):
        raise ApiError(f"memory must be a string such as 'exact', got {memory!r}", param="memory")
    top_k = body.get("top_k")
    temperature = _number(body, "temperature", 0, 2, 1.0)
    if 0 < temperature < MIN_TEMPERATURE:  # logits / a temperature this small overflow
        raise ApiError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}", param="temperature")
    return CompletionRequest(
        prompts=prompts,
        max_tokens=_int(body, "max_tokens", 1, limits.max_tokens, 16),
        temperature=temperature,
        top_p=_number(body, "top_p", 0, 1, None, open_low=True),
        top_k=None if top_k in (None, -1) else _int(body, "top_k", 1, 1 << 30, None),
        stop=stops,
        seed=_int(body, "seed", 0, (1 << 62) - 1, None),
        n=_int(body, "n", 1, limits.max_n, 1),
        stream=_bool(body, "stream"),
        include_usage=_bool(options or {}, "include_usage"),
        memory=memory,
        ignore_eos=_bool(body, "ignore_eos"),
    )


# responses ----------------------------------------------------------------------------------------


def finish_reason(reason: str) -> str:
    """The API's finish reason for the batcher's (the window is a length limit to a client)."""
    return {"window": "length"}.get(reason, reason)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_object(cid: str, model: str, choices: list[dict], **extra) -> dict:
    """A completion, or one chunk of a stream (the same object in the API)."""
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def choice(index: int, text: str, reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def new_id() -> str:
    return f"cmpl-{secrets.token_hex(12)}"


# text as tokens arrive ----------------------------------------------------------------------------


class StopText:
    """A choice's text as its tokens arrive: `add` returns the new text that is safe to send (not
    the end of a partial UTF-8 character, not what may still become a stop string) and whether a
    stop string ended it (the text stops before it); `rest` is what was held back, at the end."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already returned

    def add(self, token: int) -> tuple[str, bool]:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        # a stop string can only start where the text was not yet sent
        found = [i for i in (text.find(s, self.sent) for s in self.stops) if i >= 0]
        if found:
            return self._take(text, min(found)), True
        end = len(text.rstrip("\ufffd"))
        held = [
            k
            for s in self.stops
            for k in range(1, min(len(s) - 1, end - self.sent) + 1)
            if text[end - k : end] == s[:k]
        ]
        return self._take(text, end - max(held, default=0)), False  # held: an ending that may start a stop string

    def rest(self) -> str:
        return self._take(self.tokenizer.decode(self.tokens), None)

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        new, self.sent = text[self.sent : end], max(self.sent, end)
        return new
