"""A run folder belongs to one run, and to one process at a time.

A training holds an exclusive lock on `<run>/.lock` for as long as it lives (released by the
operating system if the process dies), so a second training of the same folder stops at once.
A fresh run refuses a folder that holds another run's files; a resumed run continues in its own
folder or forks into one that holds no run (`--resume A --out B`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from . import checkpoint

RUN_FILES = ("metrics.jsonl", "train_config.json")


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES) or bool(checkpoint.list_checkpoints(folder))


class RunFolder:
    def __init__(self, path: str | Path, user: str = "training"):
        self.path = Path(path)
        self.user = user  # what holds the folder, for the message a second one gets
        self._lock = None

    def acquire(self) -> "RunFolder":
        """Create the folder and lock it; another process holding it is an error."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise ValueError(f"{self.path} is in use by another {self.user} (pid {holder})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        checkpoint.recover(self.path)  # under the lock: no save is in flight
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    def check_owner(self, resumed_from: Path | None) -> None:
        """A fresh run needs a folder without a run; a resumed one its own, or one without a run."""
        own = resumed_from is not None and self.path.resolve() == resumed_from.resolve()
        if not own and holds_a_run(self.path):
            hint = f"resume it with --resume {self.path}" if resumed_from is None else "give an empty --out to fork"
            raise ValueError(
                f"{self.path} holds another run (checkpoints, metrics.jsonl or train_config.json): "
                f"{hint}, or choose another --out"
            )
