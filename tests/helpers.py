"""Shared helpers of the test suite."""

import itertools

import torch

import lrt
from lrt.evaluate.core import SAMPLE_ITEMS
from lrt.train.config import TrainConfig

INJECTIONS = ("kv+residual", "kv", "residual", "none")
PROJECTIONS = ("shared", "layerwise")


def tiny_config(**overrides) -> lrt.LRTConfig:
    """Small enough for exhaustive identity checks, with every backbone feature switched on:
    GQA, a sliding-window layer, value embeddings, residual scalars, soft-capping."""
    shape = dict(vocab_size=61, sequence_len=8, n_layer=3, n_head=4, n_kv_head=2, n_embd=32)
    features = dict(window_pattern="SL", short_window=3, value_embeds="alternating", gate_channels=8)
    return lrt.LRTConfig(**{**shape, **features, **overrides})


# the tiny run most CLI and training tests start from: one step, batches of 2, 128 evaluation tokens
TINY_RUN = dict(preset="tiny", steps=1, batch_size=2, eval_tokens=128, final_decode=False)


def tiny_train_config(out, **overrides) -> TrainConfig:
    """The TrainConfig of a TINY_RUN into `out`; `overrides` replace its fields."""
    return TrainConfig(out=str(out), **{**TINY_RUN, **overrides})


def tiny_train_args(out, **flags) -> list[str]:
    """The `lrt train` arguments of a TINY_RUN into `out`: each keyword sets a flag (`eval_every=2`
    gives `--eval-every 2`); `final_decode=True` leaves out --no-final-decode."""
    settings = {**TINY_RUN, **flags}
    args = ["train", "--out", str(out)] + ([] if settings.pop("final_decode") else ["--no-final-decode"])
    for name, value in settings.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


def random_model(config: lrt.LRTConfig, dtype=torch.float32, seed=0, std=0.3) -> lrt.LRT:
    """A model with every parameter random: the init zeros output projections and gates,
    which would hide most of the function from an identity test."""
    torch.manual_seed(seed)
    model = lrt.LRT(config).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def random_tokens(config, batch=2, length=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length or config.sequence_len), generator=g)


def untimed(records: list[dict]) -> list[dict]:
    """Metrics records without what the clock decides (time, speed): what two runs must share."""
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s", "mfu")} for r in records]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def pathway_variants(n_layer=3):
    """Every injection x projection x source layer (projection is moot without KV Projection)."""
    out = []
    for inj, proj, src in itertools.product(INJECTIONS, PROJECTIONS, range(1, n_layer + 1)):
        if proj == "layerwise" and "kv" not in inj:
            continue
        out.append(dict(injection=inj, projection=proj, source_layer=src))
    return out


def variant_id(v):
    return f"{v['injection']}-{v['projection']}-s{v['source_layer']}"


def write_core_bundle(root, tasks: dict, baselines: dict | None = None):
    """A CORE bundle in the real layout: tasks maps label -> (icl_task_type, num_fewshot, items)."""
    from lrt.evaluate.core import write_bundle

    return write_bundle(root, tasks, baselines)


MC_ITEMS, SCHEMA_ITEMS, LM_ITEMS = (SAMPLE_ITEMS[kind] for kind in ("multiple_choice", "schema", "language_modeling"))


LM_EVAL_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
"""


def write_lm_eval_task(folder, name: str):
    """A local lm-eval multiple-choice task (a YAML over a JSONL of the sample CORE items) in
    `folder`, so the harness never reaches the hub; returns the folder for --include-path."""
    import json
    import pathlib

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in SAMPLE_ITEMS["multiple_choice"]))
    (folder / f"{name}.yaml").write_text(LM_EVAL_TASK.format(name=name, data=data))
    return folder
