"""What every command group shares: one-line usage errors, argument types that reject a bad value
before anything runs, flags derived from a settings dataclass, and the --json output."""

from __future__ import annotations

import argparse
import json
import os
import typing
from pathlib import Path

from ..train.config import flag_fields


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is under --help)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


# argument types: a value out of range is a one-line usage error before anything runs ---------


def _typed(kind, need: str, ok):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")
        return value

    return parse


positive_int = _typed(int, "a positive integer", lambda v: v >= 1)
natural = _typed(int, "an integer >= 0", lambda v: v >= 0)
row_length = _typed(int, "an integer >= 2", lambda v: v >= 2)
port_number = _typed(int, "a port from 1 to 65535", lambda v: 1 <= v <= 65535)
positive_number = _typed(float, "a finite number > 0", lambda v: 0 < v < float("inf"))
# an empty --host binds every interface and an empty --name names the model "": neither is meant
word = _typed(str.strip, "a non-empty word", lambda v: v != "" and " " not in v)
positive_ints = _typed(
    lambda t: [int(x) for x in t.split(",")], "comma-separated positive integers", lambda v: all(x >= 1 for x in v)
)


def _writable_file(text: str) -> Path:
    """An output file we may write: not a folder, not under a file, and permitted; checked before the
    work runs, so a long evaluation never ends in a failed write."""
    path = Path(text)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if path.is_dir() or not ancestor.is_dir():
        raise ValueError
    if not os.access(path if path.exists() else ancestor, os.W_OK):
        raise ValueError
    return path


output_file = _typed(_writable_file, "a writable file path (not a folder, not under a file)", lambda v: True)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1))


def add_config_flags(p: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """A flag per field of `cls` that has help metadata. No defaults here: the config holds them,
    so we know which flags were given (they override a resumed run's config)."""
    for f, typ in flag_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=f.metadata["help"])
        if typ is bool:  # a switch away from the default: --compile, --no-final-decode
            name, action = (f"--no-{flag[2:]}", "store_false") if f.default else (flag, "store_true")
            p.add_argument(name, action=action, **kw)
        elif typing.get_origin(typ) is list:  # --exact-at 100 200
            p.add_argument(flag, type=positive_int, nargs="+", metavar="STEP", **kw)
        else:
            p.add_argument(flag, type=typ, choices=f.metadata.get("choices"), **kw)


def keywords(args: argparse.Namespace, *names: str) -> dict:
    """The named arguments as keyword arguments, for a function whose parameters share their names."""
    return {name: getattr(args, name) for name in names}


def device_and_json(p: argparse.ArgumentParser) -> None:
    """The two options every reading command shares."""
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=output_file, metavar="PATH", help="also write the numbers as JSON")
