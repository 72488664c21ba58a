"""Corpus BLEU and chrF with sacreBLEU, always reported with their signatures.

The headline number is sacreBLEU on detokenized, cased text (``tok:13a``, the WMT standard): it is
comparable across papers only together with its signature, so the signature is printed with it.

``tokenized_bleu`` reproduces the number IWSLT14 papers report (fairseq ``--scoring bleu`` / multi-bleu
on Moses-tokenized, lowercased text), computed with sacreBLEU's own machinery:

- references that are *raw* text: ``tokenize='13a'`` (a Moses-like tokenizer) + ``lowercase=True``;
- references that are *already* Moses-tokenized and lowercased (e.g. fairseq's ``valid.tok.lc``): the
  hypotheses get the same treatment (sacremoses' Moses tokenizer with its ``&apos;``-style escapes; output
  that carries such escapes is tokenized already and kept as it is), then
  ``tokenize='none'`` + ``lowercase=True`` scores both sides as they are.

It is labelled "tokenized BLEU" everywhere and is not a sacreBLEU-comparable score; it typically sits
somewhat above the detokenized cased sacreBLEU of the same output.

``compound_split_bleu`` is the number WMT en-de papers report (the Transformer, fairseq's "Scaling NMT" and
Fixup's 29.3): cased BLEU on Moses-tokenized text (``tokenizer.perl -l de``, no ``-a``) with hyphenated
compounds split into three tokens, ``A ##AT##-##AT## B`` (tensor2tensor's ``get_ende_bleu.sh``, fairseq's
``compound_split_bleu.sh``). Labelled as such.
"""

from __future__ import annotations

import re
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


MOSES_ESCAPES = ("&apos;", "&quot;", "&amp;", "&lt;", "&gt;", "&#91;", "&#93;", "&#124;")
_ESCAPE = re.compile("|".join(re.escape(e) for e in MOSES_ESCAPES))


def _moses_processed(line: str) -> bool:
    """Whether a line is Moses-tokenized already: it has Moses' escapes, each at the start of a token
    (``it &apos;s``, ``&quot; yes &quot;``). Raw text with HTML entities has them inside words too
    (``&lt;em&gt;``), and is tokenized like any raw line."""
    starts = [m.start() for m in _ESCAPE.finditer(line)]
    return bool(starts) and all(i == 0 or line[i - 1].isspace() for i in starts)


def moses_tokenized(lines: Sequence[str], lang: str) -> list[str]:
    """Moses tokenization with Moses' escapes (``it &apos;s``), as fairseq's IWSLT preparation writes text.

    A line that is Moses-processed already (a model trained on tokenized text writes its escapes) is
    kept as it is, decided line by line: tokenizing it again would split and escape it twice
    (``&apos; s``, ``&amp;apos;``), and one such line must not stop the others from being tokenized.
    """
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return [
        line if _moses_processed(line) else tokenizer.tokenize(line, escape=True, return_str=True)
        for line in lines
    ]


def tokenized_bleu(
    hypotheses: Sequence[str], references: Sequence[str], pretokenized: bool = False, lang: str = "en"
) -> Score:
    """Lowercased, tokenized BLEU as IWSLT papers report it (see the module docstring); labelled as such.

    ``pretokenized``: the references are Moses-tokenized already; the hypotheses are tokenized the same
    way (Moses rules of the target language ``lang``) before scoring.
    """
    _check(hypotheses, references)
    if pretokenized:
        hypotheses = moses_tokenized(hypotheses, lang)
    # force: sacreBLEU warns about "tokenized periods", which is what tokenize='none' is asked to score.
    metric = BLEU(tokenize="none" if pretokenized else "13a", lowercase=True, force=pretokenized)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    how = "Moses-tokenized references and hypotheses" if pretokenized else "13a tokenization"
    return Score(
        f"tokenized BLEU (lowercased, {how}; not sacreBLEU-comparable)",
        result.score,
        str(metric.get_signature()),
        "",
    )


def compound_split_bleu(hypotheses: Sequence[str], references: Sequence[str], lang: str = "de") -> Score:
    """Cased BLEU on Moses-tokenized, compound-split text; see the module docstring."""
    _check(hypotheses, references)
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)

    def prepared(line: str) -> str:
        tokens = tokenizer.tokenize(line, escape=True, return_str=True)
        return re.sub(r"(\S)-(\S)", r"\1 ##AT##-##AT## \2", tokens)

    metric = BLEU(tokenize="none", force=True)
    result = metric.corpus_score([prepared(h) for h in hypotheses], [[prepared(r) for r in references]])
    return Score(
        "compound-split BLEU (cased, Moses-tokenized; WMT papers' convention, not sacreBLEU-comparable)",
        result.score,
        str(metric.get_signature()),
        "",
    )


def corpus_scores(
    hypotheses: Sequence[str],
    references: Sequence[str],
    with_tokenized_bleu: bool = False,
    pretokenized_references: bool = False,
    target_lang: str = "en",
    with_compound_split_bleu: bool = False,
) -> dict[str, Score]:
    """``{"bleu", "chrf"[, "tokenized_bleu"][, "compound_split_bleu"]}`` for one output and one reference.

    With ``pretokenized_references`` sacreBLEU and chrF still score the detokenized output, but against
    tokenized, lowercased references: their names say so, as their standard signatures cannot.
    """
    scores = {"bleu": sacrebleu_score(hypotheses, references), "chrf": chrf_score(hypotheses, references)}
    if pretokenized_references:
        for key in ("bleu", "chrf"):
            score = scores[key]
            name = f"{score.name} against the pre-tokenized references (not comparable to published scores)"
            scores[key] = Score(name, score.score, score.signature, score.detail)
    if with_tokenized_bleu:
        scores["tokenized_bleu"] = tokenized_bleu(
            hypotheses, references, pretokenized_references, target_lang
        )
    if with_compound_split_bleu:
        scores["compound_split_bleu"] = compound_split_bleu(hypotheses, references, target_lang)
    return scores


def format_scores(scores: dict[str, Score]) -> str:
    """One line per metric, each with its signature."""
    return "\n".join(score.format() for score in scores.values())


def scores_to_json(scores: dict[str, Score]) -> dict[str, dict]:
    return {key: asdict(score) for key, score in scores.items()}
