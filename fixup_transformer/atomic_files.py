"""Files that readers, and a crash, see whole or not at all: written next to their place, synced, renamed.

Every output of the library (checkpoints, exports, metrics tables, plots, hypotheses) goes through
:func:`replacing`, so a killed run never leaves a half-written file under a name that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable; not supported everywhere (e.g. some network file systems)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def plain_file_mode() -> int:
    """The mode a plain ``open`` gives a new file (0666 & ~umask); ``mkstemp``'s own is 0600."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports it; reading it with os.umask means setting it, briefly, under every other thread.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, it becomes ``path`` in one rename.

    On an error the temporary file is removed and ``path`` keeps its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, plain_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes` (line endings written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))
