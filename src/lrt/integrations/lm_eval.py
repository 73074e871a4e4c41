"""LRT as an lm-evaluation-harness model (`pip install 'lrt[eval]'`).

Importing this module registers the model `lrt` with lm-eval; `lrt eval harness RUN --tasks ...`
imports it and calls `lm_eval.simple_evaluate` (lm-eval has no plugin discovery for models). From
Python:

    import lrt.integrations.lm_eval  # registers "lrt"
    lm_eval.simple_evaluate(model="lrt", model_args="pretrained=runs/demo/lrt,memory=exact", tasks=[...])

`pretrained` is an lrt run folder, a checkpoint folder, or an exported Hugging Face folder. Every
request is read with `memory` (exact: token by token, what generation gets; `parallel`, the run's
training schedule, or `parallel:<schedule>`; `zero`), each row from position 0 with <|bos|> first,
as lrt reads a document.
"""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval.models  # noqa: F401 - lm-eval's own models, registered before ours (an empty registry would load them later)
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..decoding import generate, right_padded
from ..memory import Memory, read
from ..train.checkpoint import load_run


def load(pretrained: str | Path, device: str = "auto"):
    """(model, tokenizer, memory schedule) of an lrt run or checkpoint folder, or of an export (no
    schedule: a bare `parallel` memory then needs one named)."""
    trained = load_run(pretrained, device)
    return trained.model, trained.tokenizer, trained.schedule


@register_model("lrt")
class LRTLM(LM):
    def __init__(
        self,
        pretrained: str,
        memory: str = "exact",
        batch_size: int | str = 8,
        device: str = "auto",
        max_gen_toks: int = 256,
        **kwargs,
    ):
        super().__init__()
        self.model, self.tokenizer, schedule = load(pretrained, device)
        self.model.eval()
        self.memory = Memory.parse(memory, schedule=schedule)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" is not probed: 8
        self.max_gen_toks = int(max_gen_toks)
        self.window = self.model.config.sequence_len
        self.bos = self.tokenizer.bos_id

    @property
    def tokenizer_name(self) -> str:
        return "lrt"

    def _scores(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """For each (tokens, n): the log-probability of the last n tokens given the ones before
        them, and whether greedy decoding would produce them; rows read with self.memory."""
        out = []
        device = self.model.wte.weight.device
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            inputs = [tokens[:-1] for tokens, _ in batch]
            with torch.no_grad():
                logprobs = F.log_softmax(read(self.model, right_padded(inputs, device), self.memory).logits.float(), -1)
            for row, (tokens, n) in enumerate(batch):
                positions = torch.arange(len(tokens) - 1 - n, len(tokens) - 1, device=device)
                targets = torch.tensor(tokens[-n:], device=device)
                picked = logprobs[row, positions]
                out.append(
                    (picked.gather(1, targets[:, None]).sum().item(), bool((picked.argmax(-1) == targets).all()))
                )
        return out

    def _row(self, context_tokens: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """<|bos|> + context + continuation, the oldest context dropped to fit the window."""
        tokens = [self.bos] + context_tokens + continuation
        return tokens[-(self.window + 1) :], len(continuation)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        rows = [self._row(*self.split(context, continuation)) for context, continuation in (r.args for r in requests)]
        scored = iter(self._scores([row for row in rows if row[1]]))
        return [next(scored) if n else (0.0, True) for _, n in rows]  # an empty continuation: log 1, and greedy

    def split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens as lm-eval's built-in models split them: the context's
        trailing spaces move to the continuation, and the continuation is what encoding the whole
        adds to the context's tokens."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        context_tokens = self.tokenizer.encode(context)
        return context_tokens, whole[len(context_tokens) :]

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            # windows one shorter than the model's, for the <|bos|> that starts each one read after the first
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    self.tokenizer.encode(text), prefix_token=self.bos, max_seq_len=self.window - 1, context_len=1
                )
            ]
            # each window is read as a document of its own: <|bos|> starts it (the first one's is the prefix)
            rows = [
                (context + predicted, len(predicted))
                if context and context[0] == self.bos
                else ([self.bos] + context + predicted, len(predicted))
                for context, predicted in windows
            ]
            out.append(sum(score for score, _ in self._scores(rows)))
        return out

    def generate_until(self, requests) -> list[str]:
        """Requests with the same length and temperature are generated together, self.batch_size
        at a time, each row at its own positions and stopping on its own."""
        jobs = []  # (index, prompt, until, max tokens, temperature)
        for index, (context, kwargs) in enumerate(r.args for r in requests):
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            n = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            prompt = ([self.bos] + self.tokenizer.encode(context))[-max(1, self.window - n) :]
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            jobs.append((index, prompt, until, n, temperature))
        out = [""] * len(jobs)
        groups: dict[tuple[int, float], list] = {}
        for job in jobs:
            groups.setdefault(job[3:], []).append(job)
        for (n, temperature), group in groups.items():
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                generated = generate(
                    self.model,
                    [prompt for _, prompt, *_ in batch],
                    n,
                    memory=self.memory,
                    temperature=temperature,
                    stop_token=self.bos,
                ).tokens
                for (index, _, until, *_), tokens in zip(batch, generated):
                    text = self.tokenizer.decode(tokens)
                    cuts = [text.find(s) for s in until if s and s in text]
                    out[index] = text[: min(cuts)] if cuts else text
        return out


def evaluate(
    pretrained: str,
    *,
    tasks: list[str],
    memory: str = "exact",
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    device: str = "auto",
    log_samples: bool = False,
) -> dict:
    """lm_eval.simple_evaluate with the lrt model (the route of `lrt eval harness`)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s): {', '.join(unknown)} (a name lm-eval knows, one from "
            "--include-path, or a task YAML)"
        )
    model = LRTLM(pretrained, memory=memory, batch_size=batch_size, device=device)
    return simple_evaluate(
        model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=log_samples
    )


def table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


def summary(results: dict) -> dict:
    """The JSON-able numbers of an evaluation."""
    return json.loads(
        json.dumps({k: results[k] for k in ("results", "versions", "n-shot") if k in results}, default=str)
    )
