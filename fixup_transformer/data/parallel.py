"""Read sentence-aligned parallel text from local files.

Aligned corpora are distributed as one file per language (``train.de``, ``train.en``, optionally gzipped)
where line *i* of one file translates line *i* of the other. Silent misalignment (a missing line, a stray
newline) ruins a translation model without any visible error, so every check here fails loudly and names the
file and the problem instead of truncating or guessing.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from pathlib import Path

from ..errors import CorpusError

GZIP_MAGIC = b"\x1f\x8b"

Pair = tuple[str, str]


def find_split_file(data_dir: str | Path, stem: str, lang: str) -> Path:
    """Return ``data_dir/{stem}.{lang}`` or its ``.gz`` variant.

    Exactly one of the two must exist: if both do, which one is current is ambiguous, so that is an error too.
    """
    data_dir = Path(data_dir)
    plain = data_dir / f"{stem}.{lang}"
    zipped = data_dir / f"{stem}.{lang}.gz"
    found = [p for p in (plain, zipped) if p.is_file()]
    if not found:
        raise CorpusError(
            f"corpus file not found: tried {plain} and {zipped} (check the data directory: data.data_dir in "
            "training, --data-dir in fixup-evaluate-mt, or $FIXUP_DATA_DIR for the configs' default)"
        )
    if len(found) == 2:
        raise CorpusError(f"ambiguous corpus file: both {plain} and {zipped} exist; remove one")
    return found[0]


def read_lines(path: str | Path) -> list[str]:
    """Read a UTF-8 text file (gzip if the name ends in ``.gz``) as a list of lines without line endings.

    Lines are split on ``\\n`` only (not ``str.splitlines``, which also splits on characters such as U+2028
    that can legitimately occur inside a sentence and would break the alignment); a trailing ``\\r`` is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as err:  # e.g. a truncated, corrupt or non-gzip ".gz" file
        raise CorpusError(f"cannot read {path}: {err}") from err
    if not data:
        raise CorpusError(f"corpus file is empty: {path}")
    if path.suffix != ".gz" and data[:2] == GZIP_MAGIC:
        raise CorpusError(f"{path} is gzip-compressed: name it {path.name}.gz")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # not part of the first sentence
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = bom + err.start  # in the file, as a hex editor shows it
        line_no = data.count(b"\n", 0, offset) + 1
        raise CorpusError(
            f"invalid UTF-8 in {path} at line {line_no} (byte offset {offset}): {err.reason}"
        ) from err
    unix = text.replace("\r\n", "\n")
    if "\r" in unix and "\n" not in unix.rstrip("\n"):
        # Old Mac line endings: split on \n the whole file would be one "sentence", on both sides alike.
        raise CorpusError(
            f"{path} ends its lines with \\r only (old Mac style); convert it to \\n line endings"
        )
    return split_text_lines(text)


def split_text_lines(text: str) -> list[str]:
    """Lines as ``wc -l`` and Python's file iteration count them: split on ``\n`` only, a trailing ``\r``
    removed (``str.splitlines`` would also split on U+2028, NEL, form feeds, ...)."""
    if text.endswith("\n"):
        text = text[:-1]
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def read_parallel_files(src_path: str | Path, tgt_path: str | Path) -> list[Pair]:
    """Read two aligned files into ``(source, target)`` pairs, checking that their line counts agree."""
    src = read_lines(src_path)
    tgt = read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(
            f"line counts differ: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)} lines"
        )
    return list(zip(src, tgt, strict=True))


def load_local_parallel(data_dir: str | Path, split: str, src_lang: str, tgt_lang: str) -> list[Pair]:
    """Load ``data_dir/{split}.{src_lang}[.gz]`` and ``data_dir/{split}.{tgt_lang}[.gz]`` as aligned pairs.

    ``split`` is the file stem as it appears on disk (e.g. ``"val"`` or ``"test_2016_flickr"`` for Multi30k);
    :func:`fixup_transformer.data.load_parallel` maps logical split names onto these stems.
    """
    return read_parallel_files(
        find_split_file(data_dir, split, src_lang), find_split_file(data_dir, split, tgt_lang)
    )
