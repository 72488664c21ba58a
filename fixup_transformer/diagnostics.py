"""Per-layer signal-propagation diagnostics: activation scale and gradient norm of every residual layer.

Fixup's claim is about what happens *before* training gets going: at init, a deep residual network without
normalization either keeps every layer's output at O(1) scale and its gradients bounded (Fixup), or the
scale compounds with depth until the forward pass overflows or the first updates blow the model up
(standard He/Xavier init). The quantities that show this are

- the RMS of each residual layer's output (a forward hook on the layer module), and
- the L2 norm of the gradient of each layer's parameters,

recorded at init (step 0, before any update) and after each of the first few optimizer steps. This module
finds the residual layers of any model of this package, records those quantities while it trains, and
writes them as a long table (one row per step and layer, CSV and JSON) and a PNG plot.

Row ``step = k`` holds the forward/backward pass made with the parameters after ``k`` updates, so
``step = 0`` is the network exactly at init.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic_files import atomic_write_text, replacing

TABLE_COLUMNS = ("step", "layer_index", "layer", "activation_rms", "grad_norm", "loss")

# ---------------------------------------------------------------------------------------------------------
# Which modules are "residual layers"
# ---------------------------------------------------------------------------------------------------------


def residual_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual layers of a model of this package, input to output, as ``(name, module)``.

    Transformer: every encoder layer, then every decoder layer (``model.model.encoder.layers[i]``,
    ``model.model.decoder.layers[i]``); each holds 2 (encoder) or 3 (decoder) residual branches.
    ResNet: every block of every stage. Anything else raises, naming what was found, rather than
    silently recording nothing.
    """
    from .text.modeling_fixup_transformer import FixupDecoderLayer, FixupEncoderLayer
    from .vision.modeling_fixup_resnet import FixupBasicBlock, FixupBottleneck

    layer_types = (FixupEncoderLayer, FixupDecoderLayer, FixupBasicBlock, FixupBottleneck)
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, layer_types)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no residual layers this module knows (Fixup Transformer encoder/"
            "decoder layers or Fixup ResNet blocks); pass `layers=` explicitly for other models."
        )
    return layers


