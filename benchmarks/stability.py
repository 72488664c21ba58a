"""Stability grid at the standard width: Fixup vs T-Fixup vs the LayerNorm twins, no warmup, fp32 and fp16.

Each cell (variant x depth x lr x warmup x precision x task) trains d_model 512 / 8 heads / FFN 2048 for
``--steps`` plain Adam updates (betas 0.9/0.98, constant lr after an optional linear warmup, no clipping)
on fixed batches, and records first / min / max / last loss, fp16 skipped steps and whether it diverged
(a non-finite loss, or a loss above first + 1.5 nats). See :mod:`fixup_transformer.stability`.

Tasks: ``copy`` (one fixed batch of random tokens, target = source) and ``multi30k`` (real de-en
training batches, a joint SentencePiece vocabulary, cycled). Results accumulate in
``<output-dir>/results.json`` (a cell already there under the same setup is not rerun), then the Markdown table and the plot
are rebuilt. A CPU run of one 12+12 cell takes ~30 s on a quiet 2-core machine; 50+50 cells take minutes.

    python benchmarks/stability.py --layers 6 18 --lrs 5e-4 1e-3 --warmups 0 --precisions fp32 fp16
    python benchmarks/stability.py --report-only
    python benchmarks/stability.py --device cuda --output-dir runs/stability_gpu   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import torch

from fixup_transformer.diagnostics import atomic_write_json, atomic_write_text, require_pyplot, save_figure
from fixup_transformer.paths import shared_data_dir
from fixup_transformer.probe_data import multi30k_batches
from fixup_transformer.stability import (
    OPTIMIZERS,
    PRECISIONS,
    VARIANTS,
    Cell,
    Width,
    copy_task_batches,
    is_stable,
    run_cell,
)

KEY_FIELDS = ("task", "variant", "layers", "lr", "warmup", "precision", "optimizer", "clip_norm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--layers", type=int, nargs="+", default=[6, 18, 50], help="N for N+N")
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3])
    p.add_argument("--warmups", type=int, nargs="+", default=[0], help="linear warmup updates")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "fp16"])
    p.add_argument("--tasks", nargs="+", choices=["copy", "multi30k"], default=["copy", "multi30k"])
    p.add_argument(
        "--optimizers",
        nargs="+",
        choices=sorted(OPTIMIZERS),
        default=["adam"],
        help="radam: T-Fixup's reference",
    )
    p.add_argument(
        "--clip-norms",
        type=float,
        nargs="+",
        default=[0.0],
        help="total gradient norm clip (0: none; T-Fixup's reference run used fairseq's old default, 25)",
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=16, help="copy task: tokens per sequence")
    p.add_argument("--vocab-size", type=int, default=8000, help="copy task vocabulary")
    p.add_argument("--multi30k-vocab", type=int, default=2000, help="SentencePiece pieces for multi30k")
    p.add_argument("--data-dir", type=Path, default=shared_data_dir())
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn-dim", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (fp16 then uses a CUDA GradScaler)")
    p.add_argument("--output-dir", type=Path, default=Path("runs/stability"))
    p.add_argument("--report-only", action="store_true", help="run nothing; rebuild table and plot")
    p.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="other results.json files to merge into this one"
    )
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if min(args.warmups) < 0:
        p.error("--warmups must be >= 0")
    return args


def task_batches(task: str, args: argparse.Namespace) -> tuple[list[dict], int]:
    if task == "copy":
        return copy_task_batches(args.vocab_size, args.batch_size, args.length, count=1), args.vocab_size
    return multi30k_batches(
        args.data_dir, args.batch_size, num_batches=8, vocab_size=args.multi30k_vocab, max_tokens=args.length
    )


def cell_setup(args: argparse.Namespace, vocab: int) -> dict:
    """What else a cell's losses depend on: a cell is reused (or merged) only under the same setup."""
    setup = {"d_model": args.d_model, "heads": args.heads, "ffn_dim": args.ffn_dim, "steps": args.steps}
    return {
        **setup,
        "batch_size": args.batch_size,
        "length": args.length,
        "vocab": vocab,
        "device": args.device,
    }


def same_cell(a: dict, b: dict) -> bool:
    """The same grid cell under the same setup, compared on the setup fields both record (older files
    record only width and steps)."""
    if any(a[k] != b[k] for k in KEY_FIELDS):
        return False
    setup_a, setup_b = a.get("setup") or {}, b.get("setup") or {}
    return all(setup_a[k] == setup_b[k] for k in setup_a.keys() & setup_b.keys())


def setup_label(result: dict) -> str:
    s = result.get("setup") or {}
    return " ".join(f"{k} {s[k]}" for k in ("d_model", "steps", "batch_size", "vocab") if k in s)


def label(result: dict) -> str:
    """The variant, with the optimizer and the clip where they are not the grid's plain, unclipped Adam."""
    parts = [result["variant"]]
    if result["optimizer"] != "adam":
        parts.append(result["optimizer"])
    if result["clip_norm"]:
        parts.append(f"clip {result['clip_norm']:g}")
    return " + ".join(parts)


