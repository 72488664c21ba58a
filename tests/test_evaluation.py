"""Corpus translation (order restored, sharded batches) and BLEU/chrF reporting with signatures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fixup_transformer.data import train_tokenizer
from fixup_transformer.evaluation import GenerationSettings, corpus_scores, format_scores, translate_corpus
from fixup_transformer.evaluation.bleu import sacrebleu_score, tokenized_bleu

WORDS = "a man in a blue shirt is riding his bike down the street while two dogs play with a red ball".split()
SENTENCES = [" ".join(WORDS[i : i + 1 + (i * 7) % 13]) for i in range(len(WORDS))] + [
    "dogs",
    "a very small cat",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([(s, s) for s in SENTENCES], vocab_size=40)


class EchoModel(nn.Module):
    """'Translates' by copying the source ids: any reordering or loss of sentences becomes visible."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append({"batch": len(input_ids), **kwargs})
        return input_ids


@pytest.mark.parametrize("batch_tokens", [16, 40, 10_000])
def test_translate_corpus_restores_order(tokenizer, batch_tokens):
    model = EchoModel().train()
    settings = GenerationSettings(num_beams=3, max_len_a=1.0, max_len_b=4, batch_tokens=batch_tokens)
    hyps = translate_corpus(model, tokenizer, SENTENCES, settings, show_progress=False)
    expected = [
        tokenizer.decode(tokenizer(s)["input_ids"], skip_special_tokens=True).strip() for s in SENTENCES
    ]
    assert hyps == expected
    assert model.training  # mode restored
    if batch_tokens == 16:
        assert len(model.calls) > 3  # really several length-sorted batches
    call = model.calls[0]
    assert call["num_beams"] == 3 and call["early_stopping"] is True and call["do_sample"] is False
    # fairseq length limit: a * longest source in the batch + b (batches are longest-first)
    assert call["max_new_tokens"] == max(len(tokenizer(s)["input_ids"]) for s in SENTENCES) + 4


def test_blank_sources_translate_to_empty_lines_without_the_model(tokenizer):
    # As `fixup-translate` does: a blank test line scores as an empty hypothesis, not as a decoded "</s>".
    model = EchoModel()
    sources = ["", "a man", "   ", "two dogs"]
    hyps = translate_corpus(model, tokenizer, sources, show_progress=False)
    assert hyps[0] == hyps[2] == "" and hyps[1] and hyps[3]
    assert sum(call["batch"] for call in model.calls) == 2
    model.calls.clear()
    assert translate_corpus(model, tokenizer, ["", " "], show_progress=False) == ["", ""]
    assert model.calls == []


def test_fixed_max_new_tokens():
    assert GenerationSettings(max_new_tokens=7).new_tokens(100) == 7
    assert GenerationSettings(max_len_a=1.2, max_len_b=10).new_tokens(10) == 22


def test_scores_carry_signatures():
    hyps = ["The cat sat on the mat.", "A dog runs in the park."]
    refs = ["The cat sat on the mat.", "A dog is running in the park."]
    scores = corpus_scores(hyps, refs, with_tokenized_bleu=True)
    text = format_scores(scores)
    assert "sacreBLEU = " in text and "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in text
    assert "chrF2 = " in text and "nc:6|nw:0" in text
    assert "tokenized BLEU (lowercased" in text and "case:lc" in text
    assert scores["bleu"].score == pytest.approx(sacrebleu_score(hyps, refs).score)
    assert 0 < scores["bleu"].score < 100


def test_tokenized_bleu_is_case_insensitive_and_handles_pretokenized_refs():
    assert tokenized_bleu(
        ["THE CAT SAT ON THE MAT ."], ["the cat sat on the mat ."], pretokenized=True
    ).score == pytest.approx(100.0)
    assert "tok:none" in tokenized_bleu(["a"], ["a"], pretokenized=True).signature
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        sacrebleu_score(["a", "b"], ["a"])


def test_tokenized_bleu_tokenizes_raw_hypotheses_like_pretokenized_references():
    # fairseq's IWSLT references (valid.tok.lc) are Moses-tokenized, escaped and lowercased; a model trained on
    # raw text outputs "It's ...". A perfect translation must score 100, and tokenized output is not re-escaped.
    refs = ["it &apos;s that pyramid .", "he said &quot; no &quot; , and left ."]
    raw = ["It's that pyramid.", 'He said "no", and left.']
    assert tokenized_bleu(raw, refs, pretokenized=True).score == pytest.approx(100.0)
    assert tokenized_bleu(refs, refs, pretokenized=True).score == pytest.approx(100.0)


def test_one_raw_line_with_html_entities_does_not_stop_the_others_from_being_tokenized():
    # Raw TED text has HTML entities (IWSLT's references hold "&amp; lt ; em &amp; gt ;"): inside words
    # they mark a raw line, which is tokenized like the others; Moses-processed lines are kept.
    from sacremoses import MosesTokenizer

    from fixup_transformer.evaluation.bleu import corpus_scores

    raw = ["It's here.", "Say &lt;em&gt;yes&lt;/em&gt; now.", 'He said "no".']
    refs = [MosesTokenizer(lang="en").tokenize(line, escape=True, return_str=True).lower() for line in raw]
    assert "&amp; lt ; em &amp; gt ;" in refs[1]
    assert tokenized_bleu(raw, refs, pretokenized=True).score == pytest.approx(100.0)
    mixed = [refs[0], raw[1], raw[2]]  # tokenized output lines beside raw ones
    assert tokenized_bleu(mixed, refs, pretokenized=True).score == pytest.approx(100.0)
    # sacreBLEU and chrF against such references are labelled as what they are.
    scores = corpus_scores(raw, refs, with_tokenized_bleu=True, pretokenized_references=True)
    assert "against the pre-tokenized references" in scores["bleu"].name
    assert "against the pre-tokenized references" in scores["chrf"].name


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path):
    from fixup_transformer.data import read_lines

    path = tmp_path / "test.en"
    path.write_bytes("\ufeffA man.\nA dog.\n".encode())
    assert read_lines(path) == ["A man.", "A dog."]


def test_compound_split_bleu_is_cased_and_counts_a_hyphenated_compound_as_three_tokens():
    from fixup_transformer.evaluation.bleu import compound_split_bleu

    ref = ["Die EU-Kommission sagt: Nein."]
    assert compound_split_bleu(ref, ref).score == pytest.approx(100.0)
    assert compound_split_bleu(["die EU-Kommission sagt: Nein."], ref).score < 100  # cased
    # "EU-Kommission" is "EU ##AT##-##AT## Kommission" (three tokens, as get_ende_bleu.sh splits it):
    from sacremoses import MosesTokenizer

    assert "EU-Kommission" in MosesTokenizer(lang="de").tokenize(ref[0], return_str=True)  # no -a splitting
    split = compound_split_bleu(["Die EU Kommission sagt: Nein."], ref)
    assert 0 < split.score < 100 and "tok:none" in split.signature and "case:mixed" in split.signature
    assert "compound_split_bleu" in corpus_scores(ref, ref, with_compound_split_bleu=True, target_lang="de")
