"""Corpus BLEU and chrF with sacreBLEU, always reported with their signatures.

The headline number is sacreBLEU on detokenized, cased text (``tok:13a``, the WMT standard): it is
comparable across papers only together with its signature, so the signature is printed with it.

``tokenized_bleu`` reproduces the number IWSLT14 papers report (fairseq ``--scoring bleu`` / multi-bleu
on Moses-tokenized, lowercased text), computed with sacreBLEU's own machinery:

- references that are *raw* text: ``tokenize='13a'`` (a Moses-like tokenizer) + ``lowercase=True``;
- references that are *already* Moses-tokenized and lowercased (e.g. fairseq's ``valid.tok.lc``):
  ``tokenize='none'`` + ``lowercase=True``, so the existing tokenization is scored as is.

It is labelled "tokenized BLEU" everywhere and is not a sacreBLEU-comparable score; it typically sits
somewhat above the detokenized cased sacreBLEU of the same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass
class Score:
    """One metric value with what it takes to interpret it."""

    name: str
    score: float
    signature: str
    detail: str

    def format(self) -> str:
        line = f"{self.name} = {self.score:.2f}  [{self.signature}]"
        return f"{line}  {self.detail}" if self.detail else line


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("cannot score an empty corpus")


def sacrebleu_score(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Detokenized, cased corpus BLEU (sacreBLEU defaults: 13a tokenization, exp smoothing)."""
    _check(hypotheses, references)
    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    detail = result.format(width=2).split(" ", 3)[-1]  # n-gram precisions, BP, ratio, lengths
    return Score("sacreBLEU", result.score, str(metric.get_signature()), detail)


def chrf_score(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Character n-gram F-score (chrF2), sacreBLEU defaults."""
    _check(hypotheses, references)
    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score("chrF2", result.score, str(metric.get_signature()), "")


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str], pretokenized: bool = False) -> Score:
    """Lowercased, tokenized BLEU as IWSLT papers report it (see the module docstring); labelled as such."""
    _check(hypotheses, references)
    metric = BLEU(tokenize="none" if pretokenized else "13a", lowercase=True)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    how = "pre-tokenized references" if pretokenized else "13a tokenization"
    return Score(
        f"tokenized BLEU (lowercased, {how}; not sacreBLEU-comparable)",
        result.score,
        str(metric.get_signature()),
        "",
    )


def corpus_scores(
    hypotheses: Sequence[str],
    references: Sequence[str],
    with_tokenized_bleu: bool = False,
    pretokenized_references: bool = False,
) -> dict[str, Score]:
    """``{"bleu", "chrf"[, "tokenized_bleu"]}`` for one system output against one reference."""
    scores = {"bleu": sacrebleu_score(hypotheses, references), "chrf": chrf_score(hypotheses, references)}
    if with_tokenized_bleu:
        scores["tokenized_bleu"] = tokenized_bleu(hypotheses, references, pretokenized_references)
    return scores


def format_scores(scores: dict[str, Score]) -> str:
    """One line per metric, each with its signature."""
    return "\n".join(score.format() for score in scores.values())


def scores_to_json(scores: dict[str, Score]) -> dict[str, dict]:
    return {key: asdict(score) for key, score in scores.items()}
