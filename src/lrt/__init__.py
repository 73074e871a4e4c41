"""lrt: the Latent Recurrent Transformer (arXiv 2605.26797) in PyTorch."""

from .config import LRTConfig
from .decoding import Decoder, DecodeState, Generation, generate
from .evaluate import BPBResult, evaluate_bpb
from .evaluate.core import CoreResult, evaluate_core
from .memory import MEMORY_MODES, Memory, Reading, read
from .model import LRT, ParameterCounts, parameter_counts
from .presets import PRESETS, VARIANTS
from .schedules import (
    Baseline,
    Chunked,
    Interleaved,
    Jacobi,
    MultiRefine,
    Schedule,
    ScheduleOutput,
    Sequential,
    Step,
    parse_schedule,
)
from .train.config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "LRT",
    "LRTConfig",
    "PRESETS",
    "VARIANTS",
    "Decoder",
    "generate",
    "DecodeState",
    "Generation",
    "MEMORY_MODES",
    "Memory",
    "Reading",
    "read",
    "BPBResult",
    "evaluate_bpb",
    "CoreResult",
    "evaluate_core",
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
    "Jacobi",
    "parse_schedule",
    "TrainConfig",
]
