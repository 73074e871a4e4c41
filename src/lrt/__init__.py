"""lrt: the Latent Recurrent Transformer (arXiv 2605.26797) in PyTorch."""

from .attention import attention_backend, set_attention_backend, use_attention_backend
from .config import LRTConfig
from .decoding import DecodeState, Generation
from .evaluate import BPBResult, evaluate_bpb
from .evaluate.core import CoreResult, evaluate_core
from .model import LRT, ParameterCounts, parameter_counts
from .schedules import Baseline, Chunked, Interleaved, MultiRefine, Schedule, ScheduleOutput, Sequential, Step
from .train import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "LRT",
    "LRTConfig",
    "DecodeState",
    "Generation",
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
    "TrainConfig",
    "attention_backend",
    "set_attention_backend",
    "use_attention_backend",
]
