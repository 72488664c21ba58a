"""One run per output directory: an exclusive, advisory lock on ``<output_dir>/.run.lock``.

Two runs writing the same directory interleave ``metrics.jsonl`` and mix checkpoints and ``config.yaml``,
so the second one must be refused before it writes anything.

We use ``fcntl.flock`` (stdlib) rather than a create-if-absent lock file: the kernel releases the lock when
the holding process dies, however it dies (``kill -9`` included), so a lock can never be left stale, and
there is no pid-reuse race to reason about. The file itself only carries information for people: the
holder writes ``pid``, host and start time into it and empties it on a clean exit. A non-empty file found
by a process that *does* get the lock is therefore the trace of a run that was killed; we report it
("stale lock") and take over. The file is never deleted: removing a lock file while another process has
it open would let a third process lock a different inode.

``flock`` is per open file description, so a second ``RunLock`` on the same directory in the same process
is refused too (what the in-process tests rely on). Network file systems may not honour ``flock``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path

from ..errors import RunLockedError

LOCK_FILE = ".run.lock"


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", errors="replace").strip()


class RunLock:
    """Hold ``<directory>/.run.lock`` from :meth:`acquire` until :meth:`release` (or process exit)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.stale_holder: str | None = None  # what a killed previous holder left in the file
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming the directory and the live holder."""
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or "holder unknown"
            os.close(fd)
            raise RunLockedError(
                f"output_dir {self.directory} is in use by another run ({holder}); wait for it to finish "
                "or choose another output_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self.stale_holder = _read_holder(fd) or None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file (a clean exit leaves no stale-lock trace) and drop the lock. Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(directory: str | os.PathLike, accelerator, log=print) -> RunLock:
    """Lock ``directory`` for this (possibly multi-process) run: the main process holds the lock and every
    process raises :class:`RunLockedError` when another run has it, so no rank is left waiting."""
    lock = RunLock(directory)
    error = None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except RunLockedError as err:
            error = err
    if accelerator.num_processes > 1:
        import torch

        failed = accelerator.reduce(
            torch.tensor([float(error is not None)], device=accelerator.device), "max"
        )
        if error is None and failed.item() > 0:
            lock.release()
            error = RunLockedError(f"output_dir {lock.directory} is in use by another run")
    if error is not None:
        raise error
    if lock.stale_holder:
        log(
            f"stale lock in {lock.directory} taken over: its holder ({lock.stale_holder}) ended without "
            "releasing it (killed?)"
        )
    return lock
