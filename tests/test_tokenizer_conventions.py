"""Tokenizer convention checks and seeded sampling, on a tiny synthetic vocabulary (found by mutation testing)."""

from __future__ import annotations

import copy

import pytest
from tokenizers import processors

from fixup_transformer.data import EOS_ID, PAD_ID, UNK_ID, train_tokenizer
from fixup_transformer.data.tokenizer import _sample, check_special_tokens

WORDS = "a man in a blue shirt is riding his bike down the street while two dogs play with a red ball".split()
SENTENCES = [" ".join(WORDS[i : i + 1 + (i * 7) % 13]) for i in range(len(WORDS))]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([(s, s) for s in SENTENCES], vocab_size=40)


def test_a_tokenizer_that_appends_eos_twice_is_rejected(tokenizer) -> None:
    check_special_tokens(tokenizer)
    broken = copy.deepcopy(tokenizer)
    broken.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s> </s>", special_tokens=[("</s>", EOS_ID)]
    )
    assert broken("a")["input_ids"][-2:] == [EOS_ID, EOS_ID]
    with pytest.raises(ValueError, match="exactly one </s>"):
        check_special_tokens(broken)


def test_decoding_drops_pad_eos_and_unk(tokenizer) -> None:
    ids = tokenizer("a red dog Ω")["input_ids"]
    assert UNK_ID in ids and ids[-1] == EOS_ID
    text = tokenizer.decode(ids + [PAD_ID, PAD_ID], skip_special_tokens=True)
    assert "<unk>" not in text and "</s>" not in text and "<pad>" not in text
    assert text.strip().startswith("a red dog")


def test_capped_tokenizer_training_samples_by_its_seed() -> None:
    sentences = [f"sentence {i}" for i in range(100)]
    picks = {tuple(_sample(sentences, 10, seed)) for seed in range(5)}
    assert len(picks) == 5  # the seed, not a fixed one, picks the subset
    assert _sample(sentences, 10, 3) == _sample(sentences, 10, 3)
    chosen = _sample(sentences, 10, 3)
    assert chosen == sorted(chosen, key=sentences.index)  # kept in corpus order
    assert _sample(sentences, 100, 3) is sentences and _sample(sentences, None, 3) is sentences
