"""CPU dropout with one-byte masks (``text/dropout.py``) against ``F.dropout``: alone, and in a training step.

1. Dropout alone: forward + backward of one tensor per shape, the two functions alternating (A B, B A, ...),
   median milliseconds per call.
2. A whole training step (forward, backward, AdamW) of one Fixup model built by ``bench_vs_marian.py``, the
   model's dropout switched between the two in alternating repetitions; medians and the median of paired
   ratios. Everything else (weights, batches, optimizer) is shared, so only the dropout differs.

    python benchmarks/dropout_speed.py --threads 2 --output runs/dropout_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_marian  # noqa: E402

from fixup_transformer.atomic_files import atomic_write_text  # noqa: E402
from fixup_transformer.text import modeling_fixup_transformer  # noqa: E402
from fixup_transformer.text.dropout import dropout as byte_mask_dropout  # noqa: E402


def f_dropout(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(inputs, p=p, training=training)


IMPLEMENTATIONS = {"F.dropout": f_dropout, "byte_mask": byte_mask_dropout}

# (name, bench_vs_marian arguments): the Multi30k main job's model and the iwslt size of bench_vs_marian
MODELS = {
    "multi30k_job": [
        "--vocab", "6000", "--d-model", "256", "--layers", "3", "--heads", "4", "--ffn", "512",
        "--dropout", "0.2", "--train-batch", "64", "--src-len", "16", "--tgt-len", "16",
    ],
    "iwslt": ["--size", "iwslt", "--dropout", "0.3"],
}  # fmt: skip


def compare(run, repeats: int, unit: float) -> dict:
    """``run(function)`` for both implementations, interleaved by ``bench_vs_marian.interleaved`` (one untimed
    call each, then A B / B A ...): median time per call times ``unit``, and the median of paired speed-ups."""
    jobs = {
        name: bench_vs_marian.Timed(lambda f=function: run(f), 1.0)
        for name, function in IMPLEMENTATIONS.items()
    }
    calls_per_s = bench_vs_marian.interleaved(jobs, warmup=1, repeats=repeats, label="", verbose=False)
    base, new = (calls_per_s[name]["values"] for name in IMPLEMENTATIONS)
    return {
        "f_dropout": unit / statistics.median(base),
        "byte_mask": unit / statistics.median(new),
        # byte-mask calls/s over F.dropout calls/s (> 1: the byte masks are faster). Files written before
        # this change (2026-11-27) hold the inverse under the name "ratio" (F.dropout's calls/s over the byte masks').
        "speedup_of_medians": statistics.median(new) / statistics.median(base),
        "paired_speedup": statistics.median(n / b for b, n in zip(base, new, strict=True)),
    }


def dropout_alone(shape: tuple[int, int], p: float, calls: int, repeats: int) -> dict:
    base = torch.randn(shape)

    def run(function) -> None:
        for _ in range(calls):
            inputs = base.detach().requires_grad_()
            function(inputs, p, True).backward(base)

    return {"shape": list(shape), "p": p, **compare(run, repeats, unit=1000 / calls)}  # ms per dropout call


def training_step(name: str, args: argparse.Namespace) -> dict:
    bench_args = bench_vs_marian.parse_args(["--threads", str(args.threads), *MODELS[name]])
    model = bench_vs_marian.build_model("fixup", bench_args).train()
    trainer = bench_vs_marian.Trainer(model, bench_args)

    def run(function) -> None:
        modeling_fixup_transformer.dropout = function
        for _ in range(args.steps):
            trainer.step()

    try:
        seconds = compare(run, args.repeats, unit=1.0)
    finally:
        modeling_fixup_transformer.dropout = byte_mask_dropout
    return {"model": name, "steps_per_repetition": args.steps, **seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--p", type=float, default=0.2, help="dropout probability of the dropout-alone part")
    p.add_argument("--calls", type=int, default=30, help="dropout calls per repetition")
    p.add_argument("--steps", type=int, default=3, help="training steps per repetition")
    p.add_argument("--repeats", type=int, default=6, help="timed repetitions per implementation")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    if min(args.calls, args.steps, args.repeats) < 1:
        p.error("--calls, --steps and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"alone": [], "training_step": []}
    for shape in ((2048, 256), (1920, 512), (1920, 2048)):
        results["alone"].append(dropout_alone(shape, args.p, args.calls, args.repeats))
        print(json.dumps(results["alone"][-1]), flush=True)
    for name in args.models:
        results["training_step"].append(training_step(name, args))
        print(json.dumps(results["training_step"][-1]), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        settings = vars(args) | {"output": str(args.output)}
        atomic_write_text(args.output, json.dumps({"settings": settings, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
