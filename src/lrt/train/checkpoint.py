"""Checkpoints: safetensors + JSON, written atomically, never unpickled.

A checkpoint is a folder `step_000123/` holding
- `model.safetensors`: the weights, loadable on their own;
- `train_state.safetensors`: the tensors of the training state (optimizer moments, RNG states,
  the data loader's buffered tokens);
- `checkpoint.json`: model config, tokenizer reference, step, training config, and the rest of
  the training state (optimizer hyperparameters, data position, Python/numpy RNG states) with
  references to those tensors;
- `tokenizer.json` for a BPE tokenizer.
It is written to a temporary folder and renamed into place, so a crash leaves either the old
set of checkpoints or the new one, and the last `keep` are kept. Only folders named exactly
`step_NNNNNN` are checkpoints; `recover` tidies what a killed save leaves (`.tmp`, `.old`).
Weights that are not finite are never written, and never loaded. Everything a checkpoint refers
to lies inside its folder: the tokenizer is a file beside the weights, checked by content hash.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import LRTConfig
from ..data.tokenizer import BPETokenizer, Tokenizer, tokenizer_from_reference
from ..model import LRT
from ..runtime import resolve_device
from .config import TrainConfig

FORMAT = "lrt-checkpoint-1"


def flatten_tensors(tree, tensors: dict[str, torch.Tensor], prefix: str):
    """Replace every tensor in a nested dict/list by a reference, collecting the tensors."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {"__dict__": [[k, flatten_tensors(v, tensors, f"{prefix}.{k}")] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return [flatten_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(tree)]
    return tree


def unflatten_tensors(tree, tensors: dict[str, torch.Tensor]):
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:  # keeps non-string keys (optimizer state ids)
        return {k: unflatten_tensors(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [unflatten_tensors(v, tensors) for v in tree]
    return tree


def rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


CHECKPOINT_NAME = re.compile(r"step_\d{6,}")


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name[len("step_") :]))  # by step: step_1000000 after step_999999


