"""Known translation corpora and the single entry point that loads a split from disk or from the Hub.

All knowledge about where a corpus lives (Hub id, config, field layout, local file stems) sits in the one
table :data:`CORPORA`, so adding a corpus is one entry and nothing else changes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cleaning import CleaningStats, clean_pairs
from .parallel import CorpusError, Pair, load_local_parallel

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CorpusSpec:
    """Where one corpus lives.

    ``hub_field`` names the column holding a ``{lang: text}`` dict (the ``translation`` layout of WMT/IWSLT);
    ``None`` means each language is its own column (the ``bentrevett/multi30k`` layout). ``hub_splits`` and
    ``local_splits`` map the logical split names in :data:`SPLITS` onto the names used by the Hub dataset and
    onto local file stems; splits not listed keep their logical name.
    """

    hub_path: str
    hub_config: str | None = None
    hub_field: str | None = "translation"
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    local_splits: Mapping[str, str] = field(default_factory=dict)


# Hub ids were checked against the Hub pages, but cannot be exercised here (offline); local stems match
# /work/shared/data (see its README) and fairseq's prepare-*.sh outputs.
CORPORA: dict[str, CorpusSpec] = {
    "multi30k": CorpusSpec(
        hub_path="bentrevett/multi30k",
        hub_field=None,
        local_splits={"validation": "val", "test": "test_2016_flickr"},
    ),
    "iwslt14": CorpusSpec(
        hub_path="bbaaaa/iwslt14-de-en",
        hub_config="de-en",
        local_splits={"validation": "valid", "test": "test"},
    ),
    "iwslt17": CorpusSpec(
        hub_path="IWSLT/iwslt2017",
        hub_config="iwslt2017-de-en",
        local_splits={"validation": "valid", "test": "test"},
    ),
    "wmt16": CorpusSpec(
        hub_path="wmt/wmt16",
        hub_config="de-en",
        local_splits={"validation": "newstest2013", "test": "newstest2014"},
    ),
    "wmt14": CorpusSpec(
        hub_path="wmt/wmt14",
        hub_config="de-en",
        local_splits={"validation": "newstest2013", "test": "newstest2014"},
    ),
}


@dataclass
class CorpusConfig:
    """What to load: a corpus name from :data:`CORPORA`, the language direction, and optionally a local dir.

    With ``data_dir`` set, files ``{stem}.{lang}[.gz]`` are read from it (no network); otherwise the corpus is
    fetched with :func:`datasets.load_dataset`. ``split_files`` overrides the table's local stems, e.g.
    ``{"validation": "valid.tok.lc"}`` for the tokenized IWSLT14 files.
    """

    name: str = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    data_dir: str | Path | None = None
    split_files: dict[str, str] = field(default_factory=dict)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_split_files(self.split_files, self.data_dir)

    @property
    def spec(self) -> CorpusSpec:
        """The table entry for :attr:`name`; a local ``data_dir`` also works for names not in the table."""
        if self.name in CORPORA:
            return CORPORA[self.name]
        if self.data_dir is not None:
            return CorpusSpec(hub_path="")
        raise CorpusError(f"unknown corpus {self.name!r}; known: {sorted(CORPORA)} (or set data_dir)")

    def local_stem(self, split: str) -> str:
        """The file stem of ``split`` in ``data_dir``: ``split_files`` first, then the corpus table's."""
        return self.split_files.get(split, self.spec.local_splits.get(split, split))

    def describe(self, split: str) -> str:
        """Where ``split`` is read from, for logs: ``dir/stem.{src,tgt}`` or the Hub dataset."""
        if self.data_dir is not None:
            return f"{Path(self.data_dir) / self.local_stem(split)}.{{{self.src_lang},{self.tgt_lang}}}"
        return f"Hub {self.spec.hub_path}"


def check_split_files(split_files: Mapping[str, str], data_dir: str | Path | None) -> None:
    """Refuse what would be silently ignored: a key that is not a split (``valid:`` for ``validation:`` would
    load the default file instead, e.g. a BPE'd ``valid.de`` of a fairseq folder) or stems without local files."""
    unknown = sorted(set(split_files) - set(SPLITS))
    if unknown:
        raise CorpusError(f"split_files: unknown split {unknown[0]!r}; the splits are {list(SPLITS)}")
    if split_files and data_dir is None:
        raise CorpusError(
            "split_files names local file stems, but data_dir is not set (the Hub would be used)"
        )


