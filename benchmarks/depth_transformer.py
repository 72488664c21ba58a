"""Depth probe for encoder-decoder Transformers: Fixup vs post-LN vs pre-LN, trained without warmup.

Fixup's Transformer claim: without LayerNorm and without learning-rate warmup, a Fixup-initialized
Transformer trains, while the original post-LN Transformer needs warmup to avoid diverging or stalling,
and the problem grows with depth. This probe builds tiny-width Transformers (``--d-model 32``, 2 heads,
FFN 64) of increasing depth N+N and trains each for ``--steps`` Adam steps (betas 0.9/0.98) at a
*constant* learning rate on real Multi30k de->en batches (a 1000-piece joint SentencePiece vocabulary
trained on the first 4000 training pairs). Every model sees the same batches in the same order.

Variants (``--variants``): ``fixup`` (``normalization="none"``, ``init="fixup"``), ``post_ln`` and
``pre_ln`` (LayerNorm baselines, ``init="xavier"``). All share one code path, so the LayerNorm models
also carry the (trainable, init-neutral) scalar branch multipliers and shifts.

Divergence: the first step whose loss is inf/nan or above 2x the loss at init.

Typical use (each invocation adds its runs to ``<output-dir>/results.json``, then rebuilds tables/plot)::

    nice -n 15 python benchmarks/depth_transformer.py --layers 6 24 100
    nice -n 15 python benchmarks/depth_transformer.py --layers 500 --variants fixup
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from depth_common import ResultsFile, print_result, summarize, write_report

from fixup_transformer.diagnostics import record_training, torch_threads, write_tables
from fixup_transformer.paths import shared_data_dir
from fixup_transformer.probe_data import multi30k_batches
from fixup_transformer.text import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.training.optim import OptimConfig, build_optimizer

VARIANTS = {  # name -> (normalization, init)
    "fixup": ("none", "fixup"),
    "post_ln": ("post_ln", "xavier"),
    "pre_ln": ("pre_ln", "xavier"),
}
COLUMNS = [
    ("depth", "layers (enc+dec)"),
    ("variant", "variant"),
    ("parameters", "params"),
    ("recorded_steps", "steps done"),
    ("initial_loss", "loss @0"),
    ("final_loss", "loss @N"),
    ("min_loss", "min loss"),
    ("common_step", "common step k"),
    ("loss_at_common_step", "loss @k"),
    ("loss_decreased", "decreased"),
    ("initial_grad_norm", "grad norm @0"),
    ("max_grad_norm", "max grad norm"),
    ("first_nonfinite_step", "first inf/nan step"),
    ("divergence_step", "diverged @ step"),
    ("init_activation_rms_last_layer", "last layer RMS @0"),
    ("seconds_per_step", "s/step"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--layers", type=int, nargs="+", default=[6, 24, 100, 500], help="N for N+N layers")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["fixup", "post_ln", "pre_ln"])
    p.add_argument("--data-dir", type=Path, default=shared_data_dir(), help="shared data root or multi30k/")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--ffn-dim", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=1000, help="joint SentencePiece vocabulary")
    p.add_argument("--max-tokens", type=int, default=24, help="skip pairs longer than this (either side)")
    p.add_argument("--batch-size", type=int, default=16, help="sentence pairs per step")
    p.add_argument("--steps", type=int, default=50, help="Adam updates (constant lr, no warmup)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.98])
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled (fairseq adam = AdamW)")
    p.add_argument("--scalar-lr-multiplier", type=float, default=0.1, help="Fixup scalars train at lr x this")
    p.add_argument("--dropout", type=float, default=0.0, help="0: the probe is deterministic")
    p.add_argument("--seed", type=int, default=0, help="torch seed before building each model")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these tiny ops)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=8.0,
        help="minutes per model: stop recording (honestly, fewer steps) once exceeded; 0 = no limit",
    )
    p.add_argument("--output-dir", type=Path, default=Path("runs/depth_transformer"))
    p.add_argument(
        "--plot", type=Path, default=None, help="PNG path (default <output-dir>/depth_transformer.png)"
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-layer-tables", action="store_true", help="skip the per-layer CSV/JSON of each run")
    p.add_argument(
        "--report-only", action="store_true", help="run nothing; rebuild tables and plot from results.json"
    )
    p.add_argument("--fresh", action="store_true", help="discard earlier runs in <output-dir>/results.json")
    return p.parse_args(argv)


def build_model(
    layers: int, variant: str, vocab_size: int, args: argparse.Namespace
) -> FixupTransformerForConditionalGeneration:
    normalization, init = VARIANTS[variant]
    torch.manual_seed(args.seed)
    config = FixupTransformerConfig.symmetric(
        layers,
        args.d_model,
        args.heads,
        args.ffn_dim,
        vocab_size=vocab_size,
        dropout=args.dropout,
        normalization=normalization,
        init=init,
        max_position_embeddings=max(64, args.max_tokens + 1),
    )
    return FixupTransformerForConditionalGeneration(config)


SETTING_KEYS = (
    "d_model",
    "heads",
    "ffn_dim",
    "vocab_size",
    "max_tokens",
    "batch_size",
    "steps",
    "lr",
    "betas",
    "weight_decay",
    "scalar_lr_multiplier",
    "dropout",
    "seed",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k in SETTING_KEYS}
    # Library defaults that change what a rerun measures: recorded, so results of other code are not mixed in.
    settings["fixup_zero"] = FixupTransformerConfig().fixup_zero
    settings["gate_lr_multiplier"] = OptimConfig().gate_lr_multiplier
    results = ResultsFile(args.output_dir / "results.json", settings, fresh=args.fresh)
    batches, vocab_size = [], args.vocab_size
    if not args.report_only:
        batches, vocab_size = multi30k_batches(
            args.data_dir,
            args.batch_size,
            num_batches=args.steps + 1,
            vocab_size=args.vocab_size,
            max_tokens=args.max_tokens,
        )
    optim = OptimConfig(
        name="adamw",
        lr=args.lr,
        betas=tuple(args.betas),
        weight_decay=args.weight_decay,
        scalar_lr_multiplier=args.scalar_lr_multiplier,
    )
    with torch_threads(args.threads):
        for layers in [] if args.report_only else args.layers:
            for variant in args.variants:
                started = time.perf_counter()
                model = build_model(layers, variant, vocab_size, args)
                run = record_training(
                    model,
                    batches,
                    build_optimizer(model, optim),
                    args.steps,
                    max_seconds=args.time_limit * 60 or None,
                    progress=f"{layers}+{layers} {variant}",
                    meta={
                        "title": f"Transformer {layers}+{layers} ({variant})",
                        "depth": layers,
                        "variant": variant,
                    },
                )
                result = summarize(
                    run,
                    layers,
                    variant,
                    f"Transformer {layers}+{layers}",
                    parameters=sum(p.numel() for p in model.parameters()),
                    fixup_depth_L=model.config.fixup_depth,
                    wall_seconds=time.perf_counter() - started,
                )
                results.add(result)
                if not args.no_layer_tables:
                    write_tables(run, args.output_dir / "layers", f"transformer{layers}_{variant}")
                print_result(f"{layers}+{layers} {variant:8s}", result)
                del model, run
    plot = None if args.no_plot else (args.plot or args.output_dir / "depth_transformer.png")
    write_report(
        results.runs,
        COLUMNS,
        args.output_dir,
        VARIANTS,
        plot,
        f"Transformers N+N, d_model {args.d_model}, FFN {args.ffn_dim}, {args.heads} heads; Adam "
        f"{tuple(args.betas)} constant lr {args.lr}, no warmup; Multi30k de-en, batch {args.batch_size}",
        "layer (encoder, then decoder)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
