"""Small builders shared by the Transformer tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from fixup_transformer import FixupTransformerConfig, FixupTransformerForConditionalGeneration

PAD, EOS = 0, 1


def tiny_config(**overrides) -> FixupTransformerConfig:
    fields = dict(
        vocab_size=97,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=0.0,
        max_position_embeddings=64,
    )
    fields.update(overrides)
    return FixupTransformerConfig(**fields)


def trained_like(model: FixupTransformerForConditionalGeneration, seed: int = 0):
    """Perturb every parameter so that zero-initialised branches do something (a model 'after training').

    At init Fixup zeroes each branch's last layer, which would make cache, masking and folding tests pass
    trivially; these tests need all paths active.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def random_batch(batch: int, length: int, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    ids[:, -1] = EOS
    return ids


def multi30k_word_batch(data_dir: Path, n_pairs: int = 32, vocab_size: int = 400):
    """A real de->en batch with a word-level vocabulary built from the batch itself (no tokenizer needed)."""

    def read(lang: str) -> list[str]:
        with gzip.open(data_dir / "multi30k" / f"train.{lang}.gz", "rt", encoding="utf-8") as handle:
            return [next(handle).strip().lower().split() for _ in range(n_pairs)]

    source, target = read("de"), read("en")
    words = sorted({w for sentence in source + target for w in sentence})[: vocab_size - 3]
    index = {w: i + 3 for i, w in enumerate(words)}

    def encode(sentences: list[list[str]], pad_label: int) -> torch.Tensor:
        length = max(len(s) for s in sentences) + 1
        out = torch.full((len(sentences), length), pad_label)
        for row, sentence in enumerate(sentences):
            ids = [index.get(w, 2) for w in sentence] + [EOS]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    input_ids = encode(source, PAD)
    return input_ids, input_ids.ne(PAD).long(), encode(target, -100), len(index) + 3


def poison_training_loss(monkeypatch, poison) -> None:
    """Make the model's training loss ``poison(loss, n)`` on its ``n``-th forward with gradients on.

    Validation forwards (no gradients) are neither counted nor changed. ``loss + (loss * 0).sqrt()`` keeps
    the value and makes the gradient NaN (d sqrt(0 * x) / dx = inf * 0); ``loss * nan`` makes the value NaN.
    """
    real_forward = FixupTransformerForConditionalGeneration.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        if torch.is_grad_enabled() and output.loss is not None:
            calls["n"] += 1
            output.loss = poison(output.loss, calls["n"])
        return output

    monkeypatch.setattr(FixupTransformerForConditionalGeneration, "forward", forward)
