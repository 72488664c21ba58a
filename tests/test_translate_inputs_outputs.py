"""Corpus translation: sources cropped to the positions keeping ``</s>``, the offset, the output cap, stripped output.

An echo "model" (it returns its input ids) stands in for a network, so the test sees exactly what
``translate_corpus`` feeds to ``generate`` (found by mutation testing).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fixup_transformer.data import EOS_ID, train_tokenizer
from fixup_transformer.evaluation import GenerationSettings, translate_corpus
from fixup_transformer.evaluation.translate import crop_to_positions, position_limit

WORDS = "a man in a blue shirt is riding his bike down the street while two dogs play with a red ball".split()
SENTENCES = [" ".join(WORDS[i : i + 1 + (i * 7) % 13]) for i in range(len(WORDS))]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([(s, s) for s in SENTENCES], vocab_size=40)


class EchoModel(nn.Module):
    def __init__(self, max_position_embeddings: int, position_offset: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(
            max_position_embeddings=max_position_embeddings, position_offset=position_offset
        )
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append({"input_ids": input_ids.tolist(), "mask": attention_mask.tolist(), **kwargs})
        return input_ids


def test_crop_keeps_the_final_eos() -> None:
    with pytest.warns(UserWarning, match=r"1 source sentence\(s\) longer than the model's 4 positions"):
        cropped = crop_to_positions([[5, 6, 7, 8, 9, EOS_ID], [5, EOS_ID]], 4)
    assert cropped == [[5, 6, 7, EOS_ID], [5, EOS_ID]]


def test_position_limit_subtracts_the_position_offset() -> None:
    model = EchoModel(max_position_embeddings=10, position_offset=2)
    assert position_limit(model) == 8
    assert position_limit(nn.Linear(1, 1)) is None


def test_translate_corpus_feeds_generate_sources_and_limits_that_fit_the_positions(tokenizer) -> None:
    model = EchoModel(max_position_embeddings=8, position_offset=2)  # 6 usable positions
    long_source = " ".join(WORDS)
    assert len(tokenizer(long_source)["input_ids"]) > 6
    settings = GenerationSettings(num_beams=1, max_len_a=2.0, max_len_b=10)
    with pytest.warns(UserWarning, match="longer than the model's 6 positions"):
        hyps = translate_corpus(model, tokenizer, ["a man", long_source], settings, show_progress=False)
    assert len(hyps) == 2 and hyps[0] == "a man"
    for call in model.calls:
        for row, mask in zip(call["input_ids"], call["mask"], strict=True):
            real = row[: sum(mask)]
            assert len(real) <= 6 and real[-1] == EOS_ID and EOS_ID not in real[:-1]
        assert call["max_new_tokens"] == 5  # decoder inputs (start + new tokens - 1) fit 6 positions


class SpacePaddedEchoModel(EchoModel):
    """Echoes the source with bare "▁" pieces around it, as an undertrained model may emit them."""

    def __init__(self, space_id: int):
        super().__init__(max_position_embeddings=64, position_offset=0)
        self.space_id = space_id

    def generate(self, input_ids, attention_mask, **kwargs):
        space = torch.full((len(input_ids), 2), self.space_id)
        return torch.cat([space, input_ids, space], dim=1)


def test_hypotheses_come_back_without_surrounding_whitespace(tokenizer) -> None:
    space_id = tokenizer.convert_tokens_to_ids("▁")
    assert space_id != tokenizer.unk_token_id
    model = SpacePaddedEchoModel(space_id)
    raw = model.generate(tokenizer(["a man"], return_tensors="pt")["input_ids"], None)[0]
    decoded = tokenizer.decode(raw, skip_special_tokens=True)
    assert decoded != "a man" and decoded.strip() == "a man"  # what decoding alone gives
    hyps = translate_corpus(model, tokenizer, ["a man", "two dogs play"], show_progress=False)
    assert hyps == ["a man", "two dogs play"]
