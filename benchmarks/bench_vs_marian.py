"""Benchmark the Fixup Transformer against transformers' MarianMTModel of the same size, in one run.

Both models are built from scratch (random init, no download) at the same size: d_model 512, 6+6
layers, 4 heads, FFN 1024, a joint vocabulary of 10,000 with shared encoder/decoder embeddings tied
to the output projection, ReLU, scaled embeddings, dropout 0.1, sdpa attention, fp32. The only
architectural differences are the ones under test: Marian is post-LN with biased linears and a
separate q/k/v projection; Fixup has no LayerNorm, bias-free linears with scalar biases/multipliers
and fused QKV/KV projections.

Metrics (throughputs: higher is better; memory: lower is better):

* ``train_tokens_per_s``: forward + backward + AdamW step in training mode (dropout on), batch
  ``--train-batch`` x ``--src-len`` source tokens and ``--tgt-len`` target tokens; **target** tokens
  per second (``batch * tgt_len * steps / seconds``), the fairseq ``wps`` convention.
* ``greedy_tokens_per_s``: ``generate`` with greedy search and ``use_cache=True``, batch
  ``--gen-batch``, exactly ``--gen-new-tokens`` new tokens per sentence (min = max new tokens, so EOS
  cannot stop early); new tokens (``batch * new_tokens``) per second.
* ``beam_sentences_per_s``: ``generate`` with ``num_beams=--beams``, batch ``--beam-batch``, exactly
  ``--beam-new-tokens`` new tokens; source sentences per second.
* ``peak_train_rss_mb``: each model trained in its own fresh subprocess; peak RSS after
  ``--mem-steps`` training steps minus peak RSS right after the model and the AdamW optimizer were
  created (before any step). Peak RSS is ``ru_maxrss`` (on Linux read as ``VmHWM``, the same
  high-water mark without the floor that ``ru_maxrss`` inherits across fork+exec from the parent),
  and on Linux the high-water mark is reset to the current RSS after setup
  (``/proc/self/clear_refs``), so construction-time transients do not mask the training peak. The difference covers gradients, AdamW's two moment buffers
  (allocated lazily at the first step), the autograd activations, and allocator slack. CPU torch has
  no allocator statistics, hence RSS. The worker also reports ``saved_activation_mb``: the bytes of
  non-parameter tensors autograd saves for backward in one training step (a deterministic count via
  ``torch.autograd.graph.saved_tensors_hooks``, unique storages), which isolates activation memory.

Repetitions are interleaved across models (A B C, B C A, C A B, ...) so that drift from other load on
the machine is spread over all models; each metric reports the median over ``--repeats`` repetitions
after ``--warmup`` untimed ones (plus the min/max). The Fixup model is also measured with
``fold_scalars()`` applied (generation only, inference-only transform) and, optionally, in its
``normalization="post_ln", init="xavier"`` baseline mode.

Usage::

    python benchmarks/bench_vs_marian.py --output benchmarks/results.json
    python benchmarks/bench_vs_marian.py --quick --output /tmp/bench.json   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import MarianConfig, MarianMTModel  # noqa: E402

from fixup_transformer import (  # noqa: E402
    FixupTransformerConfig,
    FixupTransformerForConditionalGeneration,
)
from fixup_transformer.atomic_files import atomic_write_text  # noqa: E402

PAD, EOS = 0, 1
FIRST_WORD_ID = 3  # ids 0-2 are pad, eos, unk in this package's tokenizer

# Model variants. "fixup_folded" is the Fixup model after fold_scalars(): inference only.
MARIAN = "marian"
FIXUP = "fixup"
FIXUP_FOLDED = "fixup_folded"
FIXUP_POSTLN = "fixup_postln"
FIXUP_LOGITS = "fixup_logits"  # training only: the loss from materialised logits (loss_without_logits=False)
LABELS = {
    FIXUP: "Fixup",
    FIXUP_FOLDED: "Fixup folded",
    FIXUP_POSTLN: "Fixup code, post-LN+xavier",
    FIXUP_LOGITS: "Fixup, loss from logits",
    MARIAN: "Marian",
}
TRAINABLE = (FIXUP, FIXUP_POSTLN, FIXUP_LOGITS, MARIAN)
TRAINING_ONLY = (FIXUP_LOGITS,)  # generates exactly as FIXUP: not timed twice

# metric -> (label, direction, target ratio Fixup/Marian)
METRICS = {
    "train_tokens_per_s": ("training target tokens/s", "higher", 1.2),
    "greedy_tokens_per_s": ("greedy new tokens/s", "higher", 1.5),
    "beam_sentences_per_s": ("beam sentences/s", "higher", 1.3),
    "peak_train_rss_mb": ("peak training RSS increase (MB)", "lower", 0.85),
}

# --size presets: the fairseq transformer_iwslt_de_en, base and big shapes (encoder = decoder).
SIZES = {
    "iwslt": dict(vocab=10_000, d_model=512, layers=6, heads=4, ffn=1024),
    "base": dict(vocab=32_000, d_model=512, layers=6, heads=8, ffn=2048),
    "big": dict(vocab=32_000, d_model=1024, layers=6, heads=16, ffn=4096),
}
# Dense bf16 tensor-core peak (TFLOP/s) by card name, for MFU; --peak-tflops overrides.
# Keys are matched in order against the card's name: the PCIe/NVL H100s first (their peaks are lower).
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.5,
    "H100 NVL": 835.5,
    "H200": 989.4,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(args: argparse.Namespace):
    if args.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(args.device.type, dtype=AUTOCAST_DTYPES[args.precision])


def default_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------------------


def common_size(args: argparse.Namespace) -> dict:
    return dict(
        vocab_size=args.vocab,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn,
        activation_function="relu",
        dropout=args.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=1024,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        forced_eos_token_id=None,
        attn_implementation=args.attn,
    )


def build_model(variant: str, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    size = common_size(args)
    if variant == MARIAN:
        model = MarianMTModel(MarianConfig(**size))
    elif variant in (FIXUP, FIXUP_FOLDED):
        model = FixupTransformerForConditionalGeneration(FixupTransformerConfig(**size))
        if variant == FIXUP_FOLDED:
            model.eval().fold_scalars()  # inference only (folding refuses a model in training mode)
    elif variant == FIXUP_LOGITS:
        config = FixupTransformerConfig(**size, loss_without_logits=False)
        model = FixupTransformerForConditionalGeneration(config)
    elif variant == FIXUP_POSTLN:
        config = FixupTransformerConfig(**size, normalization="post_ln", init="xavier")
        model = FixupTransformerForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown model variant {variant!r}")
    if model.config._attn_implementation != args.attn:
        raise RuntimeError(f"{variant}: attention is {model.config._attn_implementation}, not {args.attn}")
    return model.float().to(args.device)


def trainable_parameters(model: torch.nn.Module) -> int:
    # Marian's sinusoidal position tables are frozen nn.Embedding weights; count only what trains.
    seen = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            seen[parameter.data_ptr()] = parameter.numel()
    return sum(seen.values())


def batch(args: argparse.Namespace, size: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_WORD_ID, args.vocab, (size, length), generator=generator).to(args.device)


class Trainer:
    """One model, its AdamW optimizer and a fixed training batch; ``compiled``: the forward under
    ``torch.compile`` (what ``train.compile`` does in the training script), compiled in the warmup."""

    def __init__(self, model: torch.nn.Module, args: argparse.Namespace, compiled: bool = False) -> None:
        self.model = model.train()
        self.forward = torch.compile(model) if compiled else model
        self.args = args
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0, fused=True
        )
        self.input_ids = batch(args, args.train_batch, args.src_len, seed=1)
        self.attention_mask = torch.ones_like(self.input_ids)
        self.labels = batch(args, args.train_batch, args.tgt_len, seed=2)
        self.labels[:, -1] = EOS

    def step(self) -> torch.Tensor:
        """One update; the loss stays on the device (a host read would stall a GPU every step)."""
        with autocast(self.args):
            loss = self.forward(
                input_ids=self.input_ids, attention_mask=self.attention_mask, labels=self.labels
            ).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def training_flops(trainer: Trainer) -> int:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(trainer.args):
            loss = trainer.model(
                input_ids=trainer.input_ids, attention_mask=trainer.attention_mask, labels=trainer.labels
            ).loss
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_profile(trainer: Trainer, top: int) -> dict:
    """One training step under torch.profiler: what the device runs and how busy it is.

    On CUDA: the kernels launched per step, their summed time against the step's wall time (a step much
    longer than its kernels is launch-bound: the host, not the GPU, sets the pace), and the ``top`` kernels
    by time. On CPU: the operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = trainer.args.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    synchronize(trainer.args.device)
    with profile(activities=activities) as profiler:
        start = time.perf_counter()
        trainer.step()
        synchronize(trainer.args.device)
        wall_ms = (time.perf_counter() - start) * 1e3
    totals: dict[str, list[float]] = {}
    if on_cuda:
        for event in profiler.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                entry = totals.setdefault(event.name, [0, 0.0])
                entry[0] += 1
                entry[1] += event.time_range.elapsed_us() / 1e3
    else:
        for event in profiler.key_averages():
            totals[event.key] = [event.count, event.self_cpu_time_total / 1e3]
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    busy_ms = sum(ms for _, ms in totals.values())
    return {
        "wall_ms_profiled": wall_ms,
        "kernels" if on_cuda else "operator_calls": sum(int(count) for count, _ in totals.values()),
        "busy_ms": busy_ms,
        "top": [{"name": name[:120], "calls": int(count), "ms": ms} for name, (count, ms) in ranked[:top]],
    }


