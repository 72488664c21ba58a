"""Count the operators one training step dispatches, per model: a CPU stand-in for a GPU's kernel launches.

Eager training at translation batch sizes is launch-bound on a GPU (an H200 ran 15-23 ms of kernels in a
64-89 ms step, docs/benchmarks.md): the step takes as long as the host needs to launch its kernels, so the
number of kernels decides the speed. Every operator below autograd that is not a view or an allocation
launches at least one kernel on CUDA, so counting them under a ``TorchDispatchMode`` on CPU tells, without a
GPU, whether a change adds or removes launches. Counted: the forward with its loss, the backward (grouped by
the autograd node that ran each operator) and the optimizer step, for the models of ``bench_vs_marian.py``
at the same sizes. ``--precision bf16`` (the default) counts the autocast casts a GPU run makes, and the Fixup model's dropout takes
the path CUDA takes (``F.dropout``; ``--cpu-paths`` keeps the CPU's one-byte masks).

    python benchmarks/op_counts.py --size base --precision bf16 --output runs/op_counts.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_vs_marian as bench  # noqa: E402

from fixup_transformer.atomic_files import atomic_write_text  # noqa: E402
from fixup_transformer.text import dropout as fixup_dropout  # noqa: E402

# Operators that launch no kernel: views, metadata, allocations without a fill.
NO_KERNEL = {
    "_reshape_alias", "_unsafe_view", "alias", "as_strided", "chunk", "detach", "empty", "empty_like",
    "empty_strided", "expand", "lift_fresh", "narrow", "new_empty_strided", "permute", "reshape", "select",
    "slice", "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unsqueeze", "view",
}  # fmt: skip


class OperatorCounter(TorchDispatchMode):
    """Counts each operator that launches a kernel, keyed by (autograd node or "forward", operator)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            node = torch._C._current_autograd_node()
            self.counts[(type(node).__name__ if node is not None else "-", name)] += 1
        return func(*args, **(kwargs or {}))


def count_step(trainer: bench.Trainer) -> dict:
    """Operators of one training step: forward + loss, backward, optimizer step and zeroing the gradients."""
    phases = {}
    forward, backward, optimizer = OperatorCounter(), OperatorCounter(), OperatorCounter()
    with forward, bench.autocast(trainer.args):
        loss = trainer.model(
            input_ids=trainer.input_ids, attention_mask=trainer.attention_mask, labels=trainer.labels
        ).loss
    with backward:
        loss.backward()
    with optimizer:
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    for phase, counter in (("forward", forward), ("backward", backward), ("optimizer", optimizer)):
        by_operator = collections.Counter()
        by_node = collections.Counter()
        for (node, operator), count in counter.counts.items():
            by_operator[operator] += count
            by_node[node] += count
        phases[phase] = {
            "operators": sum(by_operator.values()),
            "by_operator": dict(by_operator.most_common()),
            **({"by_autograd_node": dict(by_node.most_common())} if phase == "backward" else {}),
        }
    phases["total"] = sum(phases[p]["operators"] for p in ("forward", "backward", "optimizer"))
    return phases


@contextlib.contextmanager
def dropout_as_on_cuda(enabled: bool):
    """Within: the Fixup model's dropout is ``F.dropout`` (one kernel each way on CUDA), not the CPU's
    one-byte masks. Restored on exit: the counts may run inside another program (the tests)."""
    original = fixup_dropout._byte_masks_apply
    if enabled:
        fixup_dropout._byte_masks_apply = lambda inputs, p: False
    try:
        yield
    finally:
        fixup_dropout._byte_masks_apply = original


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(bench.SIZES), default="iwslt")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--variants", nargs="+", default=[bench.FIXUP, bench.FIXUP_LOGITS, bench.MARIAN])
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (counts do not depend on it)")
    parser.add_argument("--length", type=int, default=8, help="source and target tokens per pair")
    parser.add_argument(
        "--cpu-paths",
        dest="gpu_paths",
        action="store_false",
        help="keep the CPU's own dropout (one-byte masks) instead of the F.dropout that CUDA runs",
    )
    parser.add_argument("--top", type=int, default=12, help="operators and autograd nodes listed per model")
    parser.add_argument("--output", help="write the counts as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bench_args = bench.parse_args(
        ["--size", args.size, "--precision", args.precision, "--train-batch", str(args.batch)]
        + ["--src-len", str(args.length), "--tgt-len", str(args.length), "--threads", "1"]
    )
    report = {"settings": vars(args), "torch": torch.__version__, "models": {}}
    for variant in args.variants:
        trainer = bench.Trainer(bench.build_model(variant, bench_args), bench_args)
        with dropout_as_on_cuda(args.gpu_paths):
            trainer.step()  # AdamW's state exists from the first step on; count a later one
            counted = count_step(trainer)
        report["models"][variant] = counted
        print(
            f"{variant:13s} {counted['total']:5d} operators per step: forward {counted['forward']['operators']}, "
            f"backward {counted['backward']['operators']}, optimizer {counted['optimizer']['operators']}"
        )
        top = list(counted["forward"]["by_operator"].items())[: args.top]
        print("    forward:", ", ".join(f"{name} {count}" for name, count in top))
        top = list(counted["backward"]["by_autograd_node"].items())[: args.top]
        print("    backward by node:", ", ".join(f"{name} {count}" for name, count in top))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps(report, indent=2))
        print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