def recover(run_dir: Path) -> None:
    """Tidy what a killed save leaves: a `.tmp` folder is an unfinished write (removed); an `.old`
    folder is the previous copy of a step being rewritten, which goes back in place when the new
    copy never arrived and is removed when it did. Call with the run folder locked."""
    root = Path(run_dir) / "checkpoints"
    for leftover in sorted(root.glob("step_*.tmp")) + sorted(root.glob("step_*.old")):
        final = leftover.with_suffix("")
        if leftover.suffix == ".old" and not final.exists():
            leftover.rename(final)
        else:
            shutil.rmtree(leftover)


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir,
    step: int,
    model,
    *,
    tokenizer,
    meta: dict,
    state: dict,
    keep: int = 3,
    weights: dict[str, torch.Tensor] | None = None,
    kept: frozenset[int] = frozenset(),
) -> Path:
    """Write the checkpoint of `step` atomically and prune all but the newest `keep` (the steps
    in `kept` are never pruned, nor counted).
    `meta` is plain JSON; `state` may hold tensors anywhere in it; `weights` is the model's full
    state dict where the caller gathered it (a sharded model), else model.state_dict(). Refuses
    non-finite weights."""
    model = getattr(model, "module", model)  # unwrap DDP
    weights = {k: v.detach().cpu().contiguous() for k, v in (weights or model.state_dict()).items()}
    broken = non_finite(weights)
    if broken:
        raise ValueError(f"refusing to save step {step}: non-finite weights in {', '.join(broken[:3])}")
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights, tmp / "model.safetensors")
        tensors: dict[str, torch.Tensor] = {}
        state = flatten_tensors(state, tensors, "state")
        save_file(tensors, tmp / "train_state.safetensors")
        if isinstance(tokenizer, BPETokenizer):
            tokenizer.save(tmp / "tokenizer.json")
        record = {
            "format": FORMAT,
            "step": step,
            "config": model.config.to_dict(),
            "tokenizer": tokenizer.reference(),
            **meta,
            "train_state": state,
        }
        (tmp / "checkpoint.json").write_text(json.dumps(record, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
    except BaseException:  # a full disk, a Ctrl-C: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # same step written again: swap, so a good copy exists at every moment
        old = final.with_name(final.name + ".old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync(final.parent)  # the renames themselves reach the disk
    prunable = [p for p in list_checkpoints(run_dir) if int(p.name[len("step_") :]) not in kept]
    for stale in prunable[:-keep]:
        # renamed first: a save killed while deleting leaves a `.tmp` (tidied by recover), never a torn step_*
        doomed = stale.with_name(stale.name + ".tmp")
        shutil.rmtree(doomed, ignore_errors=True)
        stale.rename(doomed)
        shutil.rmtree(doomed)
    return final


def resolve(path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if (path / "checkpoint.json").exists():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"no checkpoint in {path} (expected checkpoint.json or checkpoints/step_*)")
    return found[-1]


def read_record(path: Path) -> dict:
    try:
        record = json.loads((path / "checkpoint.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path} is corrupt: checkpoint.json unreadable ({e})") from None
    if record.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {record.get('format')!r}, expected {FORMAT!r}")
    return record


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {file} is corrupt or truncated ({e})") from None


def load_model(path, device: str | torch.device = "cpu", attention: str = "auto"):
    """(model, tokenizer, record) of a checkpoint or run folder."""
    path = resolve(path)
    record = read_record(path)
    config = LRTConfig.from_dict(record["config"])
    if not record.get("tokenizer"):
        raise ValueError(f"checkpoint {path} names no tokenizer")
    tokenizer = tokenizer_from_reference(record["tokenizer"], path)
    model = _assemble(config, load_weights(path), attention, f"checkpoint {path}: weights do not match its config")
    return model.to(device), tokenizer, record


def _assemble(config: LRTConfig, weights: dict[str, torch.Tensor], attention: str, mismatch: str) -> LRT:
    """The model of `config` holding `weights`; built on the meta device, so no memory goes to
    initial weights that are replaced at once."""
    model = LRT(config, attention=attention, device="meta")
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{mismatch} ({str(e).splitlines()[0]})") from None
    return model


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full state dict in a checkpoint's model.safetensors, checked to be finite."""
    weights = _load_tensors(path / "model.safetensors")
    # the per-layer scalars were 0-dimensional before FSDP2 support made them (1,)
    weights = {k: v.reshape(1) if v.dim() == 0 else v for k, v in weights.items()}
    broken = non_finite(weights)
    if broken:
        raise ValueError(f"checkpoint {path} holds non-finite weights ({', '.join(broken[:3])}); it is not usable")
    return weights


def load_train_state(path: Path, record: dict) -> dict:
    """The training state saved beside the weights, tensors in place."""
    return unflatten_tensors(record["train_state"], _load_tensors(path / "train_state.safetensors"))


@dataclass
class Trained:
    """A trained model as the evaluation commands need it."""

    path: Path  # the checkpoint folder, or the exported folder
    model: LRT
    tokenizer: Tokenizer
    record: dict  # checkpoint.json; an export's config.json
    train_config: TrainConfig | None  # how it was trained; an export does not say

    @property
    def schedule(self) -> str | None:
        """The training schedule, what a bare `parallel` memory reads with; None for an export."""
        return None if self.train_config is None else self.train_config.schedule


def load_run(path, device: str = "auto") -> Trained:
    """The trained model of a run folder (its newest checkpoint), a checkpoint folder, or a folder
    `lrt export hf` wrote, on `device` ("auto": a GPU where there is one)."""
    path = Path(path)
    if (path / "config.json").is_file():  # an export; a checkpoint holds checkpoint.json instead
        return _load_export(path, resolve_device(device))
    path = resolve(path)
    model, tokenizer, record = load_model(path, resolve_device(device))
    return Trained(path, model, tokenizer, record, TrainConfig.from_dict(record.get("train_config", {})))


def _load_export(path: Path, device: torch.device) -> Trained:
    """An exported Hugging Face folder, read without transformers: the 'lrt' section of its
    config.json, its weights under the wrapper's 'model.' prefix, and its tokenizer.json."""
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "lrt" or not config.get("lrt"):
        raise ValueError(f"{path} is not an LRT export (config.json has no model_type 'lrt' and 'lrt' section)")
    lrt_config = LRTConfig.from_dict(config["lrt"])
    weights = {k.removeprefix("model."): v for k, v in load_file(path / "model.safetensors").items()}
    model = _assemble(lrt_config, weights, "auto", f"{path}: the weights do not match config.json")
    return Trained(path, model.to(device), BPETokenizer.load(path / "tokenizer.json"), config, None)