def cuda_memory(variants: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Peak allocated GPU memory of ``--mem-steps`` training steps above what model + optimizer hold.

    Eager, also with ``--compile`` (the report's ``memory_mode``): under ``torch.compile`` the Fixup model
    computes its loss from the logits, so its compiled memory is nearer the ``--with-logits`` row."""
    out = {}
    for variant in variants:
        model = build_model(variant, args)
        trainer = Trainer(model, args)
        synchronize(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_allocated(args.device)
        for _ in range(args.mem_steps):
            trainer.step()
        synchronize(args.device)
        peak = (torch.cuda.max_memory_allocated(args.device) - before) / 2**20
        out[variant] = {**summary([peak]), "saved_activation_mb": float("nan")}
        out[variant]["grad_and_adam_state_mb"] = 3 * 4 * trainable_parameters(model) / 2**20
        print(f"  [memory] {variant} +{peak:.0f} MB allocated")
        del trainer, model
        torch.cuda.empty_cache()
    return out


def generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int, beams: int, args=None):
    with autocast(args) if args is not None else contextlib.nullcontext():
        output = _generate(model, input_ids, new_tokens, beams)
    synchronize(input_ids.device)
    return output


def _generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int, beams: int) -> torch.Tensor:
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        num_beams=beams,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        use_cache=True,
    )
    # The decoder start token plus exactly `new_tokens` generated ones.
    if output.shape != (input_ids.shape[0], new_tokens + 1):
        raise RuntimeError(f"expected {new_tokens} new tokens per sentence, got output {tuple(output.shape)}")
    return output


# ---------------------------------------------------------------------------------------------------------
# Interleaved timing
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Timed:
    """A unit of work of one model and how to turn its wall time into the metric."""

    run: Callable[[], object]
    amount: float  # tokens or sentences per call of `run`


def interleaved(
    jobs: dict[str, Timed], warmup: int, repeats: int, label: str, verbose: bool = True
) -> dict[str, dict]:
    """Run each job ``warmup`` times untimed, then ``repeats`` times timed, rotating the model order."""
    names = list(jobs)
    for name in names:
        for _ in range(warmup):
            jobs[name].run()
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu_rates: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            jobs[name].run()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
            rates[name].append(jobs[name].amount / seconds)
            cpu_rates[name].append(jobs[name].amount / max(cpu_seconds, 1e-9))
        if verbose:
            done = ", ".join(f"{n} {fmt(rates[n][-1])}" for n in names)
            print(f"  [{label}] repeat {repeat + 1}/{repeats}: {done}  (load {os.getloadavg()[0]:.2f})")
    return {name: {**summary(rates[name]), "cpu": summary(cpu_rates[name])} for name in names}


def fmt(value: float) -> str:
    """Three significant digits, without switching to exponent notation for large numbers."""
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


def summary(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


# ---------------------------------------------------------------------------------------------------------
# Memory: one fresh subprocess per model
# ---------------------------------------------------------------------------------------------------------


def maxrss_mb() -> float:
    """Peak RSS of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own address
    space. ``ru_maxrss`` is the same number except that it also keeps the peak of the address space
    replaced by ``exec``: a worker forked from the (large) benchmark process would inherit the
    parent's RSS as its ``ru_maxrss`` floor. Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0), if allowed.

    Without it the peak after setup can be a transient of model construction (init temporaries,
    the untied output projection before tying), which would hide part of the training peak. With
    it, the peak right after the reset is exactly the RSS after setup.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def saved_activation_mb(trainer: Trainer) -> float:
    """Bytes of the non-parameter tensors autograd keeps for backward in one training step."""
    parameters = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(trainer.args):
        loss = trainer.model(
            input_ids=trainer.input_ids, attention_mask=trainer.attention_mask, labels=trainer.labels
        ).loss
    loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def memory_worker(args: argparse.Namespace) -> None:
    """Entry point of the subprocess: print one JSON line with this model's memory numbers."""
    torch.set_num_threads(args.threads)
    model = build_model(args.memory_worker, args)
    trainer = Trainer(model, args)
    reset = reset_peak_rss()
    before = maxrss_mb()
    for _ in range(args.mem_steps):
        trainer.step()
    after = maxrss_mb()
    activations = saved_activation_mb(trainer)  # after the RSS reading, so it cannot disturb it
    parameters = trainable_parameters(model)
    print(
        "MEMORY_RESULT "
        + json.dumps(
            {
                "variant": args.memory_worker,
                "peak_reset": reset,
                "rss_after_setup_mb": before,
                "rss_peak_mb": after,
                "peak_train_rss_mb": after - before,
                "saved_activation_mb": activations,
                # What grads + AdamW moments must take at least: 3 fp32 copies of the trainable weights.
                "grad_and_adam_state_mb": 3 * 4 * parameters / 2**20,
            }
        )
    )


def worker_command(variant: str, args: argparse.Namespace) -> list[str]:
    flags = [
        "--memory-worker", variant, "--threads", str(args.threads), "--mem-steps", str(args.mem_steps),
        "--vocab", str(args.vocab), "--d-model", str(args.d_model), "--layers", str(args.layers),
        "--heads", str(args.heads), "--ffn", str(args.ffn), "--dropout", str(args.dropout),
        "--attn", args.attn, "--seed", str(args.seed), "--train-batch", str(args.train_batch),
        "--src-len", str(args.src_len), "--tgt-len", str(args.tgt_len), "--precision", args.precision,
    ]  # fmt: skip
    return [sys.executable, os.path.abspath(__file__), *flags]


def measure_memory(variants: list[str], args: argparse.Namespace) -> dict[str, dict]:
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.mem_repeats):
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for variant in order:
            completed = subprocess.run(
                worker_command(variant, args), capture_output=True, text=True, check=False
            )
            lines = [line for line in completed.stdout.splitlines() if line.startswith("MEMORY_RESULT ")]
            if completed.returncode != 0 or not lines:
                raise RuntimeError(f"memory worker for {variant} failed:\n{completed.stderr[-3000:]}")
            results[variant].append(json.loads(lines[-1].removeprefix("MEMORY_RESULT ")))
            print(
                f"  [memory] repeat {repeat + 1}/{args.mem_repeats}: {variant} "
                f"+{results[variant][-1]['peak_train_rss_mb']:.0f} MB  (load {os.getloadavg()[0]:.2f})"
            )
    out = {}
    for variant, runs in results.items():
        out[variant] = summary([run["peak_train_rss_mb"] for run in runs])
        out[variant]["saved_activation_mb"] = runs[0]["saved_activation_mb"]
        out[variant]["grad_and_adam_state_mb"] = runs[0]["grad_and_adam_state_mb"]
        out[variant]["rss_after_setup_mb"] = statistics.median(run["rss_after_setup_mb"] for run in runs)
        out[variant]["peak_reset"] = all(run["peak_reset"] for run in runs)
    return out


# ---------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------


def model_code_state() -> dict:
    """The git commit and a hash of this package's model sources, to tie results to code."""
    package = os.path.dirname(os.path.abspath(sys.modules[FixupTransformerConfig.__module__].__file__))
    files = [os.path.join(package, n) for n in sorted(os.listdir(package)) if n.endswith(".py")]
    files.append(os.path.join(os.path.dirname(package), "fixup.py"))  # ScalarBias / ScalarScale
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            digest.update(os.path.basename(path).encode() + handle.read())
    state = {"sources": package, "sha256": digest.hexdigest()[:16]}
    try:
        git = ["git", "-C", package]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", *files], capture_output=True, text=True, check=True
        )
        state["commit"], state["dirty"] = head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return state


