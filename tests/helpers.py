"""Shared helpers of the test suite."""

import itertools

import torch

import lrt

INJECTIONS = ("kv+residual", "kv", "residual", "none")
PROJECTIONS = ("shared", "layerwise")


def tiny_config(**overrides) -> lrt.LRTConfig:
    """Small enough for exhaustive identity checks, with every backbone feature switched on:
    GQA, a sliding-window layer, value embeddings, residual scalars, soft-capping."""
    base = dict(
        vocab_size=61, sequence_len=8, n_layer=3, n_head=4, n_kv_head=2, n_embd=32,
        window_pattern="SL", short_window=3, value_embeds="alternating", gate_channels=8,
    )
    base.update(overrides)
    return lrt.LRTConfig(**base)


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
    import csv
    import json
    import pathlib

    root = pathlib.Path(root)
    (root / "eval_data" / "sub").mkdir(parents=True, exist_ok=True)
    lines = ["icl_tasks:"]
    for label, (kind, shots, items) in tasks.items():
        lines += ["-", f"  label: {label}", f"  dataset_uri: sub/{label}.jsonl", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {kind}", "  continuation_delimiter: ' '"]
        (root / "eval_data" / "sub" / f"{label}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "#datapoints", "Random baseline", "Centered Metric?", "Description"])
        for label in tasks:
            w.writerow([label, "test", "", 0, 0, (baselines or {}).get(label, 0.0), "", ""])
    return root


MC_ITEMS = [
    {"query": "The sky is", "choices": ["blue", "green", "loud", "square"], "gold": 0},
    {"query": "Two plus two is", "choices": ["three", "four", "five", "six"], "gold": 1},
    {"query": "Ice is", "choices": ["hot", "dry", "cold", "red"], "gold": 2},
    {"query": "Cats say", "choices": ["meow", "moo", "oink", "quack"], "gold": 0},
]
SCHEMA_ITEMS = [
    {"context_options": ["The ball broke the window because it was hard.", "The ball broke the window because it was soft."],
     "continuation": "It shattered.", "gold": 0},
    {"context_options": ["Anna thanked Beth because she had helped.", "Anna thanked Beth because she had ignored her."],
     "continuation": "Beth smiled.", "gold": 0},
]
LM_ITEMS = [
    {"context": "The capital of France is", "continuation": "Paris"},
    {"context": "One, two, three,", "continuation": "four"},
    {"context": "Roses are red, violets are", "continuation": "blue"},
]
