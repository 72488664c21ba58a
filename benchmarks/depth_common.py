"""What the two depth benchmarks share: run summaries, a results file that grows run by run, tables, plots.

A 10,000-layer probe takes minutes per model on two CPU cores, so a benchmark is usually run in several
invocations (one per depth or variant). Each finished run is merged into ``results.json`` at once
(atomically), keyed by ``(depth, variant)``; the tables and the plot are always rebuilt from the whole
file, so they show every run made so far with the same settings.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fixup_transformer.diagnostics import (
    DiagnosticsRun,
    atomic_write_json,
    atomic_write_text,
    divergence_step,
    first_nonfinite_step,
    require_pyplot,
    rows_to_csv,
    save_figure,
)

DIVERGENCE_FACTOR = 2.0


def summarize(
    run: DiagnosticsRun, depth: int, variant: str, depth_label: str, **extra: Any
) -> dict[str, Any]:
    """One result row: losses and gradient norms per step, divergence, and the per-layer picture at init."""
    losses, grads = run.losses, run.grad_norms
    finite = [v for v in losses if math.isfinite(v)]
    # A step whose loss is finite but whose gradient is not also stops the run (record_training): non-finite.
    nonfinite = first_nonfinite_step(
        [v if math.isfinite(g) else math.nan for v, g in zip(losses, grads, strict=True)]
    )
    diverged_at = min(
        (s for s in (divergence_step(losses, DIVERGENCE_FACTOR), nonfinite) if s is not None), default=None
    )
    init = run.records[0]
    timed = [r.seconds for r in run.records[1:]] or [init.seconds]
    return {
        "depth": depth,
        "depth_label": depth_label,
        "variant": variant,
        **extra,
        "recorded_steps": len(losses) - 1,
        "stopped_by_time_limit": run.meta.get("stopped_by_time_limit", False),
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "min_loss": min(finite) if finite else math.nan,
        "loss_decreased": bool(math.isfinite(losses[-1]) and losses[-1] < losses[0]),
        "initial_grad_norm": grads[0],
        "max_grad_norm": max(grads, key=lambda v: v if math.isfinite(v) else math.inf),
        "first_nonfinite_step": nonfinite,
        "diverged": diverged_at is not None,
        "divergence_step": diverged_at,
        "init_activation_rms_first_layer": init.activation_rms[0],
        "init_activation_rms_last_layer": init.activation_rms[-1],
        "init_activation_rms_max": max(
            init.activation_rms, key=lambda v: v if math.isfinite(v) else math.inf
        ),
        "seconds_per_step": sum(timed) / len(timed),
        "losses": losses,
        "grad_norms": grads,
        "init_activation_rms": init.activation_rms,
        "init_layer_grad_norms": init.layer_grad_norms,
    }


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
    }


class ResultsFile:
    """``results.json``: ``{"settings": ..., "runs": [...]}``; a run replaces an earlier one of the same key.

    Runs made with different settings must not be mixed in one table, so merging into a file whose
    settings differ is refused (start a fresh output directory or pass ``--fresh``).
    """

    def __init__(self, path: Path, settings: dict[str, Any], fresh: bool = False) -> None:
        self.path = path
        self.settings = settings
        self.runs: list[dict[str, Any]] = []
        if path.is_file() and not fresh:
            stored = json.loads(path.read_text())
            if stored.get("settings") != json.loads(json.dumps(settings)):
                raise SystemExit(
                    f"{path} holds runs made with other settings:\n  {stored.get('settings')}\nvs now\n  "
                    f"{settings}\nUse another --output-dir or --fresh."
                )
            self.runs = [_restore_floats(r) for r in stored["runs"]]

    def add(self, result: dict[str, Any]) -> None:
        key = (result["depth"], result["variant"])
        self.runs = [r for r in self.runs if (r["depth"], r["variant"]) != key] + [result]
        self.runs.sort(key=lambda r: (r["depth"], r["variant"]))
        atomic_write_json(
            self.path, {"settings": self.settings, "environment": environment(), "runs": self.runs}
        )


def _restore_floats(value: Any) -> Any:
    """Undo ``json_safe``: the strings "inf"/"-inf"/"nan" back to floats."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _restore_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_floats(v) for v in value]
    return value


