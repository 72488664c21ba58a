"""Evaluation: corpus translation in length-sorted batches and sacreBLEU/chrF scoring with signatures."""

from .bleu import (
    Score,
    chrf_score,
    compound_split_bleu,
    corpus_scores,
    format_scores,
    sacrebleu_score,
    scores_to_json,
    tokenized_bleu,
)
from .translate import GenerationSettings, translate_corpus

__all__ = [
    "GenerationSettings",
    "Score",
    "chrf_score",
    "compound_split_bleu",
    "corpus_scores",
    "format_scores",
    "sacrebleu_score",
    "scores_to_json",
    "tokenized_bleu",
    "translate_corpus",
]
