"""Count host-device synchronizations on a GPU: the training step, one decoding step, and ``generate``.

CUDA's sync debug mode (``torch.cuda.set_sync_debug_mode("warn")``) warns at every operation that makes
the CPU wait for the GPU. A training step of this package's loop (``training.mt_step.train_step``, the
one ``scripts/train_mt.py`` runs, bf16 autocast through Accelerate) and one cached decoding step should
cause none; ``generate`` counts transformers' own per-token checks, so it is reported next to
MarianMTModel's count for the same call. The CPU tests pin the same property by counting ``item`` /
``tolist`` / ``__bool__`` calls (tests/test_training_step.py); this script is the check on the device.

    python benchmarks/cuda_syncs.py --output runs/cuda_syncs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from bench_vs_marian import EOS, FIXUP, MARIAN, PAD, SIZES, build_model  # this folder's benchmark

from fixup_transformer.diagnostics import atomic_write_json
from fixup_transformer.training import mt_step
from fixup_transformer.training.mt_config import MTConfig
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.training.step_guard import StepAccumulator

VOCAB = SIZES["iwslt"]["vocab"]


class SyncCounter:
    """Counts the sync-debug warnings raised inside ``with counter:`` (one per synchronizing call)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"  # elsewhere nothing is counted: a dry run of the code paths
        self.count = 0
        self.where: list[str] = []

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        self._catcher = warnings.catch_warnings(record=True)
        self._records = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(*exc)
        syncs = [r for r in self._records if "synchroniz" in str(r.message)]
        self.count += len(syncs)
        self.where += sorted({f"{Path(r.filename).name}:{r.lineno}" for r in syncs})


def model_size(device: torch.device) -> argparse.Namespace:
    """bench_vs_marian.py's iwslt shape and settings, so the counts are of the models its table times."""
    return argparse.Namespace(**SIZES["iwslt"], dropout=0.1, attn="sdpa", seed=0, device=device)


def batch(rows: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(3, VOCAB, (rows, length), generator=generator)
    labels = torch.randint(3, VOCAB, (rows, length), generator=generator)
    labels[:, -1] = EOS
    return {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": labels}


def training_step_syncs(device: torch.device, steps: int) -> dict:
    """Syncs per update of the training loop's step (bf16 autocast on CUDA), after two warm-up updates."""
    torch.manual_seed(0)
    on_cuda = device.type == "cuda"
    accelerator = Accelerator(cpu=not on_cuda, mixed_precision="bf16" if on_cuda else "no")
    model = build_model(FIXUP, model_size(device))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    accumulator = StepAccumulator(accelerator.device)
    cfg = MTConfig()

    def update(seed: int) -> None:
        outcome = mt_step.train_step(
            model, optimizer, accelerator, [batch(64, 32, seed)], cfg, (PAD, EOS), accumulator.halted
        )
        accumulator.add(outcome.sums, outcome.grad_norm, outcome.not_finite, seed)

    for seed in range(2):
        update(seed)
    counter = SyncCounter(device)
    with counter:
        for seed in range(2, 2 + steps):
            update(seed)
    window = accumulator.read()
    return {"updates": steps, "syncs": counter.count, "where": counter.where, "loss_sum": window.loss}


def decoding_syncs(model, device: torch.device, new_tokens: int) -> dict:
    """Syncs in one cached decoder step (model call only) and in a whole greedy ``generate``."""
    model = model.to(device).eval()
    inputs = {k: v.to(device) for k, v in batch(16, 24, seed=7).items() if k != "labels"}
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(**inputs)
        start = torch.full((16, 1), EOS, device=device)
        first = model(
            encoder_outputs=encoder_outputs,
            attention_mask=inputs["attention_mask"],
            decoder_input_ids=start,
            use_cache=True,
        )
        step_counter = SyncCounter(device)
        with step_counter:
            model(
                encoder_outputs=encoder_outputs,
                attention_mask=inputs["attention_mask"],
                decoder_input_ids=start,
                past_key_values=first.past_key_values,
                use_cache=True,
            )
        model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, num_beams=1, do_sample=False)
        generate_counter = SyncCounter(device)
        with generate_counter:
            model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False
            )
    return {
        "decoder_step_syncs": step_counter.count,
        "decoder_step_where": step_counter.where,
        "generate_new_tokens": new_tokens,
        "generate_syncs": generate_counter.count,
        "generate_where": generate_counter.where,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="training updates counted")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated in the counted call")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument(
        "--device", default="cuda", help="cuda[:N]; cpu only dry-runs the code paths (counts stay 0)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (the CPU proxy is tests/test_training_step.py; --device cpu dry-runs this)")
        return 2
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "training_step": training_step_syncs(device, args.steps),
        "fixup": decoding_syncs(build_model(FIXUP, model_size(device)), device, args.new_tokens),
        "marian": decoding_syncs(build_model(MARIAN, model_size(device)), device, args.new_tokens),
    }
    print(json.dumps(report, indent=1))
    if args.output:
        atomic_write_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
