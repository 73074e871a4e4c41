"""A new run from another run's weights (`lrt train --init-from`): fine-tuning, continued
pretraining with a new schedule or rates, and turning a plain transformer into an LRT.

Only the weights come along: data, schedule, rates, the optimizer (fresh) and the step count
(from 0) are the new run's. The model's backbone must be the source's (its shape comes from the
source; --set may change only how the model recurs, config.RECURRENCE_FIELDS, and the context
length, which shapes no weight). A pathway the source lacks starts where it adds nothing: the
memory's keys and values (Wk m, Wv m) and the residual injection g_l at zero, the memory gates at
their neutral zero, so the model computes the source's function at step 0 and training grows the
pathway from there. A pathway the new run lacks is dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RECURRENCE_FIELDS, LRTConfig
from ..data.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_reference
from . import checkpoint

# weights that only a model with a recurrence pathway has (model.py): named by their last parts
PATHWAY_WEIGHTS = ("mem_kv.weight", "mem_gate.weight", "mem_scale")


def is_pathway(name: str) -> bool:
    return name.endswith(PATHWAY_WEIGHTS)


def source_of(init_from: str) -> tuple[Path, dict]:
    """The checkpoint folder --init-from names (a run folder: its newest checkpoint) and its record."""
    path = checkpoint.resolve(init_from)
    return path, checkpoint.read_record(path)


def run_model_config(cfg, vocab_size: int, bos_id: int | None = None) -> LRTConfig:
    """The model a run of TrainConfig `cfg` trains: from its preset, or shaped by the checkpoint it
    starts from (what the matched-compute arithmetic of a study needs before anything trains)."""
    source = None if cfg.init_from is None else LRTConfig.from_dict(source_of(cfg.init_from)[1]["config"])
    return cfg.model_config(vocab_size, bos_id, source=source)


def source_tokenizer(tokenizer_flag: str, path: Path, record: dict) -> Tokenizer:
    """The source's tokenizer (its token ids are what the weights mean); --tokenizer, where it
    names one other than the default, must have the same content."""
    own = tokenizer_from_reference(record["tokenizer"], path)
    if tokenizer_flag != "byte" and load_tokenizer(tokenizer_flag).reference() != own.reference():
        raise ValueError(
            f"tokenizer {tokenizer_flag} differs from the one {path} was trained with (content hash): "
            "a run started from weights keeps their tokenizer"
        )
    return own


def check_backbone(source: LRTConfig, config: LRTConfig, path: Path) -> None:
    """The new model's weights must be the source's, pathway aside."""
    free = set(RECURRENCE_FIELDS) | {"sequence_len"}
    differ = [
        f"{k}: checkpoint {v!r}, this run {getattr(config, k)!r}"
        for k, v in source.to_dict().items()
        if k not in free and v != getattr(config, k)
    ]
    if differ:
        raise ValueError(
            f"--init-from {path}: this run's model differs from the checkpoint's beyond its recurrence "
            f"({'; '.join(differ)}); the shape comes from the checkpoint, --set may change only "
            f"{', '.join(sorted(free))}"
        )


@torch.no_grad()
def load_initial_weights(model, path: Path) -> dict[str, list[str]]:
    """The source's weights into `model` (built and initialised): shared tensors copied, a pathway the
    source lacks zeroed where it would add anything, a pathway the model lacks left behind. Returns
    the names added and dropped."""
    weights = checkpoint.load_weights(path)
    own = model.state_dict()
    added = sorted(set(own) - set(weights))
    dropped = sorted(set(weights) - set(own))
    strays = [name for name in added + dropped if not is_pathway(name)]
    if strays:
        raise ValueError(f"--init-from {path}: weights {strays[:3]} do not match this model (not its pathway)")
    for name, tensor in weights.items():
        if name in own:
            if own[name].shape != tensor.shape:
                raise ValueError(
                    f"--init-from {path}: {name} has shape {tuple(tensor.shape)} there, {tuple(own[name].shape)} here"
                )
            own[name].copy_(tensor)
    for name in added:
        if not name.endswith("mem_gate.weight"):  # the gates' zero is already their neutral init
            own[name].zero_()
    return {"added": added, "dropped": dropped}
