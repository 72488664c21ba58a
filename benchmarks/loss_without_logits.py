"""Training step time of the Fixup Transformer with and without logits (``config.loss_without_logits``).

One model (``bench_vs_marian.py``'s size and batches), one process, the flag flipped between repetitions in
alternating order (A B, B A, ...), so drift from other load hits both sides alike. Each repetition is one
untimed step then ``--steps`` timed ones; the first repetition is dropped. Prints and writes the medians and
the median of paired ratios per batch size.

    python benchmarks/loss_without_logits.py --threads 1 --batches 32 128 --output runs/loss_without_logits.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fixup_transformer.atomic_files import atomic_write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_marian  # noqa: E402


def time_steps(trainer, steps: int) -> float:
    trainer.step()  # untimed: the other setting's buffers are freed, this one's allocated
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    return (time.perf_counter() - started) / steps


def measure(batch: int, args: argparse.Namespace) -> dict:
    bench_args = bench_vs_marian.parse_args(
        ["--threads", str(args.threads), "--train-batch", str(batch), "--size", args.size]
    )
    model = bench_vs_marian.build_model("fixup", bench_args).train()
    trainer = bench_vs_marian.Trainer(model, bench_args)
    seconds = {True: [], False: []}
    for rep in range(args.repeats + 1):
        for without_logits in (True, False) if rep % 2 == 0 else (False, True):
            model.config.loss_without_logits = without_logits
            seconds[without_logits].append(time_steps(trainer, args.steps))
    without, kept = seconds[True][1:], seconds[False][1:]
    return {
        "target_tokens": batch * bench_args.tgt_len,
        "step_s_without_logits": statistics.median(without),
        "step_s_with_logits": statistics.median(kept),
        "speedup": statistics.median(kept) / statistics.median(without),
        "paired_speedup": statistics.median(k / w for w, k in zip(without, kept, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(bench_vs_marian.SIZES), default="iwslt")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="sentence pairs per batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    p.add_argument("--repeats", type=int, default=6, help="timed repetitions per setting")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [measure(batch, args) for batch in args.batches]
    for r in results:
        print(json.dumps(r), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            args.output,
            json.dumps({"settings": vars(args) | {"output": str(args.output)}, "results": results}, indent=1),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
