"""The MT loop's data: load and clean the corpus, train (or reuse) the joint SentencePiece tokenizer, encode.

The tokenizer in ``<output_dir>/tokenizer`` records the data settings it was built from
(``data_settings.json``), so a rerun reuses it only when those settings are unchanged, and a resumed run
refuses a tokenizer built from other settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..data import (
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    CorpusConfig,
    Pair,
    encode_pairs,
    load_parallel,
    load_tokenizer,
    load_training_pairs,
    save_tokenizer,
    train_tokenizer,
)
from ..errors import ResumeMismatchError
from ..paths import resolve_path
from .checkpoint import atomic_directory, atomic_write_json
from .config import ConfigError
from .mt_config import MTConfig


@dataclasses.dataclass
class MTData:
    tokenizer: Any
    train: Any  # TranslationDataset
    valid: Any
    valid_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]] | None


def _corpus(cfg: MTConfig) -> CorpusConfig:
    d = cfg.data
    data_dir = resolve_path(d.data_dir) if d.data_dir else None
    return CorpusConfig(d.corpus, d.src_lang, d.tgt_lang, data_dir=data_dir, split_files=dict(d.split_files))


def _limit(pairs: list, limit: int | None) -> list:
    return pairs if limit is None else pairs[:limit]


TOKENIZER_SETTINGS_FILE = "data_settings.json"
# What a tokenizer trained by the loop depends on (data_dir is where the data is, not what it is).
_TOKENIZER_DATA_KEYS = (
    "corpus",
    "src_lang",
    "tgt_lang",
    "split_files",
    "train_limit",
    "max_len",
    "max_ratio",
    "vocab_size",
    "spm_model_type",
    "spm_max_sentences",
)


FINGERPRINT_KEY = "data.train_fingerprint"


def training_data_fingerprint(pairs: Sequence[Pair]) -> str:
    """``<pairs>:<hash>`` of the cleaned training pairs: what the data is, wherever ``data_dir`` points."""
    digest = hashlib.sha256()
    for source, target in pairs:
        digest.update(f"{source}\t{target}\n".encode())
    return f"{len(pairs)}:{digest.hexdigest()[:16]}"


def tokenizer_settings(cfg: MTConfig, fingerprint: str | None = None) -> dict[str, Any]:
    """The settings recorded beside ``<output_dir>/tokenizer`` (as JSON would read them back), with the
    fingerprint of the training pairs it was trained on when given."""
    settings = {f"data.{key}": getattr(cfg.data, key) for key in _TOKENIZER_DATA_KEYS}
    if fingerprint is not None:
        settings[FINGERPRINT_KEY] = fingerprint
    return json.loads(json.dumps({**settings, "seed": cfg.seed}))


def _recorded_tokenizer_settings(tokenizer_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tokenizer_dir / TOKENIZER_SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _needs_new_tokenizer(tokenizer_dir: Path, cfg: MTConfig, resuming: bool, log, fingerprint: str) -> bool:
    """Whether to (re)train ``<output_dir>/tokenizer``: it is reused only if built from these settings.

    A fresh run retrains one left by an earlier attempt that saved no checkpoint; a resumed run must find
    the one its checkpoint was trained with (one saved before settings were recorded is trusted, since
    the checkpoint's config has been compared already).
    """
    if not (tokenizer_dir / "tokenizer.json").exists():
        return True
    recorded, wanted = _recorded_tokenizer_settings(tokenizer_dir), tokenizer_settings(cfg, fingerprint)
    if recorded is not None and FINGERPRINT_KEY not in recorded:
        del wanted[FINGERPRINT_KEY]  # recorded before fingerprints were: the settings alone decide
    if recorded == wanted or (resuming and recorded is None):
        return False
    changed = ", ".join(
        f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in wanted.items() if recorded and recorded.get(k) != v
    )
    if resuming:
        hint = (
            " (the training pairs differ: does data.data_dir hold other data?)"
            if FINGERPRINT_KEY in changed
            else ""
        )
        raise ResumeMismatchError(
            f"the tokenizer in {tokenizer_dir} was built with other data settings ({changed}) than this "
            f"resumed run{hint}; set them back or use a new output_dir"
        )
    why = f"other data settings ({changed})" if recorded else "no record of its data settings"
    log(f"{tokenizer_dir} was left by an earlier attempt with {why}; training a new tokenizer")
    return True


def _build_tokenizer(train_pairs: list, tokenizer_dir: Path, cfg: MTConfig, log, fingerprint: str) -> None:
    log(f"training a {cfg.data.vocab_size}-piece joint SentencePiece model -> {tokenizer_dir}")
    try:
        tokenizer = train_tokenizer(
            train_pairs,
            cfg.data.vocab_size,
            cfg.data.spm_model_type,
            max_sentences=cfg.data.spm_max_sentences,
            seed=cfg.seed,
        )
    except RuntimeError as err:  # SentencePiece: "INTERNAL: file.cc(744) [check] Vocabulary size too high..."
        reason = str(err).split("] ", 1)[-1].strip()
        raise ConfigError(
            f"data.vocab_size={cfg.data.vocab_size}: SentencePiece cannot build this vocabulary from the "
            f"{len(train_pairs)} training pairs: {reason}"
        ) from None
    # Tokenizer and settings appear together or not at all: a kill mid-save leaves no half tokenizer.
    with atomic_directory(tokenizer_dir) as tmp:
        save_tokenizer(tokenizer, tmp)
        atomic_write_json(tmp / TOKENIZER_SETTINGS_FILE, tokenizer_settings(cfg, fingerprint))


def warn_about_special_token_text(pairs: Sequence[Pair], log) -> None:
    """Text that spells ``<pad>``, ``</s>`` or ``<unk>`` is read as that token (as transformers' tokenizers
    read special tokens), not as characters: say so, with a count, rather than let it pass unnoticed."""
    specials = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
    found = sum(1 for pair in pairs if any(token in side for side in pair for token in specials))
    if found:
        log(
            f"warning: {found} sentence pair(s) contain a literal {', '.join(specials)}; the tokenizer reads it "
            "as that special token, not as text (remove or escape it in the corpus to keep it as text)"
        )


def prepare_data(cfg: MTConfig, accelerator: Accelerator, resuming: bool = False) -> MTData:
    """Load, clean, tokenize (training the tokenizer once, on the main process) and encode."""
    corpus = _corpus(cfg)
    log = accelerator.print
    d = cfg.data
    train_pairs, stats = load_training_pairs(corpus, d.max_len, d.max_ratio, limit=d.train_limit)
    log(f"train: {stats}")
    if not train_pairs:
        raise ConfigError(
            f"no training pairs left after cleaning ({stats}): check data.max_len and data.max_ratio"
        )
    valid_pairs = _limit(load_parallel(corpus, "validation"), cfg.data.valid_limit)
    test_pairs = None
    if cfg.eval.test_split:
        test_pairs = _limit(load_parallel(corpus, cfg.eval.test_split), cfg.data.test_limit)

    # ${VAR} and ~ as data.data_dir has them
    tokenizer_dir = (
        resolve_path(cfg.data.tokenizer_dir) if cfg.data.tokenizer_dir else Path(cfg.output_dir) / "tokenizer"
    )
    # Decided by every process (a refusal must stop them all, not leave the others at a barrier); built once.
    if cfg.data.tokenizer_dir:  # the user's tokenizer, used as given
        if not (tokenizer_dir / "tokenizer.json").exists():
            raise ConfigError(f"data.tokenizer_dir={tokenizer_dir} has no tokenizer.json")
        build = False
    else:
        fingerprint = training_data_fingerprint(train_pairs)
        build = _needs_new_tokenizer(tokenizer_dir, cfg, resuming, log, fingerprint)
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            if build:
                _build_tokenizer(train_pairs, tokenizer_dir, cfg, log, fingerprint)
            warn_about_special_token_text(train_pairs + valid_pairs + (test_pairs or []), log)
        tokenizer = load_tokenizer(tokenizer_dir)
    return MTData(
        tokenizer=tokenizer,
        train=encode_pairs(train_pairs, tokenizer),
        valid=encode_pairs(valid_pairs, tokenizer),
        valid_pairs=valid_pairs,
        test_pairs=test_pairs,
    )