def fmt(value: Any) -> str:
    """4 significant digits; inf/nan spelled out; None as a dash; booleans as yes/no."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns``: (key, header) pairs."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def with_common_step(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``common_step`` / ``loss_at_common_step``: the loss at the last step every run of that depth reached.

    Runs of one depth can stop at different steps (a time limit on a shared machine), so their final
    losses are not comparable; the losses at the common step are. Runs that hit inf/nan do not shorten
    the common step (they show inf/nan there instead of a loss).
    """
    out = []
    for run in runs:
        peers = [r for r in runs if r["depth"] == run["depth"] and r["first_nonfinite_step"] is None]
        common = min((r["recorded_steps"] for r in peers), default=run["recorded_steps"])
        losses = run["losses"]
        loss = losses[common] if common < len(losses) else math.nan
        out.append({**run, "common_step": common, "loss_at_common_step": loss})
    return out


def write_summary_tables(
    runs: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out_dir: Path
) -> str:
    """``summary.csv`` and ``summary.md`` (scalar columns only); returns the Markdown table."""
    runs = with_common_step(runs)
    table = markdown_table(runs, columns)
    atomic_write_text(out_dir / "summary.md", table)
    keys = [k for k, _ in columns]
    atomic_write_text(out_dir / "summary.csv", rows_to_csv([{k: r.get(k) for k in keys} for r in runs], keys))
    return table


def _positive(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) and v > 0 else math.nan for v in values]


def plot_depth_grid(
    runs: Sequence[dict[str, Any]], variants: Sequence[str], path: Path, title: str, layer_axis: str
) -> Path:
    """One column per depth; rows: training loss, global grad norm, per-layer output RMS at init (all log).

    A run that hit inf/nan gets an ``x`` at its last finite point and the step in its legend label.
    """
    plt = require_pyplot()
    depths = sorted({r["depth"] for r in runs})
    fig, axes = plt.subplots(3, len(depths), figsize=(3.3 * len(depths), 8), squeeze=False)
    colors = dict(
        zip(variants, ("tab:green", "tab:red", "tab:blue", "tab:orange", "tab:purple"), strict=False)
    )
    for col, depth in enumerate(depths):
        for run in (r for r in runs if r["depth"] == depth):
            color = colors.get(run["variant"], "black")
            label = run["variant"]
            if run["first_nonfinite_step"] is not None:
                label += f" (nan/inf @ step {run['first_nonfinite_step']})"
            elif run["diverged"]:
                label += f" (diverged @ step {run['divergence_step']})"
            losses = [v if math.isfinite(v) else math.nan for v in run["losses"]]
            axes[0][col].plot(range(len(losses)), losses, color=color, label=label, lw=1.2)
            finite = [i for i, v in enumerate(losses) if not math.isnan(v)]
            if run["first_nonfinite_step"] is not None and finite:
                axes[0][col].plot(finite[-1], losses[finite[-1]], "x", color=color, ms=8)
            axes[1][col].plot(
                range(len(run["grad_norms"])), _positive(run["grad_norms"]), color=color, lw=1.2
            )
            rms = _positive(run["init_activation_rms"])
            axes[2][col].plot(range(len(rms)), rms, color=color, lw=1.0)
        axes[0][col].set_title(runs_label(runs, depth), fontsize=9)
        axes[0][col].legend(fontsize=6.5, loc="best")
        axes[0][col].set_xlabel("step")
        axes[0][col].set_yscale("log")
        axes[1][col].set_xlabel("step")
        axes[1][col].set_yscale("log")
        axes[2][col].set_yscale("log")
        axes[2][col].set_xlabel(layer_axis)
        for row in axes:
            row[col].grid(True, alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("global grad norm")
    axes[2][0].set_ylabel("layer output RMS at init")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=75)


def runs_label(runs: Sequence[dict[str, Any]], depth: int) -> str:
    return next(r["depth_label"] for r in runs if r["depth"] == depth)


def print_result(label: str, result: dict[str, Any]) -> None:
    """One line per finished run, as both depth sweeps print it."""
    print(
        f"{label} loss {result['initial_loss']:.4g} -> {result['final_loss']:.4g} "
        f"(min {result['min_loss']:.4g}) grad norm @0 {result['initial_grad_norm']:.4g} "
        f"max {result['max_grad_norm']:.4g} first inf/nan {result['first_nonfinite_step']} "
        f"diverged@ {result['divergence_step']} {result['seconds_per_step']:.2f} s/step",
        flush=True,
    )


def write_report(
    runs: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    output_dir: Path,
    variants: Sequence[str],
    plot: Path | None,
    title: str,
    xlabel: str,
) -> None:
    """Summary tables (printed and written) and, unless ``plot`` is None, the per-depth plot grid."""
    print(write_summary_tables(runs, columns, output_dir))
    if plot is not None and runs:
        print(f"plot: {plot_depth_grid(runs, list(variants), plot, title, xlabel)}")
