"""Metrics: a JSON-lines file (the record tests and plots read) plus Accelerate trackers.

Each record is one line written with a single ``write`` + ``fsync`` on an ``O_APPEND`` file, so a crash
loses at most the line being written and never interleaves two records. On resume,
:meth:`MetricsWriter.truncate_after` drops records newer than the checkpoint being resumed, so the file
reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; write them as strings so the line stays parseable by strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


class MetricsWriter:
    """Append-only JSON-lines log; a no-op on non-main processes (``enabled=False``)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate_after(self, step: int, drop_at_step: tuple[str, ...] = ()) -> None:
        """Keep only records with ``step <= step`` (atomic rewrite); used when resuming from ``step``.

        ``drop_at_step``: record kinds that the resumed run writes again at ``step`` itself (e.g. the end of
        run of a run stopped by its time budget), dropped there too."""
        if not self.enabled or not self.path.exists():
            return
        records = read_metrics(self.path)
        kept = [
            r
            for r in records
            if r.get("step", 0) < step or (r.get("step", 0) == step and r.get("kind") not in drop_at_step)
        ]
        if len(kept) == len(records):
            return  # untouched: a rerun of a finished run must not even rewrite the file
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """All records of a metrics file (optionally only those with ``record["kind"] == kind``).

    A truncated last line (crash mid-write) is ignored.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or record.get("kind") == kind:
                records.append(record)
    return records


def available_trackers(requested: list[str]) -> list[str]:
    """The requested Accelerate trackers that are installed (``"tensorboard"`` needs tensorboard)."""
    from accelerate.utils import is_tensorboard_available

    checks = {"tensorboard": is_tensorboard_available}
    return [name for name in requested if checks.get(name, lambda: True)()]


def tracker_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to the scalar/str values trackers accept as hyper-parameters."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
