"""Training curves as one PNG: train/valid loss and valid BLEU, against updates and against minutes.

The MT training loop writes ``<output_dir>/curves.png`` from ``metrics.jsonl`` when a run ends; to look at a
run that is still going (or an older one), re-plot it from the command line:

    python -m fixup_transformer.training.plots runs/multi30k_de_en      # -> runs/multi30k_de_en/curves.png

matplotlib is optional (the ``plot`` / ``dev`` extras): without it the plot is skipped with one log line.
The same numbers go live to TensorBoard (``tensorboard --logdir <output_dir>/logs``) when ``train.trackers``
includes ``tensorboard``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_write_bytes
from .metrics import read_metrics

CURVES_FILE = "curves.png"
METRICS_FILE = "metrics.jsonl"
INSTALL_HINT = "pip install 'fixup-transformer[plot]'"


@dataclass
class Series:
    """One line of a panel: ``values[i]`` measured at update ``steps[i]``, after ``minutes[i]`` of training."""

    label: str
    steps: np.ndarray
    minutes: np.ndarray
    values: np.ndarray


def _number(value: Any) -> float | None:
    # metrics.jsonl stores NaN/inf as strings ("nan"); plot them as gaps rather than dropping the point.
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def training_minutes(steps: Sequence[float], train_records: Sequence[dict]) -> np.ndarray:
    """Training minutes at each update in ``steps``.

    Only train records carry the clock (``train_seconds``); validation happens at updates that need not be
    logged ones, so its time is interpolated between them (update 0 is minute 0).
    """
    known = sorted(
        (r["step"], s) for r in train_records if (s := _number(r.get("train_seconds"))) is not None
    )
    xs = [0.0] + [float(step) for step, _ in known]
    ys = [0.0] + [seconds for _, seconds in known]
    return np.interp(np.asarray(steps, dtype=float), xs, ys) / 60.0


def _series(label: str, records: list[dict], key: str, train_records: list[dict]) -> Series | None:
    points = [(r["step"], v) for r in records if "step" in r and (v := _number(r.get(key))) is not None]
    if not points:
        return None
    steps = np.array([p[0] for p in points], dtype=float)
    return Series(label, steps, training_minutes(steps, train_records), np.array([p[1] for p in points]))


def curve_panels(records: list[dict]) -> dict[str, list[Series]]:
    """Panel title -> its series (empty panels left out): losses together, BLEU on its own."""
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    panels = {
        "loss (label-smoothed, per target token)": [
            _series("train loss", train, "loss", train),
            _series("valid loss", valid, "valid_loss", train),
        ],
        "valid BLEU": [_series("valid BLEU", valid, "valid_bleu", train)],
    }
    return {title: [s for s in lines if s is not None] for title, lines in panels.items() if any(lines)}


def render_curves(panels: dict[str, list[Series]], title: str = "") -> bytes:
    """PNG bytes: one column per panel, rows against updates and against training minutes."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend needed

    fig = Figure(figsize=(5.5 * len(panels), 7.5), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (panel_title, lines) in enumerate(panels.items()):
        for row, (xlabel, attr) in enumerate((("updates", "steps"), ("training minutes", "minutes"))):
            ax = axes[row][col]
            for s in lines:
                # A single validation would be invisible as a line.
                ax.plot(getattr(s, attr), s.values, label=s.label, marker="o" if len(s.values) < 30 else None)
            ax.set_xlabel(xlabel)
            ax.set_title(panel_title)
            ax.grid(alpha=0.3)
            ax.legend()
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_curves(run_dir: str | Path, log: Callable[[str], None] = print) -> Path | None:
    """Plot ``run_dir/metrics.jsonl`` to ``run_dir/curves.png`` (atomically); returns the path, or None if skipped.

    Says in one line, through ``log``, what it wrote or why it skipped (no matplotlib, nothing logged yet).
    """
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log(f"{CURVES_FILE} skipped: matplotlib is not installed ({INSTALL_HINT})")
        return None
    panels = curve_panels(read_metrics(metrics)) if metrics.is_file() else {}
    if not panels:
        log(f"{CURVES_FILE} skipped: no train/valid records in {metrics}")
        return None
    path = run_dir / CURVES_FILE
    atomic_write_bytes(path, render_curves(panels, title=run_dir.name))
    log(f"curves: {path}")
    return path


def try_write_curves(run_dir: str | Path, log: Callable[[str], None] = print) -> Path | None:
    """:func:`write_curves` for the end of a run: a plotting failure is logged, never raised.

    The run's results are already saved by then; a broken font cache or an odd metrics file must not turn a
    finished run into a failed one.
    """
    try:
        return write_curves(run_dir, log)
    except Exception as err:  # noqa: BLE001 (see docstring)
        log(f"{CURVES_FILE} not written: {type(err).__name__}: {err}")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fixup_transformer.training.plots",
        description="Write RUN_DIR/curves.png from RUN_DIR/metrics.jsonl.",
    )
    parser.add_argument("run_dir", help="training output_dir (holds metrics.jsonl)")
    args = parser.parse_args(argv)
    if not (Path(args.run_dir) / METRICS_FILE).is_file():
        print(f"error: no {METRICS_FILE} in {args.run_dir}", file=sys.stderr)
        return 2
    return 0 if write_curves(args.run_dir, log=lambda line: print(line, file=sys.stderr)) else 1


if __name__ == "__main__":
    sys.exit(main())
