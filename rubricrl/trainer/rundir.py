"""The run directory (``trainer.out_dir``): it belongs to one run, written by one process.

Layout::

    metrics.jsonl   one record per step (rubricrl.trainer.metrics)
    metrics.png     the end-of-run plot
    checkpoints/    step_NNNNNN/ and ``latest`` (rubricrl.trainer.checkpoint)
    .lock           held (``fcntl.flock``) by the process writing the run

Rules, enforced by :meth:`RunDir.claim` before anything expensive happens:

* one writer: the lock is an exclusive ``flock`` on an open file, held for the run's
  lifetime. The kernel drops it when the process ends, however it ends (SIGKILL
  included), so a crashed run never leaves it stuck; the file itself may stay.
* one run: a new run refuses a directory that already holds files (other than the
  lock file), unless told to overwrite, which removes the previous run's files first
  (and refuses to touch files that are not a run's), so metrics and checkpoints of two
  runs never mix. Continuing a run is ``--resume`` (``Trainer.from_checkpoint``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path
from typing import IO

__all__ = ["LOCK_NAME", "RUN_ENTRIES", "RunDir", "RunDirError"]

LOCK_NAME = ".lock"
#: Every entry a run writes in its directory; ``--overwrite`` removes these and nothing else.
RUN_ENTRIES = frozenset({"metrics.jsonl", "metrics.jsonl.tmp", "metrics.png", "checkpoints", LOCK_NAME})


class RunDirError(ValueError):
    """The run directory cannot be used as asked (one line naming the directory)."""


class RunDir:
    """A run directory and its writer's lock. Use :meth:`claim`; :meth:`release` at the end."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    # ---- claiming --------------------------------------------------------------------

    @classmethod
    def claim(cls, path: str | Path, *, mode: str = "new") -> RunDir:
        """Create/lock ``path`` for a run and check it fits ``mode``.

        Args:
            path: the run directory (created if missing).
            mode: ``"new"`` (must hold no run's files), ``"overwrite"`` (the previous run's
                files are removed), ``"resume"`` (the run's files are kept).

        Raises:
            RunDirError: ``path`` is a file, cannot be created, is locked by another
                process, holds a run (``new``) or holds files that are not a run's (``overwrite``).
        """
        if mode not in ("new", "overwrite", "resume"):
            raise ValueError(f"mode must be 'new', 'overwrite' or 'resume', got {mode!r}")
        run = cls(path)
        run.lock()
        try:
            entries = run.entries()
            if mode == "new" and entries:
                raise RunDirError(
                    f"{run.path} already holds a run ({_listing(entries)}): continue it with --resume {run.path}, "
                    "or start over with --overwrite (which deletes it)"
                )
            if mode == "overwrite":
                run.clear()
        except BaseException:
            run.release()
            raise
        return run

    def entries(self) -> list[str]:
        """Names in the directory other than the lock file, sorted."""
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME)

    def clear(self) -> None:
        """Remove the previous run's files (the lock must be held).

        Raises:
            RunDirError: the directory holds files a run does not write (nothing is removed).
        """
        self._require_lock()
        entries = self.entries()
        foreign = [e for e in entries if e not in RUN_ENTRIES]
        if foreign:
            raise RunDirError(
                f"{self.path} holds files that are not a rubricrl run's ({_listing(foreign)}); "
                "--overwrite only replaces a run: choose another --out"
            )
        for name in entries:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    # ---- the lock --------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def lock(self) -> None:
        """Take the writer's lock (no-op if this object holds it).

        Raises:
            RunDirError: another process (or another RunDir of this one) holds it, or the
                directory cannot be created.
        """
        if self._lock is not None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a directory: the run directory (--out) must be a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # No O_TRUNC: the holder's pid must stay readable until the lock is ours.
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(f"{self.path}: cannot create the run directory (a parent is a file)") from None
        except OSError as err:
            raise RunDirError(f"{self.path}: cannot create the run directory ({err.strerror})") from None
        fh = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read().strip()
            fh.close()
            raise RunDirError(
                f"{self.path} is in use by another run{f' ({holder})' if holder else ''}: "
                "wait for it to finish, or choose another --out"
            ) from None
        except BaseException:
            fh.close()
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        """Drop the lock (the lock file stays; it is harmless to the next run)."""
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def _require_lock(self) -> None:
        if self._lock is None:
            raise RuntimeError(f"{self.path}: the run directory's lock is not held")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, locked={self.locked})"


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")
