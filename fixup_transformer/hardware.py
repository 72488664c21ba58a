"""What the machine computes natively, for choosing a precision (``train.mixed_precision: auto``).

Low precision only pays where the hardware has it. Measured for this project: a CPU with AMX-bf16 runs
1024 x 1024 bf16 matmuls at 1,165 GFLOP/s vs 324 in fp32 (a Fixup training step 1.45x faster under bf16
autocast); a CPU with AVX-512-bf16 but no AMX ran them at 166 GFLOP/s (a training step at 0.61x of fp32);
an AMD EPYC without fp16 units took 3.2 s for a 512 x 2048 fp16 matmul vs 0.045 s in fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of a Linux machine (empty elsewhere: then nothing is assumed native)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_fp16() -> bool:
    """Whether the CPU does fp16 arithmetic natively; elsewhere fp16 autocast on CPU is emulated."""
    return bool({"avx512_fp16", "amx_fp16"} & cpu_flags())


def cpu_has_amx_bf16() -> bool:
    """Whether the CPU has AMX bf16 tiles (where bf16 autocast is faster than fp32)."""
    return "amx_bf16" in cpu_flags()


def cuda_has_native_bf16() -> bool:
    """bf16 in hardware (Ampere and later). torch's ``is_bf16_supported()`` also counts emulation by
    default, which is true on a V100 or T4, where bf16 runs without tensor cores."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument: it checked the hardware itself
        return torch.cuda.is_bf16_supported()


def resolve_mixed_precision(requested: str, cpu: bool = False) -> str:
    """``auto`` -> ``bf16`` on a CUDA GPU that supports it or a CPU with AMX-bf16, else ``no`` (fp32).

    fp16 is never chosen automatically: it needs loss scaling and skips steps, and bf16 covers every GPU
    since Ampere. Other values are returned unchanged.
    """
    if requested != "auto":
        return requested
    if not cpu and torch.cuda.is_available():
        return "bf16" if cuda_has_native_bf16() else "no"
    return "bf16" if cpu_has_amx_bf16() else "no"


def sum_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype of running sums kept on ``device`` (losses, token counts, gradient norms): float64, so
    millions of additions lose nothing, except on Apple's MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def skip_per_shape_attention_builds() -> bool:
    """Turn off cuDNN's attention kernel for this process where CUDA is present; True if it was on.

    cuDNN builds an execution graph for every new attention shape, and translation batches have new
    shapes all the time (sentences x source length x target length in training, a longer key at every
    decoding step). Measured on an H200 (torch 2.11, cuDNN 9, bf16; docs/benchmarks.md): a masked attention
    forward + backward on a new shape took 135 ms with torch's default backends against 0.4 ms without
    cuDNN, and the default Multi30k job ran 3.9 updates/s in bf16 against 37 in fp32 (where cuDNN's
    attention does not apply); with it off, bf16 ran 39. Flash and memory-efficient attention need no
    per-shape build, so torch uses them instead. Training, validation and ``translate_corpus`` call this.
    """
    if not torch.cuda.is_available() or not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    torch.backends.cuda.enable_cudnn_sdp(False)
    return True
