"""lrt: the Latent Recurrent Transformer (arXiv 2605.26797) in PyTorch."""

from .config import LRTConfig
from .decoding import DecodeState
from .model import LRT, ParameterCounts, parameter_counts
from .schedules import Baseline, Chunked, Interleaved, MultiRefine, Schedule, ScheduleOutput, Sequential, Step

__version__ = "0.1.0"

__all__ = [
    "LRT",
    "LRTConfig",
    "DecodeState",
    "ParameterCounts",
    "parameter_counts",
    "Schedule",
    "ScheduleOutput",
    "Step",
    "Baseline",
    "Interleaved",
    "MultiRefine",
    "Chunked",
    "Sequential",
]
