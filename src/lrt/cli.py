"""The `lrt` command line. Each subcommand is a thin layer over the Python API; a bad input
gives one line on stderr and exit code 2 (set LRT_DEBUG=1 for the traceback)."""

from __future__ import annotations

import argparse
import os
import sys

from .config import LRTConfig
from .model import parameter_counts


def cmd_params(args) -> None:
    variants = {"baseline": dict(injection="none"), "LRT-shared": {}, "LRT-layerwise": dict(projection="layerwise")}
    counts = {
        name: parameter_counts(
            LRTConfig.from_depth(args.depth, vocab_size=args.vocab_size, value_embeds=args.value_embeds, **overrides)
        )
        for name, overrides in variants.items()
    }
    print(f"depth {args.depth}, vocab {args.vocab_size}, value embeddings: {args.value_embeds}")
    print(f"{'variant':<16}{'total':>16}{'pathway':>14}{'share':>9}")
    for name, c in counts.items():
        print(f"{name:<16}{c.total:>16,}{c.pathway:>14,}{100 * c.share:>8.3f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrt", description="Latent Recurrent Transformer")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="parameter counts of baseline, LRT-shared and LRT-layerwise at a depth")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--value-embeds", choices=["none", "alternating", "all"], default="all")
    p.set_defaults(run=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("LRT_DEBUG"):
            raise
        print(f"lrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
