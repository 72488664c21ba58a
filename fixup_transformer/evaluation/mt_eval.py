"""Score a saved translation model on a corpus split (the library side of ``scripts/evaluate_mt.py``).

The model directory is anything ``AutoModelForSeq2SeqLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load (``import fixup_transformer`` registers the Fixup types). When it
was exported by the training loop it also holds ``training_config.yaml``, from which the corpus, data
directory and languages are taken unless given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from ..data import CorpusConfig, load_parallel
from ..errors import ConfigError, ModelDirError, one_line, yaml_problem
from ..paths import TRAINING_CONFIG_FILE, resolve_path
from .bleu import Score, corpus_scores
from .translate import GenerationSettings, translate_corpus


@dataclass
class EvalRequest:
    """Which model, which data, how to decode."""

    model_dir: str
    split: str = "test"
    data_dir: str | None = None
    corpus: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    split_file: str | None = None
    limit: int | None = None
    tokenized_bleu: bool = False
    compound_split_bleu: bool = False
    pretokenized_references: bool = False


def training_config_section(model_dir: str | Path, section: str) -> dict:
    """One section (``data``, ``eval``) of the model's ``training_config.yaml``; empty if there is none."""
    path = Path(model_dir) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ModelDirError(f"{path} is not valid YAML: {yaml_problem(err)}") from err
    if not isinstance(recorded, dict):
        raise ModelDirError(f"{path} holds no training config mapping")
    return recorded.get(section) or {}


def corpus_for(request: EvalRequest) -> CorpusConfig:
    """Fill unspecified corpus fields from the training config; infer the corpus from the data dir name."""
    defaults = training_config_section(request.model_dir, "data")
    data_dir = request.data_dir or defaults.get("data_dir")
    # The recorded corpus names its files (e.g. wmt14: newstest2013 for validation) wherever the folder is;
    # a folder's name is only a guess for a model that records none.
    corpus = request.corpus or defaults.get("corpus") or (Path(data_dir).name if data_dir else None)
    src = request.src_lang or defaults.get("src_lang")
    tgt = request.tgt_lang or defaults.get("tgt_lang")
    if not (src and tgt):
        raise ConfigError(
            f"source/target languages unknown ({request.model_dir} records no training data settings): "
            "pass --src and --tgt"
        )
    if corpus is None:  # neither named nor recorded, and no local folder to read
        raise ConfigError(
            f"which data to score? {request.model_dir} records no corpus: pass --corpus (a known one, from the "
            "Hub) or --data-dir (local files)"
        )
    if src == tgt:
        raise ConfigError(f"source and target language are both {src!r}")
    same_corpus = request.corpus in (None, defaults.get("corpus"))
    split_files = dict(defaults.get("split_files") or {}) if same_corpus else {}
    if request.split_file:
        split_files[request.split] = request.split_file
    return CorpusConfig(
        name=corpus,
        src_lang=src,
        tgt_lang=tgt,
        data_dir=resolve_path(str(data_dir)) if data_dir else None,
        split_files=split_files,
    )


# Any one of these marks a saved tokenizer (our exports and Marian's both have tokenizer_config.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(model_dir: str | Path) -> Path:
    """The local model directory, or :class:`ModelDirError` saying what is missing (before any guessing
    at Hub ids or languages, which gave misleading errors)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(f"model dir not found: {path}")
    if not (path / "config.json").is_file():
        raise ModelDirError(f"no config.json in {path}: not a saved model directory")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"no tokenizer in {path} (expected one of {', '.join(TOKENIZER_FILES)})")
    return path


def load_model_and_tokenizer(model_dir: str | Path, device=None):
    """``AutoModelForSeq2SeqLM`` + ``AutoTokenizer`` from one directory, in eval mode."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    import fixup_transformer  # noqa: F401  (registers the Fixup model types with the Auto classes)

    # transformers' messages name what was missing; the error type makes it one line, exit code 2. The
    # config first: the tokenizer reads config.json too, and would be blamed for a bad field there.
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, StrictDataclassError) as err:
        raise ModelDirError(f"cannot load the model config in {model_dir}: {one_line(err)}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, StrictDataclassError) as err:
        raise ModelDirError(f"cannot load the tokenizer in {model_dir}: {one_line(err)}") from err
    # No, or truncated, weights: OSError / SafetensorError.
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), config=config)
    except (OSError, ValueError, StrictDataclassError, SafetensorError) as err:
        raise ModelDirError(f"cannot load the model in {model_dir}: {one_line(err)}") from err
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def evaluate_model(
    request: EvalRequest, settings: GenerationSettings, accelerator=None, on_translated=None
) -> tuple[list[str], dict[str, Score], CorpusConfig]:
    """Translate the split and score it; every process returns the full, ordered hypotheses.

    ``on_translated(hyps)`` runs between the two, so a caller can keep the translations (minutes of
    decoding) even if scoring then fails."""
    check_model_dir(request.model_dir)
    if request.limit is not None and request.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {request.limit}")
    corpus = corpus_for(request)
    pairs = load_parallel(corpus, request.split)
    if request.limit is not None:
        pairs = pairs[: request.limit]
    model, tokenizer = load_model_and_tokenizer(
        request.model_dir, accelerator.device if accelerator is not None else None
    )
    hyps = translate_corpus(model, tokenizer, [s for s, _ in pairs], settings, accelerator=accelerator)
    if on_translated is not None:
        on_translated(hyps)
    scores = corpus_scores(
        hyps,
        [t for _, t in pairs],
        with_tokenized_bleu=request.tokenized_bleu or request.pretokenized_references,
        pretokenized_references=request.pretokenized_references,
        target_lang=corpus.tgt_lang,
        with_compound_split_bleu=request.compound_split_bleu,
    )
    return hyps, scores, corpus
