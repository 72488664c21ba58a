"""Where a run's wall-clock time goes: seconds per named section, exclusive of nested sections.

The training loop wraps its phases (``data``, ``steps``, ``validation``, ``checkpoints``, ``exports``) so
that every run's metrics and summary show the overhead without a profiler. On a GPU, a step's queued
kernels are paid for where the host next waits for them (the loop's periodic read of the step sums),
which is inside ``steps`` too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class WallClock:
    """Accumulates seconds per section; time spent in a nested section is not counted in its parent."""

    def __init__(self, seconds: dict[str, float] | None = None):
        # Updated in place: pass a dict that is saved with the training state to carry totals over resumes.
        self.seconds: dict[str, float] = seconds if seconds is not None else {}
        self._open: list[str] = []

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        parent = self._open[-1] if self._open else None
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            elapsed = time.monotonic() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            if parent is not None:  # the parent adds its whole span when it closes: keep it exclusive
                self.seconds[parent] = self.seconds.get(parent, 0.0) - elapsed

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 2) for name, value in sorted(self.seconds.items())}

    def summary(self, total: float) -> str:
        """``steps 1503s (92%), validation 80s (5%), ...`` with the rest of ``total`` as ``other``."""
        parts = dict(self.seconds)
        parts["other"] = max(total - sum(parts.values()), 0.0)
        ranked = sorted(parts.items(), key=lambda kv: -kv[1])
        return ", ".join(
            f"{name} {value:.0f}s ({100 * value / max(total, 1e-9):.0f}%)" for name, value in ranked
        )
