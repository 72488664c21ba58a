"""Depth probe for CIFAR ResNets: Fixup vs standard (He/Kaiming) init without normalization vs BatchNorm.

The paper's depth claim (section 4.1): with Fixup, a residual network without normalization trains at
depths where the un-normalized standard init explodes, as BatchNorm networks do, up to 10,000 layers.
This probe builds CIFAR-family ResNets (depth 6n+2) of increasing depth, narrow enough for a CPU
(``--width-multiplier 0.25``: stage widths 4/8/16), and takes ``--steps`` SGD steps with the authors'
CIFAR setup (lr 0.1, momentum 0.9, weight decay 1e-4, Fixup scalars at lr/10) on the same real
CIFAR-10 batch(es), recording loss, gradient norms and the per-block output scale at init.

Variants (``--variants``): ``fixup`` (no normalization, Fixup init), ``kaiming`` (no normalization,
He init: the un-normalized standard baseline), ``batchnorm`` (BatchNorm, He init). 10,000 is not of the
form 6n+2; the default deepest model is 10,004 layers (n = 1667, 5001 residual blocks).

Typical use (each invocation adds its runs to ``<output-dir>/results.json`` and rebuilds the tables
and the plot from everything there)::

    nice -n 15 python benchmarks/depth_resnet.py --depths 20 110 1202
    nice -n 15 python benchmarks/depth_resnet.py --depths 10004 --variants fixup
    nice -n 15 python benchmarks/depth_resnet.py --depths 10004 --variants kaiming batchnorm
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
from fixup_transformer.probe_data import cifar_batches
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.vision import FixupResNetConfig, FixupResNetForImageClassification

VARIANTS = {  # name -> (normalization, init)
    "fixup": ("none", "fixup"),
    "kaiming": ("none", "kaiming"),
    "batchnorm": ("batchnorm", "kaiming"),
}
COLUMNS = [
    ("depth", "depth"),
    ("variant", "variant"),
    ("blocks", "blocks"),
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
    ("init_activation_rms_last_layer", "last block RMS @0"),
    ("seconds_per_step", "s/step"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--depths", type=int, nargs="+", default=[20, 110, 1202, 10004], help="CIFAR depths (6n+2)"
    )
    p.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), default=["fixup", "kaiming", "batchnorm"]
    )
    p.add_argument(
        "--data-dir", type=Path, default=shared_data_dir(), help="shared data root or cifar10/ folder"
    )
    p.add_argument("--width-multiplier", type=float, default=0.25, help="stage widths 16/32/64 times this")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--num-batches", type=int, default=1, help="distinct batches, cycled (1 = one fixed batch)"
    )
    p.add_argument("--steps", type=int, default=15, help="SGD updates; steps+1 passes are recorded")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--scalar-lr-multiplier", type=float, default=0.1, help="Fixup scalars train at lr x this")
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
    p.add_argument("--output-dir", type=Path, default=Path("runs/depth_resnet"))
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default <output-dir>/depth_resnet.png)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-layer-tables", action="store_true", help="skip the per-block CSV/JSON of each run")
    p.add_argument(
        "--report-only", action="store_true", help="run nothing; rebuild tables and plot from results.json"
    )
    p.add_argument("--fresh", action="store_true", help="discard earlier runs in <output-dir>/results.json")
    return p.parse_args(argv)


def build_model(
    depth: int, variant: str, width_multiplier: float, seed: int
) -> FixupResNetForImageClassification:
    normalization, init = VARIANTS[variant]
    torch.manual_seed(seed)
    config = FixupResNetConfig.cifar(
        depth=depth, width_multiplier=width_multiplier, normalization=normalization, init=init
    )
    return FixupResNetForImageClassification(config)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        k: v
        for k, v in vars(args).items()
        if k in ("width_multiplier", "batch_size", "num_batches", "steps", "lr", "momentum", "weight_decay")
        or k in ("scalar_lr_multiplier", "seed")
    }
    results = ResultsFile(args.output_dir / "results.json", settings, fresh=args.fresh)
    batches = [] if args.report_only else cifar_batches(args.data_dir, args.batch_size, args.num_batches)
    optim = OptimConfig(
        name="sgd",
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        scalar_lr_multiplier=args.scalar_lr_multiplier,
    )
    with torch_threads(args.threads):
        for depth in [] if args.report_only else args.depths:
            for variant in args.variants:
                started = time.perf_counter()
                model = build_model(depth, variant, args.width_multiplier, args.seed)
                run = record_training(
                    model,
                    batches,
                    build_optimizer(model, optim),
                    args.steps,
                    max_seconds=args.time_limit * 60 or None,
                    progress=f"ResNet-{depth} {variant}",
                    meta={"title": f"CIFAR ResNet-{depth} ({variant})", "depth": depth, "variant": variant},
                )
                result = summarize(
                    run,
                    depth,
                    variant,
                    f"ResNet-{depth} ({model.config.num_blocks} blocks)",
                    blocks=model.config.num_blocks,
                    parameters=sum(p.numel() for p in model.parameters()),
                    wall_seconds=time.perf_counter() - started,
                )
                results.add(result)
                if not args.no_layer_tables:
                    write_tables(run, args.output_dir / "layers", f"resnet{depth}_{variant}")
                print_result(f"ResNet-{depth} {variant:9s}", result)
                del model, run
    plot = None if args.no_plot else (args.plot or args.output_dir / "depth_resnet.png")
    write_report(
        results.runs,
        COLUMNS,
        args.output_dir,
        VARIANTS,
        plot,
        f"CIFAR ResNets, width x{args.width_multiplier}, batch {args.batch_size}, SGD lr {args.lr} "
        f"momentum {args.momentum}, real CIFAR-10",
        "residual block (input -> output)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
