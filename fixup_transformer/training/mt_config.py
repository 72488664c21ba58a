"""The machine-translation recipe: every option of ``scripts/train_mt.py``, documented once, here.

YAML files in ``configs/`` set a subset of these fields; the command line overrides any of them with
dotted keys (``--optim.lr 1e-3 --model.normalization post_ln --model.init xavier``). The training defaults are
the paper's IWSLT14 recipe (fairseq ``transformer_iwslt_de_en`` size, Adam (0.9, 0.98), lr 5e-4, inverse-sqrt
with 4000 warmup updates from 1e-7, label smoothing 0.1, weight decay 1e-4, 4096 tokens per batch). Not the
paper's: dropout (the configs set it; the paper used 0.5 on IWSLT), ``data.vocab_size`` 8000 (its 10k is set
by configs/iwslt14_de_en.yaml), and the Fixup zero on the branch multiplier trained at
``optim.gate_lr_multiplier`` x lr (the paper zeroes the branch's last layer: ``model.fixup_zero: last_layer``,
as configs/iwslt14_de_en.yaml does; docs/fixup.md says why the default differs).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from huggingface_hub.errors import StrictDataclassError

from ..data.corpora import CorpusError, check_split_files
from ..evaluation.translate import GenerationSettings
from ..text.configuration_fixup_transformer import CHOICES, FixupTransformerConfig
from .config import ConfigError, config_section, field_doc, require
from .optim import OptimConfig
from .schedules import ScheduleConfig


@dataclasses.dataclass
class DataConfig:
    """Corpus, cleaning, tokenizer and batching."""

    corpus: str = field_doc(
        "multi30k", "Corpus name from fixup_transformer.data.CORPORA (decides Hub id and local file stems)."
    )
    src_lang: str = field_doc("de", "Source language code (file suffix / Hub column).")
    tgt_lang: str = field_doc("en", "Target language code.")
    data_dir: str | None = field_doc(
        None,
        "Local directory with {split}.{lang}[.gz] files; None loads the corpus from the Hub. "
        "${VAR} and ${VAR:-default} are expanded; a relative path that does not exist from the working "
        "directory is tried from the repository root.",
    )
    split_files: dict[str, str] = field_doc(
        {}, "Override local file stems per split, e.g. {validation: valid.tok.lc}."
    )
    max_len: int = field_doc(
        250,
        "Cleaning: drop training pairs with a side longer than this many words (whitespace-separated; in "
        "Chinese and Japanese each ideograph and each run of kana is a word).",
    )
    max_ratio: float = field_doc(1.5, "Cleaning: drop training pairs whose word-count ratio exceeds this.")
    train_limit: int | None = field_doc(
        None, "Use only the first N training pairs (before cleaning); for tests."
    )
    valid_limit: int | None = field_doc(None, "Use only the first N validation pairs (loss and BLEU).")
    test_limit: int | None = field_doc(None, "Use only the first N test pairs; for tests.")
    vocab_size: int = field_doc(8000, "Joint SentencePiece vocabulary size (including <pad>, </s>, <unk>).")
    spm_model_type: Literal["unigram", "bpe"] = field_doc("unigram", "SentencePiece model type.")
    spm_max_sentences: int | None = field_doc(
        None, "Train SentencePiece on a seeded random subset of this many sentences (both sides together)."
    )
    tokenizer_dir: str | None = field_doc(
        None,
        "Reuse this saved tokenizer instead of training one. Default: <output_dir>/tokenizer, trained on "
        "the first run and reused on resume.",
    )
    max_tokens: int = field_doc(4096, "Padded tokens per batch per process (fairseq --max-tokens).")
    max_sentences: int | None = field_doc(None, "Optional cap on sentences per batch.")


# The architecture section *is* FixupTransformerConfig, restricted to what a recipe chooses: the vocabulary
# size and special token ids come from the tokenizer, the loss's label smoothing from train.label_smoothing.
# Types, defaults and --help texts are read from the model config class, so the two cannot drift apart.
ARCHITECTURE_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "activation_function",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "max_position_embeddings",
    "position_embedding",
    "scale_embedding",
    "share_encoder_decoder_embeddings",
    "tie_word_embeddings",
    "normalization",
    "init",
    "init_std",
    "fixup_cross_attention_depth",
    "fixup_zero",
)
ModelConfig = config_section(
    FixupTransformerConfig,
    ARCHITECTURE_FIELDS,
    CHOICES,
    "ModelConfig",
    __name__,
    "Architecture: fields of FixupTransformerConfig (vocab and special ids come from the tokenizer).",
)


@dataclasses.dataclass
class TrainConfig:
    """Budget, precision, batching of updates, logging."""

    max_updates: int | None = field_doc(None, "Stop after this many optimizer updates.")
    max_epochs: int | None = field_doc(None, "Stop after this many epochs.")
    max_minutes: float | None = field_doc(
        None,
        "Wall-clock budget for training in minutes, summed over resumed segments (setup, final evaluation "
        "and test are not counted); on expiry the run validates, saves and exports as usual.",
    )
    update_freq: int = field_doc(
        1,
        "Gradient accumulation: batches per update (fairseq --update-freq). The loss is normalized by the "
        "target tokens of all accumulated batches on all processes.",
    )
    label_smoothing: float = field_doc(
        0.1,
        "Label smoothing epsilon, in torch's convention (eps / V on every class; fairseq's "
        "label_smoothed_cross_entropy puts eps / (V - 1) on the other classes: a difference of O(eps / V)).",
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field_doc(
        "auto",
        "auto = bf16 autocast where the hardware has it (a CUDA GPU with bf16, a CPU with AMX-bf16), else fp32 "
        "(logged at start); no = fp32; bf16 = autocast; fp16 = autocast + dynamic loss scaling (overflowing "
        "steps are skipped; on GPUs: Accelerate gives a CPU neither, so fp16 there is a config error).",
    )
    cpu: bool = field_doc(False, "Force CPU (also selects the gloo backend for multi-process runs).")
    compile: bool = field_doc(
        False,
        "torch.compile the training forward and loss (inductor, dynamic shapes). The first updates pay the "
        "compilation (tens of seconds on a CPU); dropout masks then come from inductor's RNG, so a compiled "
        "run is not bit-identical to an eager one. Validation and decoding stay eager.",
    )
    num_threads: int | None = field_doc(
        None,
        "torch intra-op CPU threads per process (None: PyTorch's default, all cores). Set 1 when several "
        "runs or processes share a few cores: oversubscribed OpenMP threads can be several times slower.",
    )
    log_interval: int = field_doc(
        50,
        "Write a train metrics record every N updates. The step sums are read from the device only then (and "
        "before a validation or checkpoint), so a non-finite step stops the run at the next such boundary; "
        "several processes also agree on the time budget then.",
    )
    trackers: list[str] = field_doc(
        ["tensorboard"], "Accelerate trackers (those not installed are skipped); [] for none."
    )
    ddp_timeout_minutes: float = field_doc(
        30.0,
        "How long processes wait for each other in a collective call before the run fails (transformers' "
        "ddp_timeout default). The longest wait is at start-up: the first process trains SentencePiece "
        "while the others wait; raise it for very large corpora.",
    )
    push_to_hub: str | None = field_doc(
        None,
        "Hub repository (user/name) that the best export (model, code, tokenizer, card) is pushed to at the "
        "end of training, created if missing; credentials from HF_TOKEN or `hf auth login`. None: no push.",
    )
    hub_license: str = field_doc(
        "apache-2.0", "License written into the exports' model cards (a Hub license id); check the data's."
    )


@dataclasses.dataclass
class EvalConfig:
    """Validation during training and the final test."""

    valid_interval_updates: int = field_doc(1000, "Validate every N updates (0: only at epoch ends/the end).")
    valid_every_epoch: bool = field_doc(True, "Also validate at the end of every epoch.")
    bleu_sentences: int = field_doc(
        500, "Translate this many validation sentences for the validation BLEU (0: loss only)."
    )
    valid_beam: int = field_doc(1, "Beam size for validation BLEU (1 = greedy, fastest).")
    best_metric: Literal["bleu", "loss"] = field_doc(
        "bleu", "Metric that selects the 'best' model (falls back to loss when BLEU is disabled)."
    )
    test_split: str | None = field_doc("test", "Split scored at the end (None: no test).")
    test_model: Literal["auto", "best", "last", "averaged"] = field_doc(
        "auto",
        "Weights used for the final test: best (by validation), last, averaged (needs "
        "checkpoint.average_last > 1), or auto = averaged if its validation metric beats best, else best.",
    )
    beam: int = field_doc(GenerationSettings.num_beams, "Beam size for the final test.")
    lenpen: float = field_doc(
        GenerationSettings.length_penalty, "Length penalty for beam search (fairseq --lenpen)."
    )
    max_len_a: float = field_doc(
        GenerationSettings.max_len_a, "Generate at most max_len_a * source_len + max_len_b tokens."
    )
    max_len_b: int = field_doc(GenerationSettings.max_len_b, "See max_len_a.")
    batch_tokens: int = field_doc(
        GenerationSettings.batch_tokens, "Padded source tokens per generation batch."
    )
    tokenized_bleu: bool = field_doc(
        False, "Also report lowercased tokenized BLEU (as IWSLT papers), labelled, beside sacreBLEU."
    )
    compound_split_bleu: bool = field_doc(
        False,
        "Also report cased, Moses-tokenized, compound-split BLEU (as WMT en-de papers), labelled, beside "
        "sacreBLEU.",
    )


@dataclasses.dataclass
class CheckpointConfig:
    """Saving, resuming, averaging."""

    save_interval_updates: int = field_doc(
        1000, "Save a full training checkpoint every N updates (0: end only)."
    )
    keep_last: int = field_doc(5, "Keep only the newest N checkpoints (0 keeps all).")
    resume: str | None = field_doc(
        "auto",
        "auto: continue from the newest complete checkpoint in output_dir if any; a path: that checkpoint "
        "(or the newest below it); None: always start fresh (fails if output_dir has checkpoints).",
    )
    average_last: int = field_doc(
        0, "At the end, average the weights of the last N checkpoints into <output_dir>/averaged (0/1: off)."
    )


@dataclasses.dataclass
class MTConfig:
    """Everything ``scripts/train_mt.py`` needs."""

    output_dir: str = field_doc("runs/mt", "Run directory: checkpoints/, best/, last/, metrics.jsonl, logs.")
    seed: int = field_doc(1, "Seed for init, batch order and dropout (fairseq default 1).")
    data: DataConfig = field_doc(DataConfig(), "Corpus and batching.")
    model: ModelConfig = field_doc(ModelConfig(), "Architecture.")
    optim: OptimConfig = field_doc(OptimConfig(), "Optimizer.")
    schedule: ScheduleConfig = field_doc(ScheduleConfig(), "Learning-rate schedule.")
    train: TrainConfig = field_doc(TrainConfig(), "Training budget and precision.")
    eval: EvalConfig = field_doc(EvalConfig(), "Validation and test.")
    checkpoint: CheckpointConfig = field_doc(CheckpointConfig(), "Checkpoints.")

    def validate(self) -> None:
        """Cross-field checks that a single field's type cannot express."""
        t = self.train
        if not self.output_dir.strip():  # "" would be the current directory: checkpoints among other files
            raise ConfigError("output_dir must name a directory, got an empty string")
        if not 0 <= self.seed < 2**32:  # numpy's range, or a traceback when the data order is seeded
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if t.max_updates is None and t.max_epochs is None and t.max_minutes is None:
            raise ConfigError("set a budget: train.max_updates, train.max_epochs and/or train.max_minutes")
        if t.update_freq < 1:
            raise ConfigError(f"train.update_freq must be >= 1, got {t.update_freq}")
        if self.eval.test_model == "averaged" and self.checkpoint.average_last < 2:
            raise ConfigError("eval.test_model=averaged needs checkpoint.average_last >= 2")
        if t.push_to_hub:  # fail now, not after hours of training
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(t.push_to_hub)
            except HFValidationError as err:
                raise ConfigError(f"train.push_to_hub: {err}") from None
            if "/" not in t.push_to_hub:
                raise ConfigError(
                    f"train.push_to_hub must be 'user/name' or 'org/name', got {t.push_to_hub!r}"
                )
        try:
            check_split_files(self.data.split_files, self.data.data_dir)
        except CorpusError as err:
            raise ConfigError(f"data.{err}") from None
        self.optim.validate()
        self.schedule.validate()
        self.schedule.check_length(t.max_updates, "train.max_updates")
        self._check_ranges()
        self._check_architecture()
        if self.checkpoint.average_last > self.checkpoint.keep_last > 0:
            raise ConfigError(
                f"checkpoint.average_last={self.checkpoint.average_last} needs as many kept checkpoints; "
                f"checkpoint.keep_last is {self.checkpoint.keep_last}"
            )
        from accelerate.utils import LoggerType

        known = [tracker.value for tracker in LoggerType]
        for name in t.trackers:
            if name not in known:
                raise ConfigError(f"train.trackers: unknown tracker {name!r}; Accelerate's are {known}")

    def _check_architecture(self) -> None:
        """The model section as the model config will see it: its own checks (e.g. ``init_std > 0``, heads
        dividing ``d_model``) fail here, before data and tokenizer are built, as a config error."""
        fields = {name: getattr(self.model, name) for name in ARCHITECTURE_FIELDS}
        try:
            FixupTransformerConfig(vocab_size=self.data.vocab_size, **fields)
        except (ValueError, TypeError, StrictDataclassError) as err:
            raise ConfigError(f"model: {err}") from None

    def _check_ranges(self) -> None:
        """Values outside their range fail here, naming the key, not deep inside torch or SentencePiece."""
        d, m, t, e, c = self.data, self.model, self.train, self.eval, self.checkpoint
        positive = {
            "data.max_len": d.max_len,
            "data.max_tokens": d.max_tokens,
            "data.max_sentences": d.max_sentences,
            "data.train_limit": d.train_limit,
            "data.valid_limit": d.valid_limit,
            "data.test_limit": d.test_limit,
            "data.spm_max_sentences": d.spm_max_sentences,
            "model.d_model": m.d_model,
            "model.encoder_layers": m.encoder_layers,
            "model.decoder_layers": m.decoder_layers,
            "model.encoder_attention_heads": m.encoder_attention_heads,
            "model.decoder_attention_heads": m.decoder_attention_heads,
            "model.encoder_ffn_dim": m.encoder_ffn_dim,
            "model.decoder_ffn_dim": m.decoder_ffn_dim,
            "model.max_position_embeddings": m.max_position_embeddings,
            "train.max_updates": t.max_updates,
            "train.max_epochs": t.max_epochs,
            "train.max_minutes": t.max_minutes,
            "train.num_threads": t.num_threads,
            "train.ddp_timeout_minutes": t.ddp_timeout_minutes,
            "train.log_interval": t.log_interval,
            "eval.valid_beam": e.valid_beam,
            "eval.beam": e.beam,
            "eval.batch_tokens": e.batch_tokens,
        }
        for key, value in positive.items():
            if value is not None:
                require(value > 0, key, value, "> 0")
        not_negative = {
            "eval.valid_interval_updates": e.valid_interval_updates,
            "eval.bleu_sentences": e.bleu_sentences,
            "eval.max_len_a": e.max_len_a,
            "eval.max_len_b": e.max_len_b,
            "checkpoint.save_interval_updates": c.save_interval_updates,
            "checkpoint.keep_last": c.keep_last,
            "checkpoint.average_last": c.average_last,
        }
        for key, value in not_negative.items():
            require(value >= 0, key, value, ">= 0")
        # longer side / shorter side is at least 1: a smaller bound would drop every pair
        require(d.max_ratio >= 1, "data.max_ratio", d.max_ratio, ">= 1")
        require(d.src_lang != d.tgt_lang, "data.tgt_lang", d.tgt_lang, "different from data.src_lang")
        # 3 special pieces (<pad>, </s>, <unk>) plus at least one real piece.
        require(d.vocab_size >= 4, "data.vocab_size", d.vocab_size, ">= 4")
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            require(0 <= getattr(m, key) < 1, f"model.{key}", getattr(m, key), "in [0, 1)")
        require(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "in [0, 1)")


# Settings a resumed run may not change: the saved weights, optimizer state, tokenizer and batch position
# depend on them (fnmatch patterns over dotted keys). Everything else (budget, lr schedule, optimizer
# hyper-parameters, eval and checkpoint settings) may change on resume and is applied and logged.
FIXED_ON_RESUME = (
    "seed",
    "model.*",
    "data.*",
    "train.update_freq",
    "train.mixed_precision",
    "optim.name",
    "optim.decay_scalars",
    "optim.decay_biases_and_norms",
)
# Exceptions: where the data lives (not what it is) and how much of validation/test is scored.
CHANGEABLE_ON_RESUME = ("data.data_dir", "data.valid_limit", "data.test_limit")
