"""Evaluation: bits per byte and CORE, each under a named memory mode (memory.py)."""

from .bpb import BPBResult, evaluate_bpb

__all__ = ["BPBResult", "evaluate_bpb"]