def _first_tensor(output: Any) -> torch.Tensor:
    """A layer's output tensor (decoder layers return a tensor; some modules return tuples)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a tensor in a layer output of type {type(output).__name__}")


class LayerRecorder:
    """Forward hooks that keep the RMS of each layer's output from the most recent forward pass.

    Use as a context manager so the hooks are always removed. The RMS is taken over every element of the
    output (for the Transformer that includes padded positions, whose states are as large as the others).
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        self.names = [name for name, _ in layers]
        self.modules = [module for _, module in layers]
        self._rms: list[torch.Tensor | None] = [None] * len(layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerRecorder:
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = _first_tensor(output).detach()
            self._rms[index] = out.float().pow(2).mean().sqrt()

        return hook

    def activation_rms(self) -> list[float]:
        """RMS of each layer's output in the last forward pass (NaN for a layer that did not run)."""
        return [math.nan if r is None else float(r) for r in self._rms]

    def gradient_norms(self) -> list[float]:
        """L2 norm of the gradient of each layer's parameters (0 for a layer without gradients)."""
        return [grad_norm(module.parameters()) for module in self.modules]


def grad_norm(parameters: Any) -> float:
    """L2 norm over the ``.grad`` of ``parameters`` (inf/nan propagate, as they should here)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))


# ---------------------------------------------------------------------------------------------------------
# Recording a short training run
# ---------------------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """One forward/backward pass: the loss, the global gradient norm and the per-layer values."""

    step: int
    loss: float
    grad_norm: float
    activation_rms: list[float]
    layer_grad_norms: list[float]
    seconds: float


@dataclass
class DiagnosticsRun:
    """Everything recorded in one run; ``meta`` describes the model and the setup (free-form)."""

    layer_names: list[str]
    records: list[StepRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [r.loss for r in self.records]

    @property
    def grad_norms(self) -> list[float]:
        return [r.grad_norm for r in self.records]

    def rows(self) -> list[dict[str, Any]]:
        """The long table: one row per (step, layer)."""
        return [
            {
                "step": record.step,
                "layer_index": index,
                "layer": name,
                "activation_rms": record.activation_rms[index],
                "grad_norm": record.layer_grad_norms[index],
                "loss": record.loss,
            }
            for record in self.records
            for index, name in enumerate(self.layer_names)
        ]


def first_nonfinite_step(values: Sequence[float]) -> int | None:
    """Index of the first inf/nan value, or None."""
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


def divergence_step(losses: Sequence[float], factor: float = 2.0) -> int | None:
    """First step whose loss is non-finite or above ``factor`` times the initial loss, or None.

    A non-finite *initial* loss counts as divergence at step 0: such a model cannot be trained at all.
    """
    if not losses:
        return None
    if not math.isfinite(losses[0]):
        return 0
    limit = factor * losses[0]
    return next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > limit), None)


def record_training(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    steps: int,
    layers: Sequence[tuple[str, nn.Module]] | None = None,
    stop_on_nonfinite: bool = True,
    progress: bool | str = True,
    meta: dict[str, Any] | None = None,
    max_seconds: float | None = None,
) -> DiagnosticsRun:
    """Train ``model`` for ``steps`` updates on ``batches`` (cycled), recording steps ``0..steps``.

    ``steps + 1`` forward/backward passes are recorded: the one at init and one after each update, so
    the last row shows the model after the final update. ``optimizer=None`` records the init only. Each
    batch is a dict of model inputs including ``labels`` (the model returns ``.loss``). With
    ``stop_on_nonfinite`` the run stops at the first inf/nan loss or gradient: an update from it would
    only turn every parameter into NaN, and the point (the step it broke) is already recorded.
    ``max_seconds`` stops the run (after a completed pass) once that much wall time has gone, for
    probes that must fit a time budget on a shared machine; ``run.meta["stopped_by_time_limit"]``
    then says so and ``len(run.records)`` tells how many passes were made.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not batches:
        raise ValueError("record_training needs at least one batch")
    layers = list(layers) if layers is not None else residual_layers(model)
    run = DiagnosticsRun([name for name, _ in layers], meta=dict(meta or {}))
    passes = steps + 1 if optimizer is not None else 1
    model.train()
    run.meta["stopped_by_time_limit"] = False
    run_started = time.perf_counter()
    desc = progress if isinstance(progress, str) else "diagnostics"
    with LayerRecorder(layers) as recorder:
        for step in tqdm(range(passes), desc=desc, unit="step", disable=progress is False, leave=False):
            started = time.perf_counter()
            model.zero_grad(set_to_none=True)
            loss = model(**batches[step % len(batches)]).loss
            loss.backward()
            record = StepRecord(
                step=step,
                loss=float(loss.detach()),
                grad_norm=grad_norm(model.parameters()),
                activation_rms=recorder.activation_rms(),
                layer_grad_norms=recorder.gradient_norms(),
                seconds=0.0,
            )
            broken = not (math.isfinite(record.loss) and math.isfinite(record.grad_norm))
            if optimizer is not None and step < steps and not (broken and stop_on_nonfinite):
                optimizer.step()
            record.seconds = time.perf_counter() - started
            run.records.append(record)
            if broken and stop_on_nonfinite:
                break
            if (
                max_seconds is not None
                and step < passes - 1
                and time.perf_counter() - run_started > max_seconds
            ):
                run.meta["stopped_by_time_limit"] = True
                break
    model.zero_grad(set_to_none=True)
    return run


# ---------------------------------------------------------------------------------------------------------
# Writing tables (atomically) and plots
# ---------------------------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Replace inf/nan floats by the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    atomic_write_text(path, json.dumps(json_safe(payload), indent=1, allow_nan=False) + "\n")
    return Path(path)


def rows_to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(
    run: DiagnosticsRun, out_dir: str | os.PathLike, stem: str = "diagnostics"
) -> dict[str, Path]:
    """``<stem>.csv`` (the long table) and ``<stem>.json`` (meta, per-step summary and the same rows)."""
    out_dir = Path(out_dir)
    rows = run.rows()
    csv_path = out_dir / f"{stem}.csv"
    atomic_write_text(csv_path, rows_to_csv(rows, TABLE_COLUMNS))
    payload = {
        "meta": run.meta,
        "layers": run.layer_names,
        "steps": [
            {k: v for k, v in asdict(r).items() if k not in ("activation_rms", "layer_grad_norms")}
            for r in run.records
        ],
        "rows": rows,
    }
    json_path = atomic_write_json(out_dir / f"{stem}.json", payload)
    return {"csv": csv_path, "json": json_path}


def require_pyplot():
    """``matplotlib.pyplot`` with a headless backend, or an ImportError that says how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "plotting needs matplotlib, an optional dependency: `pip install matplotlib` "
            "(or `pip install fixup-transformer[plot]`), or skip the plot (--no-plot)."
        ) from err
    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Save a figure as PNG through a temporary file + ``os.replace``, then close it."""
    plt = require_pyplot()
    path = Path(path)
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def _plottable(values: Sequence[float]) -> list[float]:
    """Log axes cannot show inf/nan/0: map them to NaN so matplotlib leaves a gap."""
    return [v if math.isfinite(v) and v > 0 else math.nan for v in values]


def plot_run(run: DiagnosticsRun, path: str | os.PathLike, title: str | None = None) -> Path:
    """PNG: activation RMS and gradient norm against layer index, one line per recorded step."""
    plt = require_pyplot()
    fig, (ax_act, ax_grad) = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("viridis")
    shown = _steps_to_show(len(run.records))
    x = list(range(len(run.layer_names)))
    for i in shown:
        record = run.records[i]
        color = cmap(i / max(1, len(run.records) - 1))
        label = "init" if record.step == 0 else f"step {record.step}"
        ax_act.plot(x, _plottable(record.activation_rms), color=color, label=label, lw=1)
        ax_grad.plot(x, _plottable(record.layer_grad_norms), color=color, label=label, lw=1)
    for ax, ylabel in ((ax_act, "RMS of layer output"), (ax_grad, "grad norm of layer params")):
        ax.set_yscale("log")
        ax.set_xlabel("residual layer (input -> output)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_grad.legend(fontsize=7, loc="best")
    fig.suptitle(title or run.meta.get("title", "per-layer diagnostics"), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _steps_to_show(count: int, most: int = 6) -> list[int]:
    """Up to ``most`` record indices, evenly spread, always including the first and the last."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads.

    Small per-layer ops (narrow convs, d_model 32 linears) run *slower* with several threads on a busy
    machine (thread synchronization dominates), so the depth probes default to one thread.
    """
    if not num_threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = [
    "TABLE_COLUMNS",
    "DiagnosticsRun",
    "LayerRecorder",
    "StepRecord",
    "atomic_write_json",
    "atomic_write_text",
    "divergence_step",
    "first_nonfinite_step",
    "grad_norm",
    "json_safe",
    "plot_run",
    "record_training",
    "require_pyplot",
    "residual_layers",
    "rows_to_csv",
    "save_figure",
    "torch_threads",
    "write_tables",
]
