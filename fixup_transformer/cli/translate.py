"""Translate text with a saved model, one sentence per line (like ``fairseq-interactive`` / ``marian-decoder``).

    python -m fixup_transformer.translate --model runs/multi30k_de_en/best < test.de > test.en
    fixup-translate --model DIR --input test.de --output test.en --beam 5 --lenpen 1.5 --batch-tokens 8000

Reads UTF-8 lines from stdin or ``--input`` and writes exactly one detokenized translation per input line,
in input order, to stdout or ``--output`` (written atomically once everything is translated). Sentences go
through :func:`~fixup_transformer.evaluation.translate.translate_corpus`, the code the evaluation uses:
token-budget batches of similar length, order restored. A blank line gives an empty line without reaching
the model. Decoding options default to the ``eval`` section of the model's ``training_config.yaml`` (the
beam and length penalty the run was evaluated with), else to those of
:class:`~fixup_transformer.evaluation.translate.GenerationSettings`. A progress bar goes to stderr when
the output is not a terminal (``--quiet`` turns it off). Unreadable input, a missing output folder or an
unusable model directory end with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic_files import atomic_write_text
from ..data.parallel import split_text_lines
from ..errors import USAGE_EXIT_CODE, InputError, ModelDirError

# Options of the command that map onto GenerationSettings fields, and the training config's eval keys.
DECODING_OPTIONS = {
    "beam": ("num_beams", "beam"),
    "lenpen": ("length_penalty", "lenpen"),
    "max_len_a": ("max_len_a", "max_len_a"),
    "max_len_b": ("max_len_b", "max_len_b"),
    "batch_tokens": ("batch_tokens", "batch_tokens"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fixup-translate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", required=True, help="exported model directory (e.g. <run>/best, <run>/averaged)"
    )
    p.add_argument("--input", help="UTF-8 text, one sentence per line (default: stdin)")
    p.add_argument("--output", help="where to write the translations (default: stdout)")
    p.add_argument("--beam", type=int, help="beam size (default: training config, else 5)")
    p.add_argument("--lenpen", type=float, help="length penalty (default: training config, else 1.0)")
    p.add_argument(
        "--max-len-a",
        type=float,
        help="at most a * source length + b new tokens (default: training config, else 1.2)",
    )
    p.add_argument("--max-len-b", type=int, help="see --max-len-a (default: training config, else 10)")
    p.add_argument("--max-new-tokens", type=int, help="fixed output length limit (overrides a/b)")
    p.add_argument(
        "--batch-tokens",
        type=int,
        help="padded source tokens per batch (default: training config, else 8000)",
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# Text in and out


def split_lines(data: bytes, source: str) -> list[str]:
    """UTF-8 bytes (a leading byte-order mark dropped) as lines, split as the corpus reader splits them."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"invalid UTF-8 in {source} at line {line_no}: {err.reason}") from err
    return split_text_lines(text) if text else []


def read_input(path: str | None) -> list[str]:
    if path is None:
        return split_lines(sys.stdin.buffer.read(), "<stdin>")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read input {path}: {err.strerror or err}") from err
    return split_lines(data, path)


def check_output(path: str | None) -> None:
    """Fail before loading the model, not after translating everything."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise InputError(f"cannot write output {path}: folder {Path(path).parent} does not exist")
    if path is not None and Path(path).is_dir():
        raise InputError(f"cannot write output {path}: it is a folder; name a file")


def write_output(path: str | None, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path is not None:
        atomic_write_text(path, text)
        return
    try:  # bytes, so the locale's encoding (e.g. LANG=C) cannot break non-ASCII output
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # e.g. `| head`: the reader is gone, nothing left to do
        sys.stderr.close()


def translate_lines(lines: Sequence[str], translate: Callable[[list[str]], list[str]]) -> list[str]:
    """``translate`` applied to the non-blank lines; blank lines stay empty, one output line per input line."""
    todo = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    hyps = translate([lines[i] for i in todo]) if todo else []
    for i, hyp in zip(todo, hyps, strict=True):
        # Only line breaks are replaced (never an extra line); other spacing is the text the evaluation scores.
        out[i] = hyp.replace("\r", " ").replace("\n", " ")
    return out


# ----------------------------------------------------------------------------------------------------------
# Model and decoding


def generation_settings(args: argparse.Namespace, eval_defaults: dict):
    """Command line first, then the training config's eval section, then GenerationSettings' defaults."""
    from ..evaluation.translate import GenerationSettings

    values = {}
    for option, (field, config_key) in DECODING_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            value = eval_defaults.get(config_key)
        if value is not None:
            values[field] = value
    settings = GenerationSettings(**values, max_new_tokens=args.max_new_tokens)
    for field in ("num_beams", "batch_tokens", "max_new_tokens"):
        if getattr(settings, field) is not None and getattr(settings, field) < 1:
            raise InputError(f"{field} must be at least 1, got {getattr(settings, field)}")
    if settings.max_len_a < 0 or settings.max_len_b < 0:
        raise InputError(
            f"max_len_a and max_len_b must be >= 0, got {settings.max_len_a}, {settings.max_len_b}"
        )
    if not math.isfinite(settings.length_penalty):
        raise InputError(f"lenpen must be a finite number, got {settings.length_penalty}")
    return settings


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checked_device(name: str) -> str:
    """``--device`` as torch reads it, on this machine: a clear error instead of a traceback later."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"--device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: this machine has no CUDA device (use cpu)")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except (InputError, ModelDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_EXIT_CODE


def _run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ..evaluation.mt_eval import check_model_dir, load_model_and_tokenizer, training_config_section
    from ..evaluation.translate import translate_corpus

    check_model_dir(args.model)
    check_output(args.output)
    lines = read_input(args.input)
    settings = generation_settings(args, training_config_section(args.model, "eval"))
    hf_logging.disable_progress_bar()  # the weight-loading bar is noise on a translation command's stderr
    model, tokenizer = load_model_and_tokenizer(args.model, checked_device(args.device or default_device()))
    show_progress = not args.quiet and (args.output is not None or not sys.stdout.isatty())

    def translate(sources: list[str]) -> list[str]:
        return translate_corpus(model, tokenizer, sources, settings, show_progress=show_progress)

    write_output(args.output, translate_lines(lines, translate))
    return 0


__all__ = ["InputError", "main", "split_lines", "translate_lines", "generation_settings"]

if __name__ == "__main__":
    sys.exit(main())
