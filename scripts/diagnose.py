"""Per-layer diagnostics of a Fixup Transformer or ResNet: activation scale and gradient norm per residual
layer at init and over the first training steps, for a chosen normalization and init.

Writes ``<output-dir>/<name>.csv`` and ``.json`` (one row per step and layer) and ``<name>.png``
(needs matplotlib: ``pip install matplotlib``; ``--no-plot`` skips it). Data are real: Multi30k de-en
batches for the Transformer, CIFAR-10 images for the ResNet, from the shared data folder.

Examples::

    python scripts/diagnose.py transformer --layers 24 --normalization post_ln --init xavier --steps 20
    python scripts/diagnose.py resnet --depth 110 --normalization none --init kaiming --steps 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fixup_transformer.diagnostics import plot_run, record_training, torch_threads, write_tables
from fixup_transformer.errors import InputError, one_line, run_script
from fixup_transformer.paths import shared_data_dir
from fixup_transformer.probe_data import cifar_batches, multi30k_batches
from fixup_transformer.text import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.vision import FixupResNetConfig, FixupResNetForImageClassification


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="model", required=True)

    def common(p: argparse.ArgumentParser, lr: float, batch_size: int) -> None:
        p.add_argument("--steps", type=int, default=10, help="optimizer updates; steps+1 passes recorded")
        p.add_argument("--lr", type=float, default=lr, help="constant learning rate (no warmup)")
        p.add_argument("--batch-size", type=int, default=batch_size)
        p.add_argument("--num-batches", type=int, default=1, help="distinct real batches, cycled")
        p.add_argument("--weight-decay", type=float, default=0.0)
        p.add_argument(
            "--scalar-lr-multiplier", type=float, default=0.1, help="Fixup scalars train at lr x this"
        )
        p.add_argument("--data-dir", type=Path, default=shared_data_dir(), help="shared data root")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
        p.add_argument("--output-dir", type=Path, default=Path("runs/diagnostics"))
        p.add_argument("--name", default=None, help="file stem (default: derived from the model)")
        p.add_argument("--no-plot", action="store_true")

    text = sub.add_parser(
        "transformer", help="encoder-decoder Transformer (Adam or RAdam, 0.9/0.98)", formatter_class=fmt
    )
    text.add_argument("--layers", type=int, default=6, help="encoder layers = decoder layers")
    text.add_argument("--normalization", choices=("none", "post_ln", "pre_ln"), default="none")
    text.add_argument("--init", choices=("fixup", "t_fixup", "xavier"), default="fixup")
    text.add_argument(
        "--optimizer",
        choices=("adamw", "radam"),
        default="adamw",
        help="radam: T-Fixup's reference optimizer",
    )
    text.add_argument("--d-model", type=int, default=64)
    text.add_argument("--heads", type=int, default=4)
    text.add_argument("--ffn-dim", type=int, default=128)
    text.add_argument("--vocab-size", type=int, default=1000)
    text.add_argument("--max-tokens", type=int, default=24, help="skip pairs longer than this")
    common(text, lr=5e-4, batch_size=16)

    vision = sub.add_parser("resnet", help="CIFAR ResNet, depth 6n+2 (SGD momentum 0.9)", formatter_class=fmt)
    vision.add_argument("--depth", type=int, default=110)
    vision.add_argument("--normalization", choices=("none", "batchnorm"), default="none")
    vision.add_argument("--init", choices=("fixup", "kaiming"), default="fixup")
    vision.add_argument("--width-multiplier", type=float, default=0.25)
    common(vision, lr=0.1, batch_size=16)
    return parser.parse_args(argv)


def build_transformer(args: argparse.Namespace):
    batches, vocab_size = multi30k_batches(
        args.data_dir,
        args.batch_size,
        args.num_batches,
        vocab_size=args.vocab_size,
        max_tokens=args.max_tokens,
    )
    torch.manual_seed(args.seed)
    config = FixupTransformerConfig.symmetric(
        args.layers,
        args.d_model,
        args.heads,
        args.ffn_dim,
        vocab_size=vocab_size,
        dropout=0.0,
        normalization=args.normalization,
        init=args.init,
    )
    model = FixupTransformerForConditionalGeneration(config)
    optim = OptimConfig(name=args.optimizer, lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    name = f"transformer{args.layers}_{args.normalization}_{args.init}"
    return model, batches, optim, name


def build_resnet(args: argparse.Namespace):
    batches = cifar_batches(args.data_dir, args.batch_size, args.num_batches)
    torch.manual_seed(args.seed)
    config = FixupResNetConfig.cifar(
        depth=args.depth,
        width_multiplier=args.width_multiplier,
        normalization=args.normalization,
        init=args.init,
    )
    model = FixupResNetForImageClassification(config)
    optim = OptimConfig(name="sgd", lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    name = f"resnet{args.depth}_{args.normalization}_{args.init}"
    return model, batches, optim, name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, batches, optim, name = (build_transformer if args.model == "transformer" else build_resnet)(args)
    optim.scalar_lr_multiplier = args.scalar_lr_multiplier
    name = args.name or name
    meta = {
        "title": f"{name}: lr {args.lr}, batch {args.batch_size}",
        **{k: str(v) for k, v in vars(args).items()},
    }
    with torch_threads(args.threads):
        run = record_training(
            model, batches, build_optimizer(model, optim), args.steps, progress=name, meta=meta
        )
    paths = write_tables(run, args.output_dir, name)
    if not args.no_plot:
        paths["png"] = plot_run(run, args.output_dir / f"{name}.png")
    for record in run.records:
        print(f"step {record.step:4d}  loss {record.loss:.4g}  grad norm {record.grad_norm:.4g}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def checked_main(argv: list[str] | None = None) -> int:
    """``main`` with impossible sizes (``--heads 3`` for d 32, ``--depth 21``, ``--steps 0``) and missing data
    files as input errors."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(one_line(err)) from err


if __name__ == "__main__":
    sys.exit(run_script(checked_main))  # a bad --data-dir or size is one error line, exit 2
