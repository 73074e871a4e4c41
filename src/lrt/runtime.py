"""Where a run executes: the device a name means, and the one process setting of CPU runs.

glibc's malloc returns large freed blocks to the operating system and takes them back on the
next step, so every training step pays page faults for its activations (measured on the demo
model: about 25k faults and 5% of an interleaved step). Raising its mmap and trim thresholds
keeps the freed memory in the process for the next step. The CLI calls this once; it changes
no numerics, only where memory comes from, and is a no-op off glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

import torch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap is kept


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):
        return False


def resolve_device(name: str) -> torch.device:
    """ "auto" is CUDA where there is a GPU, else the CPU; "cpu", "cuda[:N]" and "mps" must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {name!r} is not a device torch knows ({e})") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ValueError(f"device {name!r} is not available on this machine (use auto, cpu, cuda[:N] or mps)")
    return device


# dense bf16 peaks from the datasheets: MFU's denominator
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def known_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPUs whose datasheet we know (MFU's denominator)."""
    name = device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


# graphs one compiled function may hold. A compiled block holds one per layer kind x pass kind,
# and every model of the process shares Block.forward's cache (a baseline beside an LRT model in
# bench or a study), as every model shares the decoding step's; past dynamo's default of 8 the
# rest would run eagerly without a word
GRAPHS_PER_FUNCTION = 64


@contextlib.contextmanager
def room_for_graphs(limit: int = GRAPHS_PER_FUNCTION):
    """Let compiled functions called inside hold up to `limit` graphs; the process's setting is
    back when the block ends (set and restored directly: dynamo's config.patch costs ~0.2 ms)."""
    config = torch._dynamo.config
    before = config.recompile_limit
    config.recompile_limit = max(before, limit)
    try:
        yield
    finally:
        config.recompile_limit = before
