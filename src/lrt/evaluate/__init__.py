"""Evaluation: bits per byte three ways."""

from .bpb import BPBResult, evaluate_bpb

__all__ = ["BPBResult", "evaluate_bpb"]
