"""The `lrt` command line: parsing and dispatch only, one module per command group (train: making a
model and its data; models: reading one; experiments: comparing LRT with its baseline); what each
command does lives beside what it describes. A bad input gives one line on stderr and exit code 2
(LRT_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import os
import sys
import time

from ..runtime import keep_freed_memory
from ..train import distributed
from ..train.distributed import QuietExit
from ..train.trainer import Interrupted
from . import experiments, models, train
from .args import Parser, UsageError
from .train import train_config_from_args  # noqa: F401  (the Python face of `lrt train`'s flags)


def build_parser() -> Parser:
    parser = Parser(prog="lrt", description="Latent Recurrent Transformer: train, evaluate, generate")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (train, models, experiments):
        group.add_commands(sub)
    return parser


SPEAKER_GRACE_S = 3.0


def debug() -> bool:
    """LRT_DEBUG=1 (anything but empty or 0) shows tracebacks instead of one-line errors."""
    return os.environ.get("LRT_DEBUG", "0") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C). Under
    torchrun every rank exits so, and rank 0 alone prints the line."""
    keep_freed_memory()
    command, speaks = "lrt", distributed.launch().main

    def say(text: str) -> None:
        if speaks:
            print(text, file=sys.stderr)
        else:  # torchrun stops every rank at the first exit: leave rank 0 the time to print why
            time.sleep(SPEAKER_GRACE_S)

    try:
        args = build_parser().parse_args(argv)
        command = f"lrt {args.command}"
        args.run(args)
    except UsageError as e:
        say(str(e))
        return 2
    except QuietExit:  # another rank failed and says why
        return 2
    except Interrupted as e:
        say(f"{command}: {e}")
        return 130
    except KeyboardInterrupt:
        say(f"{command}: interrupted")
        return 130
    except (ValueError, OSError) as e:  # bad input, and what the machine refuses (a full disk, a path)
        if debug():
            raise
        say(f"{command}: error: {' '.join(str(e).split())}")
        return 2
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
