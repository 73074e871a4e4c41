"""A run folder belongs to one run, and to one process at a time.

A training holds an exclusive lock on `<run>/.lock` for as long as it lives (released by the
operating system if the process dies), so a second training of the same folder stops at once.
A fresh run refuses a folder that holds another run's files; a resumed run continues in its own
folder or forks into one that holds no run (`--resume A --out B`).

Nothing is written through a symbolic link inside a run folder: a shared folder (a tarball keeps
links) could otherwise make lrt overwrite any file its user can write. The lock is opened without
following links, and the folder's files are checked when it is locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from datetime import datetime, timezone
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

    def acquire(self, wait: float = 0.0) -> "RunFolder":
        """Create the folder and lock it; another process holding it is an error (after waiting up
        to `wait` seconds for it to let go). A symbolic link among its files is an error."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        lock = _open_unlinked(self.path / ".lock")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                lock.seek(0)
                holder = lock.read().strip() or "?"
                lock.close()
                raise ValueError(f"{self.path} is in use by another {self.user} (pid {holder})") from None
        try:
            refuse_links(self.path)
        except ValueError:
            lock.close()
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        checkpoint.recover(self.path)  # under the lock: no save is in flight
        return self

    def set_aside_after(self, step: int) -> Path | None:
        """Rewinding (resuming from an earlier checkpoint of this run): the checkpoints after `step`
        and the metrics that led to them are another trajectory. They move to
        abandoned/from_step_<step>_<time>/, so the checkpoints left are the new trajectory's (what
        eval, generate and --resume read) and pruning never deletes the new work. Where they went,
        or None when nothing came after `step`. Call with the folder locked."""
        later = [p for p in checkpoint.list_checkpoints(self.path) if checkpoint.checkpoint_step(p) > step]
        if not later:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = self.path / "abandoned" / f"from_step_{step:06d}_{stamp}"
        (aside / "checkpoints").mkdir(parents=True)
        metrics = self.path / "metrics.jsonl"
        if metrics.exists():
            shutil.copy2(metrics, aside / "metrics.jsonl")
        for path in later:
            path.rename(aside / "checkpoints" / path.name)
        return aside

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


def _open_unlinked(path: Path):
    """`path` opened for reading and writing (created if missing), refusing a symbolic link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: lrt never writes through a link in a run folder") from None
        raise
    return os.fdopen(fd, "r+")


def refuse_links(folder: Path) -> None:
    """A symbolic link among a run folder's files, its checkpoints or their files is an error."""
    for place in [folder, folder / "checkpoints", *checkpoint.list_checkpoints(folder)]:
        for entry in place.iterdir() if place.is_dir() else ():
            if entry.is_symlink():
                raise ValueError(f"{entry} is a symbolic link: lrt never writes through a link in a run folder")