def run_benchmark(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    if args.no_cudnn_attention:
        from fixup_transformer.hardware import skip_per_shape_attention_builds

        print(f"cuDNN attention turned off: {skip_per_shape_attention_builds()}")
    code = {"start": model_code_state()}
    print(f"model code: {code['start']}")
    variants = [FIXUP, FIXUP_FOLDED, MARIAN] + ([FIXUP_POSTLN] if args.postln else [])
    variants += [FIXUP_LOGITS] if args.with_logits else []
    load = {"start": os.getloadavg()}
    print(f"threads={torch.get_num_threads()}  nproc={os.cpu_count()}  load at start={load['start']}")

    results: dict[str, dict] = {}
    # Memory first, while this process is still small: the workers are independent processes.
    print("peak training memory (one subprocess per model) ...")
    trainable = [v for v in variants if v in TRAINABLE]
    if args.device.type == "cuda":
        results["peak_train_rss_mb"] = cuda_memory(trainable, args)
    else:
        results["peak_train_rss_mb"] = measure_memory(trainable, args)
    load["after_memory"] = os.getloadavg()

    models = {variant: build_model(variant, args) for variant in variants}
    parameters = {variant: trainable_parameters(model) for variant, model in models.items()}
    for variant in variants:
        print(f"  {variant:13s} {parameters[variant] / 1e6:.2f}M trainable parameters")

    print("training ...")
    trainers = {v: Trainer(models[v], args, compiled=args.compile) for v in variants if v in TRAINABLE}
    target_tokens = args.train_batch * args.tgt_len * args.train_steps

    def train_job(trainer: Trainer) -> Timed:
        def run() -> None:
            for _ in range(args.train_steps):
                trainer.step()
            synchronize(args.device)

        return Timed(run, target_tokens)

    results["train_tokens_per_s"] = interleaved(
        {v: train_job(t) for v, t in trainers.items()}, args.warmup, args.repeats, "train"
    )
    load["after_training"] = os.getloadavg()
    flops = {v: training_flops(t) for v, t in trainers.items()}
    peak = args.peak_tflops or default_peak_tflops(args.device)
    results["train_flops_per_step"] = flops
    if peak:
        tokens_per_step = args.train_batch * args.tgt_len
        results["mfu"] = {
            v: results["train_tokens_per_s"][v]["median"] / tokens_per_step * flops[v] / (peak * 1e12)
            for v in flops
        }
        print(
            f"MFU (vs dense bf16 peak {peak:.0f} TFLOP/s): "
            + ", ".join(f"{v} {m:.1%}" for v, m in results["mfu"].items())
        )
    if args.profile_top:
        results["train_profile"] = {v: step_profile(t, args.profile_top) for v, t in trainers.items()}
        for variant, profiled in results["train_profile"].items():
            count = profiled.get("kernels", profiled.get("operator_calls"))
            print(
                f"  [profile] {variant}: one step {profiled['wall_ms_profiled']:.1f} ms wall, {count} "
                f"{'kernels' if 'kernels' in profiled else 'operator calls'}, {profiled['busy_ms']:.1f} ms in them"
            )
            for row in profiled["top"]:
                print(f"      {row['ms']:8.2f} ms {row['calls']:5d}x  {row['name']}")
    del trainers  # drop optimizer state before generation

    models = {v: m for v, m in models.items() if v not in TRAINING_ONLY}
    for model in models.values():
        model.eval()
    greedy_input = batch(args, args.gen_batch, args.src_len, seed=3)
    beam_input = batch(args, args.beam_batch, args.src_len, seed=4)

    def generation_job(model: torch.nn.Module, inputs: torch.Tensor, new: int, beams: int, amount: float):
        return Timed(lambda: generate(model, inputs, new, beams, args), amount)

    print("greedy generation ...")
    with torch.inference_mode():
        results["greedy_tokens_per_s"] = interleaved(
            {
                v: generation_job(
                    m, greedy_input, args.gen_new_tokens, 1, args.gen_batch * args.gen_new_tokens
                )
                for v, m in models.items()
            },
            args.warmup,
            args.repeats,
            "greedy",
        )
        load["after_greedy"] = os.getloadavg()
        print(f"beam-{args.beams} generation ...")
        results["beam_sentences_per_s"] = interleaved(
            {
                v: generation_job(m, beam_input, args.beam_new_tokens, args.beams, args.beam_batch)
                for v, m in models.items()
            },
            args.warmup,
            args.repeats,
            "beam",
        )
    load["after_beam"] = os.getloadavg()
    del models

    load["end"] = os.getloadavg()
    code["end"] = model_code_state()
    code["changed_during_run"] = code["start"]["sha256"] != code["end"]["sha256"]
    if code["changed_during_run"]:
        print("WARNING: the model sources changed during the run; the results mix two versions.")

    return {
        "results": results,
        "ratios": ratios(results),
        "trainable_parameters": parameters,
        "load_average": load,
        "model_code": code,
        "settings": {
            k: str(v) if k == "device" else v
            for k, v in vars(args).items()
            if k not in ("output", "memory_worker")
        },
        "machine": {
            "nproc": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
        },
        "memory_mode": "eager",  # the memory pass never compiles (cuda_memory)
        "command": " ".join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
    }


def ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Fixup / Marian (and folded / Marian, post-LN / Marian) of the medians, with the target verdict."""
    out = {}
    for metric, (_, direction, target) in METRICS.items():
        per_model = results.get(metric, {})
        if MARIAN not in per_model:
            continue
        baseline = per_model[MARIAN]["median"]
        entry = {"target": target, "direction": direction}
        for variant in (FIXUP, FIXUP_FOLDED, FIXUP_POSTLN, FIXUP_LOGITS):
            if variant in per_model and baseline > 0:
                ratio = per_model[variant]["median"] / baseline
                # Repetition r of every model ran back to back, so per-repetition ratios cancel most
                # of the drift in machine load; their median is a second, more robust estimate. A target
                # is met only if both are (bimodal GPU timings can put one far from the other).
                pairs = zip(per_model[variant]["values"], per_model[MARIAN]["values"], strict=False)
                paired = statistics.median(a / b for a, b in pairs)
                passed = all(r >= target if direction == "higher" else r <= target for r in (ratio, paired))
                entry[variant] = {"ratio": ratio, "pass": passed, "paired_median_ratio": paired}
                if "cpu" in per_model[variant]:
                    cpu = per_model[variant]["cpu"]["median"] / per_model[MARIAN]["cpu"]["median"]
                    entry[variant]["cpu_time_ratio"] = cpu
        out[metric] = entry
    return out


def markdown_table(report: dict) -> str:
    results, all_ratios = report["results"], report["ratios"]
    variants = [
        v
        for v in (FIXUP, FIXUP_FOLDED, FIXUP_POSTLN, FIXUP_LOGITS, MARIAN)
        if v in report["trainable_parameters"]
    ]
    header = ["metric", *(LABELS[v] for v in variants), "Fixup/Marian", "folded/Marian", "target", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, (label, direction, target) in METRICS.items():
        row = [label]
        for variant in variants:
            value = results[metric].get(variant)
            row.append("–" if value is None else fmt(value["median"]))
        ratio = all_ratios.get(metric, {})
        plain, folded = ratio.get(FIXUP), ratio.get(FIXUP_FOLDED)
        row.append(f"{plain['ratio']:.2f}x" if plain else "–")
        row.append(f"{folded['ratio']:.2f}x" if folded else "–")
        row.append(f"{'>=' if direction == 'higher' else '<='} {target}x")
        status = ("PASS" if plain["pass"] else "MISS") if plain else "n/a"
        if folded:
            status += f" (folded: {'PASS' if folded['pass'] else 'MISS'})"
        row.append(status)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def spread_table(report: dict) -> str:
    """min-max of the repetitions, to judge the noise behind each median, and the robust ratios."""
    lines = []
    for metric, (label, _, _) in METRICS.items():
        parts = []
        for variant, entry in report["ratios"].get(metric, {}).items():
            if isinstance(entry, dict) and "paired_median_ratio" in entry:
                part = f"{variant}/marian paired {entry['paired_median_ratio']:.2f}x"
                if "cpu_time_ratio" in entry:
                    part += f", by process CPU time {entry['cpu_time_ratio']:.2f}x"
                parts.append(part)
        if parts:
            lines.append(f"- {label} ratios: " + "; ".join(parts))
    for metric, (label, _, _) in METRICS.items():
        parts = [
            f"{variant} {fmt(value['min'])}-{fmt(value['max'])}"
            for variant, value in report["results"][metric].items()
        ]
        lines.append(f"- {label}: " + ", ".join(parts))
    memory = report["results"]["peak_train_rss_mb"]
    lines.append(
        "- saved activations per training step (MB): "
        + ", ".join(f"{v} {m['saved_activation_mb']:.1f}" for v, m in memory.items())
    )
    lines.append(
        "- grads + AdamW moments, lower bound (MB): "
        + ", ".join(f"{v} {m['grad_and_adam_state_mb']:.1f}" for v, m in memory.items())
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_argument_group("model size (identical for both models)")
    size.add_argument("--vocab", type=int, default=10_000)
    size.add_argument("--d-model", type=int, default=512)
    size.add_argument("--layers", type=int, default=6, help="encoder layers = decoder layers")
    size.add_argument("--heads", type=int, default=4)
    size.add_argument("--ffn", type=int, default=1024)
    size.add_argument("--dropout", type=float, default=0.1)
    size.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    work = parser.add_argument_group("workload")
    work.add_argument("--train-batch", type=int, default=32)
    work.add_argument("--src-len", type=int, default=25)
    work.add_argument("--tgt-len", type=int, default=25)
    work.add_argument("--train-steps", type=int, default=3, help="training steps per timed repetition")
    work.add_argument("--gen-batch", type=int, default=16)
    work.add_argument("--gen-new-tokens", type=int, default=64)
    work.add_argument("--beam-batch", type=int, default=8)
    work.add_argument("--beam-new-tokens", type=int, default=40)
    work.add_argument("--beams", type=int, default=5)
    work.add_argument("--mem-steps", type=int, default=3, help="training steps in each memory subprocess")
    work.add_argument("--tokens", type=int, help="target tokens per training batch (sets --train-batch)")
    run = parser.add_argument_group("run")
    run.add_argument("--size", choices=sorted(SIZES), help="a preset shape (overrides the size options)")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    run.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    run.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default: known cards)")
    run.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    run.add_argument("--warmup", type=int, default=2, help="untimed repetitions per model")
    run.add_argument("--repeats", type=int, default=5, help="timed repetitions per model (median)")
    run.add_argument("--mem-repeats", type=int, default=2, help="memory subprocesses per model")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--no-postln", dest="postln", action="store_false", help="skip the post-LN+xavier Fixup-code baseline"
    )
    run.add_argument(
        "--with-logits",
        action="store_true",
        help="also train the Fixup model with its loss from materialised logits (loss_without_logits=False)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="time training with torch.compile'd forwards (both models; memory and generation stay eager)",
    )
    run.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="turn cuDNN's attention off for both models, as the library's training and translation do on "
        "CUDA (hardware.skip_per_shape_attention_builds); torch then picks flash or memory-efficient attention",
    )
    run.add_argument(
        "--profile-top",
        type=int,
        default=0,
        metavar="N",
        help="after the timing, profile one training step per model and list its N most costly kernels "
        "(CUDA; operators on CPU), with the kernel count and the device's busy time per step",
    )
    run.add_argument("--quick", action="store_true", help="smoke run: tiny workload, 1 warmup, 2 repeats")
    run.add_argument("--output", help="write the JSON report here")
    run.add_argument(
        "--render", metavar="JSON", help="print the tables of an earlier --output file, run nothing"
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("repeats", "mem_repeats", "train_steps", "mem_steps"):
        if getattr(args, name) < 1:  # checked before minutes of measurement, not after
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name, value in SIZES.get(args.size, {}).items():
        setattr(args, name, value)
    if args.tokens:
        args.train_batch = max(1, args.tokens // args.tgt_len)
    args.device = torch.device(args.device)
    if args.quick:
        args.train_batch, args.train_steps, args.warmup, args.repeats = 4, 1, 1, 2
        args.gen_batch, args.gen_new_tokens, args.beam_batch, args.beam_new_tokens = 2, 8, 2, 6
        args.mem_steps, args.mem_repeats = 1, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        memory_worker(args)
        return
    if args.render:
        with open(args.render, encoding="utf-8") as handle:
            report = json.load(handle)
        report["ratios"] = ratios(report["results"])  # files of older versions lack some ratios
        print_report(report)
        return
    report = run_benchmark(args)
    report["markdown"] = print_report(report)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps(report, indent=2))  # a killed run leaves no half file
        print(f"wrote {args.output}")


def print_report(report: dict) -> str:
    table = markdown_table(report)
    print()
    print(table)
    print()
    print(spread_table(report))
    print()
    for metric, entry in report["ratios"].items():
        label, direction, target = METRICS[metric]
        sign = ">=" if direction == "higher" else "<="
        for variant in (FIXUP, FIXUP_FOLDED):
            if variant in entry:
                verdict = "PASS" if entry[variant]["pass"] else "MISS"
                print(
                    f"{verdict}  {label}: {LABELS[variant]}/Marian = {entry[variant]['ratio']:.2f}x (target {sign} {target}x)"
                )
    print(f"load average: {report['load_average']}")
    if "model_code" in report:
        print(f"model code: {report['model_code']}")
    return table


if __name__ == "__main__":
    main()