def load_hub_parallel(
    spec: CorpusSpec, split: str, src_lang: str, tgt_lang: str, cache_dir: str | None = None
) -> list[Pair]:
    """Download (or read from the HF cache) one split via :func:`datasets.load_dataset` as pairs."""
    import datasets

    hub_split = spec.hub_splits.get(split, split)
    try:
        dataset: Any = datasets.load_dataset(
            spec.hub_path, spec.hub_config, split=hub_split, cache_dir=cache_dir
        )
    except Exception as err:  # offline, unknown id, missing split: all surface as one clear error
        if "Dataset scripts are no longer supported" in str(err):
            # datasets >= 4 refuses Hub repos that ship a loading script; downloading again cannot help.
            advice = (
                "This Hub copy is a script dataset, which the installed `datasets` no longer runs: prepare "
                "the corpus as local {split}.{lang}[.gz] files and set data.data_dir to their folder."
            )
        else:
            advice = "If offline, download it first or set data_dir to local files."
        raise CorpusError(
            f"could not load Hub dataset {spec.hub_path!r} (config {spec.hub_config!r}, split {hub_split!r}): "
            f"{type(err).__name__}: {err}. {advice}"
        ) from err
    where = f"Hub dataset {spec.hub_path!r} (config {spec.hub_config!r}, split {hub_split!r})"
    if spec.hub_field is None:
        missing = [lang for lang in (src_lang, tgt_lang) if lang not in dataset.column_names]
        if missing:
            raise CorpusError(f"{where} has no column {missing[0]!r}; its columns: {dataset.column_names}")
        return list(zip(dataset[src_lang], dataset[tgt_lang], strict=True))
    rows = dataset[spec.hub_field]
    if rows and any(lang not in rows[0] for lang in (src_lang, tgt_lang)):
        raise CorpusError(f"{where} has languages {sorted(rows[0])}, not {src_lang!r} and {tgt_lang!r}")
    return [(row[src_lang], row[tgt_lang]) for row in rows]


def _unknown_name_hint(config: CorpusConfig, split: str) -> str:
    """Why a local split file may be missing: a corpus name outside the table (a typo of a known one?) has no
    file names of its own, so the split is looked for under its own name."""
    stem = config.local_stem(split)
    present = all(
        any((Path(config.data_dir) / f"{stem}.{lang}{ext}").is_file() for ext in ("", ".gz"))
        for lang in (config.src_lang, config.tgt_lang)
    )
    if config.name in CORPORA or split in config.split_files or present:
        return ""
    close = difflib.get_close_matches(config.name, CORPORA, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return (
        f". The corpus name {config.name!r} is not one of {sorted(CORPORA)}, so its {split} split is read from "
        f"{stem}.<lang>: {guess}Name a known corpus, or map the split to its files with "
        "data.split_files"
    )


def load_parallel(config: CorpusConfig, split: str) -> list[Pair]:
    """Load a split exactly as stored, unfiltered: local files if ``config.data_dir`` is set, else the Hub.

    Use this for validation and test sets (they must never be filtered, or scores are not comparable);
    training data goes through :func:`load_training_pairs` instead.
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; expected one of {SPLITS}")
    spec = config.spec
    if config.data_dir is not None:
        try:
            return load_local_parallel(
                config.data_dir, config.local_stem(split), config.src_lang, config.tgt_lang
            )
        except CorpusError as err:
            raise CorpusError(f"{err}{_unknown_name_hint(config, split)}") from None
    return load_hub_parallel(spec, split, config.src_lang, config.tgt_lang, config.cache_dir)


def load_training_pairs(
    config: CorpusConfig, max_len: int = 250, max_ratio: float = 1.5, limit: int | None = None
) -> tuple[list[Pair], CleaningStats]:
    """Load the ``train`` split (its first ``limit`` pairs if given) and clean it (see :func:`clean_pairs`);
    returns the kept pairs and the counts."""
    pairs = load_parallel(config, "train")
    if limit is not None:
        pairs = pairs[:limit]
    return clean_pairs(pairs, max_len=max_len, max_ratio=max_ratio)
