"""Attention cost when every batch has new lengths, per SDPA backend set (a GPU check).

Translation batches differ in (sentences, source length, target length) from one update to the next. A
backend that builds something per shape (cuDNN's attention builds an execution graph per new shape) pays
that build on every new batch, which a fixed-shape benchmark such as ``bench_vs_marian.py`` never sees.
This times one forward + backward of bf16 ``scaled_dot_product_attention`` with a padding mask and
dropout, as a training step calls it, on ``--shapes`` shapes never seen before, then again on the same
shapes, for each backend set. Each set gets its own shapes, so no set profits from another's cache.

    python benchmarks/attention_shapes.py --output runs/attention_shapes.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fixup_transformer.atomic_files import atomic_write_text

BACKEND_SETS = {
    "default": None,  # torch's own priority order, cuDNN included where it applies
    "without_cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "cudnn_only": [SDPBackend.CUDNN_ATTENTION],
}


def shapes(count: int, set_index: int) -> list[tuple[int, int, int]]:
    """(sentences, source length, target length) triples of ~2k target tokens, distinct within a set and
    across sets (each set has its own sentence counts)."""
    out = []
    for i in range(count):
        tgt = 12 + i % 37
        out.append((max(1, 2048 // tgt - set_index), tgt + 1 + 3 * (i // 37), tgt))
    return out


def one_call(batch: int, src: int, tgt: int, args, device) -> float:
    heads, head_dim = args.heads, args.head_dim
    q = torch.randn(batch, heads, tgt, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, heads, src, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    mask = torch.ones(batch, 1, tgt, src, device=device, dtype=torch.bool)
    mask[: batch // 2, :, :, src - 3 :] = False  # padding in half the sentences
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=args.dropout)
    out.sum().backward()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(name: str, backends, shape_list, args, device) -> dict:
    context = sdpa_kernel(backends) if backends else contextlib.nullcontext()
    with context:
        try:
            first = [one_call(*shape, args, device) for shape in shape_list]
            again = [one_call(*shape, args, device) for shape in shape_list]
        except RuntimeError as err:  # a backend that cannot run this call (no kernel for it)
            return {"error": str(err).splitlines()[0][:300]}
    row = {
        "first_call_ms_median": 1e3 * statistics.median(first),
        "first_call_ms_total": 1e3 * sum(first),
        "repeat_call_ms_median": 1e3 * statistics.median(again),
    }
    print(
        f"{name:14s} new shape: median {row['first_call_ms_median']:8.2f} ms (total {row['first_call_ms_total']:8.0f} ms"
        f" for {len(shape_list)}); same shape again: median {row['repeat_call_ms_median']:.3f} ms",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=40, help="new shapes per backend set")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is about GPU attention backends")
    device = torch.device("cuda")
    one_call(8, 20, 20, args, device)  # CUDA context and the default kernels, outside the timings
    report = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "settings": vars(args),
    }
    for index, (name, backends) in enumerate(BACKEND_SETS.items()):
        report[name] = measure(name, backends, shapes(args.shapes, index), args, device)
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
