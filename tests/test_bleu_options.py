"""BLEU tokenization options and the scores ``corpus_scores`` reports (found by mutation testing)."""

from __future__ import annotations

import pytest

from fixup_transformer.evaluation.bleu import corpus_scores, sacrebleu_score, tokenized_bleu


def test_tokenized_bleu_on_raw_references_tokenizes_both_sides_with_13a() -> None:
    # Raw references: 13a splits punctuation off on both sides, so spacing differences do not count.
    hyps = ["The cat, it sat.", "Two dogs!"]
    refs = ["the cat , it sat .", "two dogs !"]
    score = tokenized_bleu(hyps, refs)
    assert score.score == pytest.approx(100.0)
    assert "tok:13a" in score.signature and "case:lc" in score.signature


def test_corpus_scores_tokenizes_raw_output_against_pretokenized_references() -> None:
    raw = ["It's that pyramid.", 'He said "no", and left.']
    refs = ["it &apos;s that pyramid .", "he said &quot; no &quot; , and left ."]
    scores = corpus_scores(raw, refs, with_tokenized_bleu=True, pretokenized_references=True)
    assert scores["tokenized_bleu"].score == pytest.approx(100.0)
    assert "tok:none" in scores["tokenized_bleu"].signature
    assert "Moses-tokenized references" in scores["tokenized_bleu"].name


def test_sacrebleu_is_cased() -> None:
    score = sacrebleu_score(["the cat sat on the mat ."], ["The cat sat on the mat ."])
    assert score.score < 100 and "case:mixed" in score.signature
