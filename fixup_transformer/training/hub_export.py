"""What makes an MT export Hub-ready: model code + ``auto_map``, a model card, and the end-of-run push.

The card (``README.md``) is rendered from the files of the export directory alone -- ``config.json``,
``training_config.yaml`` and ``export_info.json`` -- so it can be re-rendered at any time: training writes
it with each export (validation scores, budget), and again once the test split has been scored with that
export (test sacreBLEU/chrF2 with their signatures). The YAML header follows the Hub's model-card metadata
(languages, license, datasets, tags, ``model-index`` with the scores) via huggingface_hub's
:class:`~huggingface_hub.ModelCardData`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..atomic_files import atomic_write_text
from ..data.corpora import CORPORA
from ..errors import HubPushError, one_line
from ..hub import add_remote_code, push_export
from .checkpoint import TRAINING_CONFIG_FILE, atomic_write_json
from .state import epoch_of_last_update

INFO_FILE = "export_info.json"
CARD_FILE = "README.md"
PAPER_URL = "https://arxiv.org/abs/1901.09321"
CITATION = """@inproceedings{zhang2019fixup,
  title     = {Fixup Initialization: Residual Learning Without Normalization},
  author    = {Zhang, Hongyi and Dauphin, Yann N. and Ma, Tengyu},
  booktitle = {International Conference on Learning Representations},
  year      = {2019},
  url       = {https://openreview.net/forum?id=H1gsz30cKX}
}"""
T_FIXUP_URL = "https://proceedings.mlr.press/v119/huang20f.html"
T_FIXUP_CITATION = """@inproceedings{huang2020improving,
  title     = {Improving Transformer Optimization Through Better Initialization},
  author    = {Huang, Xiao Shi and Perez, Felipe and Ba, Jimmy and Volkovs, Maksims},
  booktitle = {International Conference on Machine Learning},
  year      = {2020},
  url       = {https://proceedings.mlr.press/v119/huang20f.html}
}"""
_EXPORT_DESCRIPTION = {
    "best": "the weights with the best validation score during training",
    "last": "the weights at the end of training",
    "averaged": "the average of the last training checkpoints' weights",
}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


# ----------------------------------------------------------------------------------------------------------
# Hooks called by the training loop


def complete_mt_export(
    export_dir: str | Path,
    name: str,
    model,
    trainer_state: dict[str, Any],
    example_source: str | None = None,
    valid_scores: dict[str, Any] | None = None,
) -> None:
    """Add remote code, budget and card to a freshly saved export (called on the unpublished temp dir).

    ``name`` is the export's final name (best, last, averaged); ``trainer_state`` is the loop's counters (``TrainerState`` as a dict); ``example_source`` is a source
    sentence for the card's usage snippet; ``valid_scores`` are validation results of these same weights,
    recorded where the export's own ``export_info.json`` has none (the ``last`` export).
    """
    export_dir = Path(export_dir)
    add_remote_code(export_dir, model.config)
    info = _read_json(export_dir / INFO_FILE)
    info["export"] = name
    for key, value in (valid_scores or {}).items():
        info.setdefault(key, value)
    info["budget"] = {
        "updates": trainer_state.get("step"),
        "epochs": epoch_of_last_update(trainer_state.get("epoch", 0), trainer_state.get("batches_done", 1)),
        "train_minutes": round(trainer_state.get("train_seconds", 0.0) / 60, 2),
        "target_tokens": trainer_state.get("target_tokens"),
        "skipped_fp16_steps": trainer_state.get("skipped_steps", 0),
    }
    info["parameters"] = sum(p.numel() for p in model.parameters())
    if example_source:
        info["example_source"] = example_source
    atomic_write_json(export_dir / INFO_FILE, info)
    write_model_card(export_dir)


def record_test_scores(
    export_dir: str | Path, split: str, sentences: int, scores: dict[str, dict], beam: int
) -> None:
    """Store the test scores of this export (``scores_to_json`` output) and re-render its card."""
    export_dir = Path(export_dir)
    info = _read_json(export_dir / INFO_FILE)
    info["test"] = {"split": split, "sentences": sentences, "beam": beam, "scores": scores}
    atomic_write_json(export_dir / INFO_FILE, info)
    write_model_card(export_dir)


def push_best_export(run_dir: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Push ``best/`` (``last/`` if no validation ever ran) with the card's model name set to ``repo_id``."""
    run_dir = Path(run_dir)
    export = run_dir / "best" if (run_dir / "best" / "model.safetensors").is_file() else run_dir / "last"
    write_model_card(export, repo_id=repo_id)  # the usage snippet and model-index name the repository
    try:
        return push_export(
            export, repo_id, private=private, commit_message=f"Upload the {export.name} export"
        )
    except Exception as err:
        raise HubPushError(
            f"training finished and everything is saved in {run_dir}, but pushing {export} to the Hub "
            f"repository {repo_id} failed ({type(err).__name__}: {one_line(err)}). Retry with: "
            f"python -m fixup_transformer.hub {export} {repo_id}"
        ) from err


# ----------------------------------------------------------------------------------------------------------
# The card


def _results(info: dict, cfg: dict, dataset_id: str, pair: str) -> list[EvalResult]:
    """model-index entries: the test scores if known, then validation BLEU (each with its signature)."""

    def result(split: str, metric_type: str, name: str, value: float, signature: str | None) -> EvalResult:
        return EvalResult(
            task_type="translation",
            task_name=f"Translation {pair}",
            dataset_type=dataset_id,
            dataset_name=f"{cfg['data']['corpus']} {pair}",
            dataset_split=split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=round(value, 2),
            metric_args={"signature": signature} if signature is not None else None,
        )

    results = []
    test = info.get("test")
    if test:
        # data.test_limit scored only the first sentences: the entry must not read as the whole split's score.
        limited = cfg.get("data", {}).get("test_limit") is not None
        part = f"first {test['sentences']} sentences, " if limited else ""
        for key, metric_type in (("bleu", "bleu"), ("chrf", "chrf")):
            score = test["scores"].get(key)
            if score:
                name = f"{score['name']} ({part}beam {test['beam']})"
                results.append(result(test["split"], metric_type, name, score["score"], score["signature"]))
    if info.get("valid_bleu") is not None:
        n, beam = info.get("valid_bleu_sentences"), cfg.get("eval", {}).get("valid_beam")
        name = f"sacreBLEU (first {n} sentences, beam {beam})"
        results.append(
            result("validation", "bleu", name, info["valid_bleu"], info.get("valid_bleu_signature"))
        )
    return results


def _snippet(model_id: str, example: str, ev: dict) -> str:
    beam = ev.get("beam", 5)
    return f"""```python
import math

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model_id = {model_id!r}
# The tokenizer is plain tokenizers, but AutoTokenizer reads the model config first, which is custom code.
tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(model_id, trust_remote_code=True).eval()

sources = [{example!r}]
batch = tokenizer(sources, return_tensors="pt", padding=True)
# Output length as in training's evaluation (fairseq): max_len_a * source length + max_len_b.
max_new_tokens = math.ceil({ev.get("max_len_a", 1.2)} * batch["input_ids"].shape[1] + {ev.get("max_len_b", 10)})
output = model.generate(
    input_ids=batch["input_ids"],
    attention_mask=batch["attention_mask"],
    num_beams={beam},
    length_penalty={ev.get("lenpen", 1.0)},
    early_stopping={beam > 1},
    max_new_tokens=max_new_tokens,
)
for line in tokenizer.batch_decode(output, skip_special_tokens=True):
    print(line.strip())
```"""


def _cell(signature: str) -> str:
    # A "|" ends a Markdown table cell even inside backticks; the Hub (GFM) accepts it escaped.
    return "`" + signature.replace("|", "\\|") + "`"


def _scores_table(info: dict, cfg: dict) -> str:
    rows = []
    test = info.get("test")
    if test:
        for score in test["scores"].values():
            rows.append(
                f"| {test['split']} ({test['sentences']} sentences, beam {test['beam']}) | {score['name']} "
                f"| {score['score']:.2f} | {_cell(score['signature'])} |"
            )
    if info.get("valid_bleu") is not None:
        n, beam = info.get("valid_bleu_sentences"), cfg.get("eval", {}).get("valid_beam")
        rows.append(
            f"| validation (first {n} sentences, beam {beam}) | sacreBLEU | {info['valid_bleu']:.2f} "
            f"| {_cell(info.get('valid_bleu_signature', '?'))} |"
        )
    if info.get("valid_loss") is not None:
        rows.append(
            f"| validation (teacher-forced) | loss / perplexity | {info['valid_loss']:.3f} / "
            f"{info.get('valid_ppl', math.nan):.2f} | nats per target token |"
        )
    if not rows:
        return "No scores were recorded for this export."
    return "| data | metric | score | signature |\n|---|---|---|---|\n" + "\n".join(rows)


def _averaged(info: dict) -> str:
    names = info.get("averaged")
    return f" ({', '.join(names)})" if names else ""


def _budget(info: dict) -> str:
    budget = info.get("budget", {})
    epochs = budget.get("epochs", "?")
    text = (
        f"{budget.get('updates', info.get('step', '?'))} updates ({epochs} epoch{'' if epochs == 1 else 's'}), "
        f"{budget.get('train_minutes', '?')} minutes of training, {budget.get('target_tokens', '?')} target tokens"
    )
    if info.get("stop_reason"):
        text += f"; training stopped by `{info['stop_reason']}`"
    return text


def _architecture(model_config: dict) -> str:
    normalization = model_config.get("normalization", "none")
    norm = {
        "none": "no normalization layers (Fixup)",
        "post_ln": "post-LayerNorm (baseline)",
        "pre_ln": "pre-LayerNorm (baseline)",
    }
    return (
        f"{model_config.get('encoder_layers')}+{model_config.get('decoder_layers')} layers, "
        f"d_model {model_config.get('d_model')}, FFN {model_config.get('encoder_ffn_dim')}, "
        f"{model_config.get('encoder_attention_heads')} heads, {norm.get(normalization, normalization)}, "
        f"init `{model_config.get('init')}`, vocabulary {model_config.get('vocab_size')} "
        "(joint SentencePiece, shared by source and target)"
    )


def build_model_card(export_dir: str | Path, repo_id: str | None = None) -> ModelCard:
    """The model card of an MT export, from its ``config.json``, training config and ``export_info.json``."""
    export_dir = Path(export_dir)
    model_config = _read_json(export_dir / "config.json")
    cfg = _read_yaml(export_dir / TRAINING_CONFIG_FILE)
    info = _read_json(export_dir / INFO_FILE)
    if not model_config or not cfg:
        raise FileNotFoundError(f"{export_dir} needs config.json and {TRAINING_CONFIG_FILE} for a model card")
    data, train, ev = cfg["data"], cfg.get("train", {}), cfg.get("eval", {})
    src, tgt, corpus = data["src_lang"], data["tgt_lang"], data["corpus"]
    pair = f"{src}-{tgt}"
    spec = CORPORA.get(corpus)
    dataset_id = spec.hub_path if spec is not None else corpus
    name = repo_id.split("/")[-1] if repo_id else f"fixup-transformer-{corpus}-{pair}"
    normalization = model_config.get("normalization", "none")
    t_fixup = model_config.get("init") == "t_fixup"
    tags = ["translation", "fixup", "fixup-transformer", "seq2seq", *(["t-fixup"] if t_fixup else [])]
    tags.append("normalization-free" if normalization == "none" else normalization.replace("_", "-"))
    if normalization != "none":
        made = "as a LayerNorm baseline"
    elif t_fixup:
        made = (
            f"without any normalization layer, made trainable by the T-Fixup initialization ([Huang et al., "
            f"ICML 2020]({T_FIXUP_URL})), a successor of Fixup"
        )
    else:
        made = "without any normalization layer, made trainable by the Fixup initialization"
    card_data = ModelCardData(
        language=[src, tgt],
        license=train.get("hub_license") or "apache-2.0",
        library_name="transformers",
        pipeline_tag="translation",
        tags=tags,
        datasets=[dataset_id],
        metrics=["bleu", "chrf"],
        model_name=name,
        eval_results=_results(info, cfg, dataset_id, pair) or None,
    )
    export = info.get("export", export_dir.name)
    params = info.get("parameters")
    example = info.get("example_source", "...")
    body = f"""
# {name}

A Fixup Transformer for {corpus} {src}→{tgt} translation: an encoder-decoder Transformer trained
{made} ([Zhang, Dauphin & Ma, ICLR 2019]({PAPER_URL})), with the `fixup-transformer` package.
This is the `{export}` export: {_EXPORT_DESCRIPTION.get(export, "exported by training")}{_averaged(info)}.

- Architecture: {_architecture(model_config)}; {f"{params / 1e6:.2f}M parameters" if params else "parameters: see config.json"}.
- Training data: {corpus} ({dataset_id}) {pair}, training split.
- Budget: {_budget(info)}.

## Scores

{_scores_table(info, cfg)}

sacreBLEU is computed on detokenized, cased output; compare it only with scores of the same signature.

## Load and translate

The model code is in this repository (`configuration_*.py`, `modeling_*.py`), so `transformers` alone loads it
with `trust_remote_code=True`. With `fixup-transformer` installed (`import fixup_transformer`), its registered
classes are used instead and the flag is not needed. Without the flag, `AutoTokenizer` still loads the
tokenizer, after transformers has asked whether to run the repository's configuration code.

{_snippet(repo_id or "path/to/this/export", example, ev)}

## Training configuration

Resolved configuration of the run (`{TRAINING_CONFIG_FILE}` in this repository):

```yaml
{yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True).rstrip()}
```

## Citation

```bibtex
{CITATION}{chr(10) + chr(10) + T_FIXUP_CITATION if t_fixup else ""}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def write_model_card(export_dir: str | Path, repo_id: str | None = None) -> Path:
    """Render :func:`build_model_card` into ``export_dir/README.md`` (atomically); returns the path."""
    path = Path(export_dir) / CARD_FILE
    atomic_write_text(path, str(build_model_card(export_dir, repo_id)))
    return path