def load_results(path: Path) -> list[dict]:
    saved = json.loads(path.read_text()) if path.exists() else {"cells": []}
    # Files from before cells carried their setup name it once, in a header: the cells get that part.
    header = {**saved.get("width", {}), **({"steps": saved["steps"]} if "steps" in saved else {})}
    for cell in saved["cells"]:
        cell.setdefault("optimizer", "adam")  # results from before the optimizer axis ran plain Adam
        cell.setdefault("clip_norm", 0.0)  # ... and from before the clip axis, no clipping
        cell.setdefault("setup", header)
    return saved["cells"]


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def verdict(r: dict) -> str:
    if r["nonfinite_step"] is not None:
        return f"NaN at step {r['nonfinite_step']}"
    if r["spike_step"] is not None:
        return f"spike at step {r['spike_step']}"
    if not r["learned"]:
        return "finite, not learning"
    return "fp16 steps skipped after settling" if r["skipped_after_settling"] else "stable"


def markdown_summary(results: list[dict]) -> str:
    """Cells per variant and precision: stable / spiked / NaN, and cells with a skipped step once settled."""
    header = "| variant | precision | cells | stable | spike | NaN | skipped steps after settling |"
    lines = [header, "|" + "---|" * 7]
    runs = sorted(
        {(r["variant"], r["optimizer"], r["clip_norm"]) for r in results},
        key=lambda run: (list(VARIANTS).index(run[0]), run),
    )
    for run in runs:
        for precision in PRECISIONS:
            cells = [
                r
                for r in results
                if (r["variant"], r["optimizer"], r["clip_norm"], r["precision"]) == (*run, precision)
            ]
            if not cells:
                continue
            nan = sum(r["nonfinite_step"] is not None for r in cells)
            spike = sum(r["nonfinite_step"] is None and r["spike_step"] is not None for r in cells)
            skipped = sum(r["skipped_after_settling"] > 0 for r in cells)
            stable = sum(is_stable(r) for r in cells)
            lines.append(
                f"| {label(cells[0])} | {precision} | {len(cells)} | {stable} | {spike} | {nan} | {skipped} |"
            )
    return "\n".join(lines) + "\n"


def markdown_table(results: list[dict]) -> str:
    mixed = len({setup_label(r) for r in results}) > 1  # cells of several setups: say which is which
    header = "| task | N+N | lr | warmup | precision | variant | first / min / max / last loss | skipped (after settling) | verdict |"
    lines = [header + (" setup |" if mixed else ""), "|" + "---|" * (10 if mixed else 9)]
    for r in sorted(results, key=lambda r: (r["task"], r["layers"], r["lr"], r["warmup"], r["precision"])):
        losses = " / ".join(fmt(r[k]) for k in ("first_loss", "min_loss", "max_loss", "last_loss"))
        lines.append(
            f"| {r['task']} | {r['layers']}+{r['layers']} | {r['lr']:g} | {r['warmup']} | {r['precision']} | "
            f"{label(r)} | {losses} | {r['skipped_steps']} ({r['skipped_after_settling']}) | {verdict(r)} |"
            + (f" {setup_label(r)} |" if mixed else "")
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    plt = require_pyplot()
    panels = sorted({(r["task"], r["layers"], r["lr"], r["warmup"], r["precision"]) for r in results})
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for r in results:
            if (r["task"], r["layers"], r["lr"], r["warmup"], r["precision"]) == panel:
                ax.plot(
                    [min(float(x), 30.0) for x in r["losses"]], label=label(r)
                )  # "nan"/"inf": strict JSON
        task, layers, lr, warmup, precision = panel
        ax.set_title(f"{task} {layers}+{layers} lr {lr:g} wu {warmup} {precision}", fontsize=9)
        ax.set_ylim(top=min(30.0, ax.get_ylim()[1]))
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel("loss (clipped at 30)")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results_path = args.output_dir / "results.json"
    results = load_results(results_path)
    for other in args.merge:  # grids split over several processes, each with its own output dir
        results += [r for r in load_results(other) if not any(same_cell(r, x) for x in results)]
    width = Width(args.d_model, args.heads, args.ffn_dim)
    for task in [] if args.report_only else args.tasks:
        batches, vocab = task_batches(task, args)
        grid = itertools.product(
            args.layers,
            args.lrs,
            args.warmups,
            args.precisions,
            args.variants,
            args.optimizers,
            args.clip_norms,
        )
        for layers, lr, warmup, precision, variant, optimizer, clip_norm in grid:
            cell = Cell(variant, layers, lr, warmup, precision, optimizer, clip_norm)
            setup = cell_setup(args, vocab)
            if any(same_cell({"task": task, **dataclasses.asdict(cell), "setup": setup}, r) for r in results):
                continue
            result = {"task": task, **run_cell(cell, batches, args.steps, vocab, width, device=args.device)}
            result["setup"] = setup
            results.append(result)
            atomic_write_json(results_path, {"cells": results})  # each cell carries its own setup
            print(markdown_table([result]).splitlines()[-1], flush=True)
    if args.merge:
        atomic_write_json(results_path, {"cells": results})
    atomic_write_text(
        args.output_dir / "stability.md", markdown_summary(results) + "\n" + markdown_table(results)
    )
    if results:
        plot(results, args.output_dir / "stability.png")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
