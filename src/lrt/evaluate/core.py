"""CORE (the DCLM few-shot suite as nanochat runs it), scored with a chosen memory mode.

A bundle directory holds `core.yaml` (`icl_tasks`: label, icl_task_type, dataset_uri,
num_fewshot, continuation_delimiter), `eval_meta_data.csv` (each task's random baseline in
percent) and `eval_data/<dataset_uri>` jsonl files. Three kinds of task:
- multiple_choice {query, choices, gold}: one prompt per choice; the choice with the lowest mean
  loss over its answer tokens (after the prefix all prompts share) is the prediction;
- schema {context_options, continuation, gold}: one prompt per context; lowest mean loss over the
  shared continuation wins;
- language_modeling {context, continuation}: correct iff every continuation token is the argmax.
Few-shot examples are drawn deterministically per item, never the item itself. Accuracy is
centered against the random baseline, (acc - rb) / (1 - rb); CORE is the mean over tasks.

How the model reads each prompt is a memory mode (memory.py): `exact` (the default, token by
token, as generation reads a prompt), `parallel` (a schedule's passes), `fixed-point` or `zero`.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.sources import read_utf8
from ..memory import Memory, read

TASK_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}


@dataclass
class Task:
    label: str
    kind: str
    path: Path
    num_fewshot: int
    delimiter: str
    random_baseline: float  # a fraction


def load_bundle(bundle: str | Path) -> list[Task]:
    import yaml

    bundle = Path(bundle)
    for name in ("core.yaml", "eval_meta_data.csv"):
        if not (bundle / name).is_file():
            raise FileNotFoundError(f"CORE bundle {bundle} has no {name}")
    try:
        spec = yaml.safe_load(read_utf8(bundle / "core.yaml"))
    except yaml.YAMLError as e:
        raise ValueError(f"{bundle / 'core.yaml'} is not valid YAML ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("icl_tasks"), list) or not spec["icl_tasks"]:
        raise ValueError(f"{bundle / 'core.yaml'} has no icl_tasks list (or an empty one)")
    baselines = read_baselines(bundle / "eval_meta_data.csv")
    tasks = []
    for entry in spec["icl_tasks"]:
        entry = entry if isinstance(entry, dict) else {}
        label, kind = entry.get("label"), entry.get("icl_task_type")
        if any(t.label == label for t in tasks):  # CORE is the mean over tasks: it would count twice
            raise ValueError(f"task {label!r} is listed twice in {bundle / 'core.yaml'}")
        if kind not in TASK_FIELDS:
            raise ValueError(f"task {label!r}: unknown icl_task_type {kind!r} (known: {', '.join(TASK_FIELDS)})")
        if label not in baselines:
            raise ValueError(f"task {label!r} has no random baseline in {bundle / 'eval_meta_data.csv'}")
        if not isinstance(entry.get("dataset_uri"), str):
            raise ValueError(f"task {label!r}: dataset_uri must name a file under eval_data/")
        path = _data_file(bundle, label, entry["dataset_uri"])
        if not path.is_file():
            raise FileNotFoundError(f"task {label!r}: data file {path} is missing")
        fewshot = entry.get("num_fewshot", [0])
        fewshot = fewshot[0] if isinstance(fewshot, list) and fewshot else fewshot
        if not isinstance(fewshot, int) or isinstance(fewshot, bool) or fewshot < 0:
            raise ValueError(f"task {label!r}: num_fewshot must be an integer >= 0, got {fewshot!r}")
        delimiter = entry.get("continuation_delimiter", " ")
        if not isinstance(delimiter, str):
            raise ValueError(f"task {label!r}: continuation_delimiter must be a string, got {delimiter!r}")
        tasks.append(Task(label, kind, path, fewshot, delimiter, baselines[label] / 100))
    return tasks


def _data_file(bundle: Path, label, uri: str) -> Path:
    """The data file `uri` names under the bundle's eval_data/. A bundle is downloaded, so read
    as untrusted: a `..`, an absolute path or a symbolic link leading out of eval_data/ would read
    (and score, and print from) any file its user can read."""
    try:
        data = (bundle / "eval_data").resolve()
        path = (data / uri).resolve()
    except RuntimeError as e:  # Python < 3.13 reports a symbolic link loop so
        raise ValueError(f"task {label!r}: dataset_uri {uri!r} cannot be resolved ({e})") from None
    if not path.is_relative_to(data):
        raise ValueError(f"task {label!r}: dataset_uri {uri!r} leads outside {bundle / 'eval_data'}")
    return path


def read_baselines(path: Path) -> dict[str, float]:
    """Each task's random baseline, a percentage in [0, 100)."""
    baselines = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            try:
                value = float(row["Random baseline"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}, line {n}: needs a numeric 'Random baseline' column") from None
            if not 0 <= value < 100:
                raise ValueError(f"{path}, line {n}: the random baseline must be a percentage in [0, 100), got {value}")
            baselines[row.get("Eval Task")] = value
    return baselines


def check_item(kind: str, item) -> str | None:
    """What is wrong with an item of a task of `kind`, or None."""
    if not isinstance(item, dict):
        return "an item must be a JSON object"
    missing = [k for k in TASK_FIELDS[kind] if k not in item]
    if missing:
        return f"a {kind} item needs {', '.join(missing)}"
    options = {"multiple_choice": "choices", "schema": "context_options"}.get(kind)
    texts = [item[k] for k in TASK_FIELDS[kind] if k not in (options, "gold")]
    if options is not None:
        if not isinstance(item[options], list) or not item[options]:
            return f"{options} must be a non-empty list"
        texts += item[options]
        gold = item["gold"]
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(item[options]):
            return f"gold must index {options} (0..{len(item[options]) - 1}), got {gold!r}"
    if not all(isinstance(t, str) for t in texts):
        return "every text of an item must be a string"
    return None


def load_items(task: Task) -> list[dict]:
    items = []
    for n, line in enumerate(read_utf8(task.path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{task.path}, line {n}: malformed JSON ({e.msg})") from None
        problem = check_item(task.kind, item)
        if problem:
            raise ValueError(f"{task.path}, line {n}: {problem}")
        items.append(item)
    if not items:
        raise ValueError(f"{task.path} holds no items")
    return items


def write_bundle(root: str | Path, tasks: dict, baselines: dict | None = None) -> Path:
    """A CORE bundle in the DCLM layout: `tasks` maps label -> (icl_task_type, num_fewshot, items);
    `baselines` label -> random baseline in percent (default 0)."""
    root = Path(root)
    (root / "eval_data" / "sub").mkdir(parents=True, exist_ok=True)
    lines = ["icl_tasks:"]
    for label, (kind, shots, items) in tasks.items():
        lines += [
            "-",
            f"  label: {label}",
            f"  dataset_uri: sub/{label}.jsonl",
            f"  num_fewshot: [{shots}]",
            f"  icl_task_type: {kind}",
            "  continuation_delimiter: ' '",
        ]
        (root / "eval_data" / "sub" / f"{label}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "Eval Task",
                "Task Category",
                "Task Type",
                "#shots",
                "#datapoints",
                "Random baseline",
                "Centered Metric?",
                "Description",
            ]
        )
        for label in tasks:
            w.writerow([label, "sample", "", 0, 0, (baselines or {}).get(label, 0.0), "", ""])
    return root


SAMPLE_ITEMS = {
    "multiple_choice": [
        {"query": "The sky is", "choices": ["blue", "green", "loud", "square"], "gold": 0},
        {"query": "Two plus two is", "choices": ["three", "four", "five", "six"], "gold": 1},
        {"query": "Ice is", "choices": ["hot", "dry", "cold", "red"], "gold": 2},
        {"query": "Cats say", "choices": ["meow", "moo", "oink", "quack"], "gold": 0},
    ],
    "schema": [
        {
            "context_options": [
                "The ball broke the window because it was hard.",
                "The ball broke the window because it was soft.",
            ],
            "continuation": "It shattered.",
            "gold": 0,
        },
        {
            "context_options": [
                "Anna thanked Beth because she had helped.",
                "Anna thanked Beth because she had ignored her.",
            ],
            "continuation": "Beth smiled.",
            "gold": 0,
        },
    ],
    "language_modeling": [
        {"context": "The capital of France is", "continuation": "Paris"},
        {"context": "One, two, three,", "continuation": "four"},
        {"context": "Roses are red, violets are", "continuation": "blue"},
    ],
}


def write_sample_bundle(root: str | Path) -> Path:
    """Three tiny tasks in the bundle format (sample_mc, sample_schema, sample_lm): the format of
    `lrt eval core` without a download, for smoke runs and examples, not a measure of anything."""
    return write_bundle(
        root,
        {
            "sample_mc": ("multiple_choice", 1, SAMPLE_ITEMS["multiple_choice"]),
            "sample_schema": ("schema", 1, SAMPLE_ITEMS["schema"]),
            "sample_lm": ("language_modeling", 2, SAMPLE_ITEMS["language_modeling"]),
        },
        {"sample_mc": 25.0, "sample_schema": 50.0},
    )


# prompts ------------------------------------------------------------------------------------------


def render(kind: str, item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    """The prompts of one item (multiple choice: one per choice; schema: one per context option;
    language modeling: [without continuation, with continuation])."""
    if kind == "multiple_choice":
        shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if kind == "schema":
        shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        return [f"{shots}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    shots = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
    context = f"{shots}{item['context'].strip()}{delimiter}"
    return [context.strip(), context + item["continuation"]]


def _common_length(seqs: list[list[int]], from_end: bool = False) -> int:
    n = 0
    while n < min(map(len, seqs)) and len({s[-1 - n] if from_end else s[n] for s in seqs}) == 1:
        n += 1
    return n


def answer_regions(kind: str, seqs: list[list[int]]) -> list[tuple[int, int]]:
    """[start, end) of the scored tokens of each prompt."""
    if kind == "multiple_choice":
        start = _common_length(seqs)
        return [(min(start, len(s) - 1), len(s)) for s in seqs]
    if kind == "schema":
        n = _common_length(seqs, from_end=True)
        return [(len(s) - max(n, 1), len(s)) for s in seqs]
    without, with_ = seqs
    return [(_common_length([without, with_]), len(with_))]


@dataclass
class ItemScore:
    correct: bool
    scores: list[float] = field(default_factory=list)  # mean loss per option (multiple choice, schema)


@dataclass
class Reader:
    """How prompts become token rows and the rows logits: the tokenizer's encode and BOS, the
    model's window (a longer prompt keeps its last max_len tokens), and the model under a memory."""

    encode: Callable[[str], list[int]]
    bos: int
    max_len: int
    logits_fn: Callable[[torch.Tensor], torch.Tensor]


def score_item(reader: Reader, kind: str, prompts: list[str], *, gold: int | None = None) -> ItemScore:
    bos, max_len = reader.bos, reader.max_len
    seqs = [[bos] + reader.encode(p) for p in prompts]
    regions = answer_regions(kind, seqs)
    if kind == "language_modeling":
        seqs = seqs[1:]  # only the prompt with the continuation is run
    # keep the last max_len tokens of each prompt
    crops = [max(0, len(s) - max_len) for s in seqs]
    seqs = [s[c:] for s, c in zip(seqs, crops)]
    regions = [(max(1, a - c), b - c) for (a, b), c in zip(regions, crops)]
    width = max(map(len, seqs))
    idx = torch.tensor([s + [bos] * (width - len(s)) for s in seqs])
    logits = reader.logits_fn(idx).float().cpu()
    if kind == "language_modeling":
        a, b = regions[0]
        predicted = logits[0, a - 1 : b - 1].argmax(-1)
        return ItemScore(bool((predicted == idx[0, a:b]).all()))
    losses = [F.cross_entropy(logits[i, a - 1 : b - 1], idx[i, a:b]).item() for i, (a, b) in enumerate(regions)]
    return ItemScore(min(range(len(losses)), key=losses.__getitem__) == gold, losses)


# tasks and the suite ------------------------------------------------------------------------------


@dataclass
class TaskResult:
    label: str
    kind: str
    items: int
    accuracy: float
    centered: float
    random_baseline: float


@dataclass
class CoreResult:
    memory: str  # the memory's spec
    tasks: list[TaskResult]

    @property
    def core(self) -> float:
        return sum(t.centered for t in self.tasks) / len(self.tasks)

    def format(self) -> str:
        lines = [f"  {'task':<34}{'type':<19}{'items':>6}{'accuracy':>10}{'centered':>10}"]
        lines += [f"  {t.label:<34}{t.kind:<19}{t.items:>6}{t.accuracy:>10.4f}{t.centered:>10.4f}" for t in self.tasks]
        return "\n".join(lines + [f"CORE = {self.core:.4f}"])


def evaluate_task(
    task: Task,
    reader: Reader,
    *,
    max_items: int | None = None,
    progress: bool = False,
    items: list[dict] | None = None,
    world=None,
) -> TaskResult:
    """A task's accuracy; with a `world` (distributed.World), each rank scores items rank,
    rank + world, ... and the counts are summed."""
    items = list(items if items is not None else load_items(task))
    random.Random(1337).shuffle(items)
    if max_items is not None:
        items = items[:max_items]
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    correct = 0
    for i in tqdm(range(rank, len(items), size), desc=task.label, disable=not progress, leave=False):
        others = [j for j in range(len(items)) if j != i]
        shots = [items[j] for j in random.Random(1234 + i).sample(others, min(task.num_fewshot, len(others)))]
        prompts = render(task.kind, items[i], task.delimiter, shots)
        correct += score_item(reader, task.kind, prompts, gold=items[i].get("gold")).correct
    if world is not None:
        correct = int(world.all_sum(torch.tensor([correct])).item())
    accuracy = correct / len(items)
    rb = task.random_baseline
    return TaskResult(task.label, task.kind, len(items), accuracy, (accuracy - rb) / (1 - rb), rb)


def evaluate_core(
    model,
    tokenizer,
    bundle: str | Path,
    *,
    memory: Memory | str = "exact",
    max_per_task: int | None = None,
    progress: bool = True,
    world=None,
) -> CoreResult:
    """CORE of `model`, reading every prompt with the given memory; with a `world`, the ranks
    share every task's items and all get the single-process numbers."""
    memory = Memory.parse(memory)
    if max_per_task is not None and (not isinstance(max_per_task, int) or max_per_task < 1):
        raise ValueError(f"max_per_task must be None or a positive integer, got {max_per_task!r}")
    tasks = load_bundle(bundle)
    items = {t.label: load_items(t) for t in tasks}  # every file is checked before any scoring starts
    device = next(model.parameters()).device

    @torch.no_grad()
    def logits_fn(idx):
        return read(model, idx.to(device), memory).logits

    reader = Reader(tokenizer.encode, tokenizer.bos_id, model.config.sequence_len, logits_fn)
    results = [
        evaluate_task(t, reader, max_items=max_per_task, progress=progress, items=items[t.label], world=world)
        for t in tqdm(tasks, desc=f"CORE ({memory.spec} memory)", disable=not progress)
    ]
    return CoreResult(memory.spec, results)
