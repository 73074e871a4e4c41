"""Checkpoints: safetensors + JSON, written atomically, never unpickled.

A checkpoint is a folder `step_000123/` holding
- `model.safetensors`: the weights, loadable on their own;
- `train_state.safetensors`: the tensors of the training state (optimizer moments, RNG states,
  the data loader's buffered tokens);
- `checkpoint.json`: model config, tokenizer reference, step, training config, and the rest of
  the training state (optimizer hyperparameters, data position, Python/numpy RNG states) with
  references to those tensors;
- `tokenizer.json` for a BPE tokenizer;
- `optimizer/` for a run under torchrun: the optimizer state sharded as the ranks hold it, one
  safetensors file per rank that holds part of it, written by every rank at once through
  torch.distributed.checkpoint (DCP), and read back on any world size (DCP reshards). Its tensors
  are then not in `train_state.safetensors`; `checkpoint.json` records the folder and the state
  dict's layout.
It is written to a temporary folder and renamed into place, so a crash leaves either the old
set of checkpoints or the new one, and the last `keep` are kept. Only folders named exactly
`step_NNNNNN` are checkpoints; `recover` tidies what a killed save leaves (`.tmp`, `.old`).
Weights that are not finite are never written, and never loaded. Everything a checkpoint refers
to lies inside its folder: the tokenizer is a file beside the weights, checked by content hash.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import LRTConfig, is_int
from ..data.tokenizer import BPETokenizer, Tokenizer, tokenizer_from_reference
from ..model import LRT
from ..runtime import resolve_device
from .config import TrainConfig
from .distributed import local

FORMAT = "lrt-checkpoint-1"


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


SHARD = "__shard__"  # {SHARD: name}: a tensor in the checkpoint's optimizer shards, left as it is


def flatten_tensors(tree, tensors: dict[str, torch.Tensor], prefix: str, take=_host_copy):
    """Replace every tensor in a nested dict/list by a reference, collecting `take(tensor)`s (a
    CPU copy, unless the caller wants the tensors themselves: DCP writes and loads them in place)."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = take(tree)
        return {"__tensor__": prefix}
    if isinstance(tree, dict) and SHARD in tree:
        return tree
    if isinstance(tree, dict):
        return {"__dict__": [[k, flatten_tensors(v, tensors, f"{prefix}.{k}", take)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return [flatten_tensors(v, tensors, f"{prefix}.{i}", take) for i, v in enumerate(tree)]
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


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """safetensors' save_file, whose write errors (a full disk, a file-size limit) come as
    SafetensorError, neither OSError nor ValueError: here they are OSError, naming the file."""
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        raise OSError(f"could not write {path}: {e}") from None


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


CHECKPOINT_NAME = re.compile(r"step_\d{6,}")


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=checkpoint_step)  # by step: step_1000000 after step_999999


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint folder, from its name."""
    return int(path.name[len("step_") :])


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


def temp_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    final = step_dir(run_dir, step)
    return final.with_name(final.name + ".tmp")


def begin(run_dir: Path, step: int) -> Path:
    """The temporary folder of `step`'s checkpoint, empty: what a killed save of it left goes."""
    tmp = temp_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def discard(run_dir: Path, step: int) -> None:
    """Remove the temporary folder of a save that failed."""
    shutil.rmtree(temp_dir(run_dir, step), ignore_errors=True)


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
    begun: bool = False,
) -> Path:
    """Write the checkpoint of `step` atomically and prune all but the newest `keep` (the steps
    in `kept` are never pruned, nor counted).
    `meta` is plain JSON; `state` may hold tensors anywhere in it; `weights` is the model's full
    state dict where the caller gathered it (a sharded model), else model.state_dict(). Refuses
    non-finite weights. `begun`: the temporary folder (`begin`) already holds the ranks' optimizer
    shards, which are renamed into place with the rest."""
    model = getattr(model, "module", model)  # unwrap DDP
    weights = {k: v.detach().cpu().contiguous() for k, v in (weights or model.state_dict()).items()}
    broken = non_finite(weights)
    if broken:
        raise ValueError(f"refusing to save step {step}: non-finite weights in {', '.join(broken[:3])}")
    tmp = temp_dir(run_dir, step) if begun else begin(run_dir, step)
    try:
        _write(tmp, step, model, weights, tokenizer, meta, state)
    except BaseException:  # a full disk, a Ctrl-C: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = _commit(tmp, step_dir(run_dir, step))
    _prune(run_dir, keep, kept)
    return final


def _write(tmp: Path, step: int, model, weights: dict, tokenizer, meta: dict, state: dict) -> None:
    write_tensors(weights, tmp / "model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    state = flatten_tensors(state, tensors, "state")
    write_tensors(tensors, tmp / "train_state.safetensors")
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
    for f in tmp.iterdir():  # the optimizer/ folder too: its entries (DCP fsyncs the files in it)
        _fsync(f)


def _commit(tmp: Path, final: Path) -> Path:
    if final.exists():  # same step written again: swap, so a good copy exists at every moment
        old = final.with_name(final.name + ".old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync(final.parent)  # the renames themselves reach the disk
    return final


def _prune(run_dir: Path, keep: int, kept: frozenset[int]) -> None:
    """Remove whole step folders (optimizer shards included) but the newest `keep` and `kept`."""
    prunable = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) not in kept]
    for stale in prunable[:-keep]:
        # renamed first: a save killed while deleting leaves a `.tmp` (tidied by recover), never a torn step_*
        doomed = stale.with_name(stale.name + ".tmp")
        shutil.rmtree(doomed, ignore_errors=True)
        stale.rename(doomed)
        shutil.rmtree(doomed)


# the optimizer sharded through DCP (runs under torchrun) -------------------------------------------
#
# DCP's own file format keeps its index in a pickle (`.metadata`) and non-tensor values as pickles
# too; reading them would break "nothing is unpickled". Its safetensors storage (the Hugging Face
# writer and reader) keeps each rank's shard in a safetensors file whose header says where the
# shard lies in the whole tensor, and reads the index back from those headers. So only tensors go
# to DCP; the state dict itself, param_groups and all, stays in checkpoint.json's train_state as
# before, each tensor a {SHARD: name} reference into the shards.

OPTIMIZER_FOLDER = "optimizer"


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def refuse_non_finite_shards(optimizer: dict, step: int) -> None:
    """Raise if this rank's part of the sharded optimizer state dict holds a NaN or inf."""
    shards: dict[str, torch.Tensor] = {}
    flatten_tensors(optimizer, shards, "optimizer", take=local)  # of a DTensor, this rank's part
    broken = non_finite(shards)
    if broken:
        raise ValueError(f"refusing to save step {step}: non-finite optimizer state in {', '.join(broken[:3])}")


def _dcp_error(e: BaseException) -> str:
    """The first rank's error of a CheckpointException, in one line (its str holds tracebacks)."""
    failures = getattr(e, "failures", None)
    if not failures:
        return str(e)
    error, _ = next(iter(failures.values()))
    return f"{type(error).__name__}: {error}"


def save_optimizer_shards(tmp: Path, optimizer: dict) -> dict:
    """Every rank writes its shard of the sharded optimizer state dict into `tmp`/optimizer/ (a
    collective: every rank calls it, after rank 0 made `tmp`); what train_state records of it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    tensors: dict[str, torch.Tensor] = {}
    flat = flatten_tensors(optimizer, tensors, "optimizer", take=_same)
    layout = unflatten_tensors(flat, {name: {SHARD: name} for name in tensors})  # tensors -> references
    writer = dcp.HuggingFaceStorageWriter(str(tmp / OPTIMIZER_FOLDER), save_distributed=True)
    try:
        dcp.save(tensors, storage_writer=writer)
    except CheckpointException as e:  # a BaseException, which world.agree would not see
        raise OSError(f"writing the optimizer shards failed ({_dcp_error(e)})") from None
    return {"dcp": OPTIMIZER_FOLDER, "state_dict": layout}


def _map_shards(tree, fn):
    """`tree` with each {SHARD: name} replaced by fn(name)."""
    if isinstance(tree, dict) and SHARD in tree:
        return fn(tree[SHARD])
    if isinstance(tree, dict):
        return {k: _map_shards(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_shards(v, fn) for v in tree]
    return tree


def _shard_names(tree) -> list[str]:
    names: list[str] = []
    _map_shards(tree, names.append)
    return names


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
    """The checkpoint.json of checkpoint folder `path`, its shape and types checked. Its readers
    index it freely and size tensors from its config, so a record a hand edit, a bad copy or
    another program broke is refused here, in one line naming the file, before any of it is used."""
    file = path / "checkpoint.json"
    try:
        record = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise ValueError(f"checkpoint {path} is corrupt: checkpoint.json unreadable ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"checkpoint {file} is corrupt: it holds {_json_kind(record)}, not a JSON object")
    if record.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {record.get('format')!r}, expected {FORMAT!r}")
    problem = _record_problem(record)
    if problem:
        raise ValueError(f"checkpoint {file} is corrupt: {problem}")
    return record


def _json_kind(value) -> str:
    """What a JSON value is, in a few words (the value itself may be long)."""
    if value is None:
        return "null"
    for kind, name in ((bool, "true/false"), (str, "a string"), (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return f"the number {value!r}" if isinstance(value, (int, float)) else type(value).__name__


def _record_problem(record: dict) -> str | None:
    """What is wrong with a record (its format already checked), or None. The fields the
    trainer writes beside the model's (tokens, train_time, ...) may be absent: a checkpoint
    saved outside a training run lacks them, and only resuming reads them."""
    step = record.get("step")
    if not is_int(step) or step < 0:
        return f"step must be an integer >= 0, got {_json_kind(step)}" if "step" in record else "it has no step"
    for name, ok, allowed in (
        ("tokens", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("train_time", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
        ("world_size", lambda v: is_int(v) and v >= 1, "a positive integer"),
        ("final", lambda v: isinstance(v, bool), "true or false"),
    ):
        if name in record and not ok(record[name]):
            return f"{name} must be {allowed}, got {_json_kind(record[name])}"
    if not isinstance(record.get("config"), dict):
        return "its config must be a JSON object, " + (
            f"got {_json_kind(record['config'])}" if "config" in record else "and it has none"
        )
    try:  # LRTConfig's checks bound every size: an absurd one stops here, before any tensor exists
        config = LRTConfig.from_dict(record["config"])
    except (ValueError, TypeError) as e:
        return f"its config is invalid ({e})"
    problem = _tokenizer_problem(record.get("tokenizer"))
    if problem:
        return problem
    if "train_config" in record:  # a checkpoint saved outside a training run has none
        if not isinstance(record["train_config"], dict):
            return f"its train_config must be a JSON object, got {_json_kind(record['train_config'])}"
        try:  # resuming builds its model from it, so its model settings are checked too
            train = TrainConfig.from_dict(record["train_config"])
            source = config if train.init_from is not None else None  # its shape is its own, not a preset's
            train.model_config(config.vocab_size, config.bos_id, source=source)
        except (ValueError, TypeError) as e:
            return f"its train_config is invalid ({e})"
    if "train_state" in record:
        return _reference_problem(record["train_state"])
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SHA256 = re.compile(r"[0-9a-f]{64}")


def _tokenizer_problem(ref) -> str | None:
    """What is wrong with a tokenizer reference. A BPE reference must carry its content hash:
    the hash is what ties the tokenizer.json beside the weights to the run (tokenizer_from_reference
    checks it), and one without it would load any tokenizer file silently."""
    if ref is None:
        return "it names no tokenizer"
    if not isinstance(ref, dict):
        return f"its tokenizer reference must be a JSON object, got {_json_kind(ref)}"
    if ref.get("kind") == "byte":
        return None
    if ref.get("kind") != "bpe" or not isinstance(ref.get("file"), str):
        return f"unknown tokenizer reference {json.dumps(ref)[:200]}"
    if "sha256" not in ref:
        reference = json.dumps(ref)[:200]
        return f"its tokenizer reference {reference} has no sha256 content hash, so nothing ties the file to the run"
    if not isinstance(ref["sha256"], str) or not SHA256.fullmatch(ref["sha256"]):
        return f"its tokenizer reference's sha256 must be 64 hex digits, got {_json_kind(ref['sha256'])}"
    return None


def _reference_problem(train_state) -> str | None:
    """What is wrong with train_state as flatten_tensors writes it: a JSON object, each tensor
    reference a name, each dict a list of [key, value] pairs. Walked with a stack, not recursion:
    its depth is the file's to choose."""
    if not isinstance(train_state, dict):
        return f"its train_state must be a JSON object, got {_json_kind(train_state)}"
    stack = [train_state]
    while stack:
        tree = stack.pop()
        if isinstance(tree, list):
            stack.extend(tree)
        elif isinstance(tree, dict) and "__tensor__" in tree:
            if not isinstance(tree["__tensor__"], str):
                return f"its train_state holds a tensor reference that is not a name: {json.dumps(tree)[:200]}"
        elif isinstance(tree, dict) and "__dict__" in tree:
            pairs = tree["__dict__"]
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                return (
                    f"its train_state holds a dict that is not a list of [key, value] pairs: {json.dumps(tree)[:200]}"
                )
            stack.extend(value for _, value in pairs)
    return None


def _tensor_names(tree) -> list[str]:
    """The tensors a (checked) train_state refers to."""
    names, stack = [], [tree]
    while stack:
        tree = stack.pop()
        if isinstance(tree, list):
            stack.extend(tree)
        elif isinstance(tree, dict) and "__tensor__" in tree:
            names.append(tree["__tensor__"])
        elif isinstance(tree, dict) and "__dict__" in tree:
            stack.extend(value for _, value in tree["__dict__"])
    return names


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
    """The training state saved beside the weights, tensors in place; every tensor its record
    refers to must be in train_state.safetensors (read_record checked the references' shape)."""
    if "train_state" not in record:
        raise ValueError(f"checkpoint {path / 'checkpoint.json'} has no train_state: it cannot be resumed")
    tensors = _load_tensors(path / "train_state.safetensors")
    missing = sorted(set(_tensor_names(record["train_state"])) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"checkpoint {path / 'checkpoint.json'} is corrupt: its train_state refers to tensor {missing[0]!r}"
            f"{more}, which train_state.safetensors does not hold"
        )
    return unflatten_tensors(record["train_state"], tensors)


def optimizer_shards(path: Path, state: dict) -> Path | None:
    """The folder of a checkpoint's optimizer shards (None: the optimizer is whole in train_state),
    checked before any rank loads from it: inside the checkpoint, there, readable, and holding
    every tensor the layout names whole."""
    saved = state.get("optimizer")
    if not (isinstance(saved, dict) and "dcp" in saved):
        return None
    if not isinstance(saved.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path} is corrupt: its train_state names optimizer shards but no state dict")
    folder = _inside(path, saved["dcp"])
    if not folder.is_dir():
        raise ValueError(f"checkpoint {path} is incomplete: its optimizer shards ({saved['dcp']}/) are missing")
    index = _shard_index(path, folder)
    for name in _shard_names(saved["state_dict"]):
        entry = index.state_dict_metadata.get(name)
        stored = 0 if entry is None else sum(math.prod(chunk.sizes) for chunk in entry.chunks)
        if entry is None or stored != math.prod(entry.size):
            raise ValueError(
                f"checkpoint {path} is incomplete: its optimizer shards hold {stored} of the values of {name} "
                "(a shard file is missing)"
            )
    return folder


def _inside(path: Path, name) -> Path:
    """The subfolder `name` of checkpoint `path`; a name leading anywhere else is refused."""
    folder = (path.resolve() / str(name)).resolve()
    if folder.parent != path.resolve():
        raise ValueError(f"checkpoint {path}: its optimizer reference {name!r} leads outside the checkpoint folder")
    return folder


def _shard_index(path: Path, folder: Path):
    """DCP's index of the shards, from the safetensors headers (no pickle)."""
    import torch.distributed.checkpoint as dcp

    try:
        return dcp.HuggingFaceStorageReader(str(folder)).read_metadata()
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"checkpoint {path}: its optimizer shards are corrupt or truncated ({e})") from None


def load_optimizer_shards(folder: Path, saved: dict, template: dict) -> dict:
    """The optimizer state dict train_state's `saved` describes, its tensors read from the shards
    in `folder` into those of `template` (this run's own sharded state dict), in place. DCP
    reshards: any world size and parallel mode reads them, one process without a process group too."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    ours: dict[str, torch.Tensor] = {}
    flatten_tensors(template, ours, "optimizer", take=_same)
    reader = dcp.HuggingFaceStorageReader(str(folder))
    try:
        # the saved tensors only: the template has state for every parameter, the run saved none
        # for those that never had a gradient (memory weights a baseline schedule does not read)
        wanted = {name: ours[name] for name in _shard_names(saved["state_dict"])}
        with warnings.catch_warnings():  # DCP warns that one process reads alone: here it means to
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(wanted, storage_reader=reader, no_dist=not dist.is_initialized())
        return _map_shards(saved["state_dict"], wanted.__getitem__)
    except (CheckpointException, KeyError) as e:  # a tensor one side has and the other lacks
        raise ValueError(
            f"checkpoint {folder.parent}: its optimizer state does not fit this run ({_dcp_error(e)})"
        ) from None


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
