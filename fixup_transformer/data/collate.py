"""Pad a list of encoded pairs into the tensors a seq2seq model consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..text.modeling_fixup_transformer import IGNORE_INDEX
from .tokenizer import PAD_ID

LABEL_PAD_ID = IGNORE_INDEX  # ignored by torch.nn.CrossEntropyLoss and HF losses


def _pad(seqs: Sequence[Sequence[int]], value: int, multiple: int | None) -> torch.Tensor:
    length = max(len(s) for s in seqs)
    if multiple:
        length = -(-length // multiple) * multiple
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


@dataclass
class TranslationCollator:
    """Right-pad ``input_ids`` with ``<pad>`` and ``labels`` with -100; build ``attention_mask``.

    No ``decoder_input_ids``: the model shifts ``labels`` right itself (decoder start = ``</s>``). With
    ``include_ids`` the dataset indices come back as ``ids`` so evaluation can restore the original order;
    it is off by default because models reject unknown keyword arguments.
    """

    pad_id: int = PAD_ID
    label_pad_id: int = LABEL_PAD_ID
    # Rounds lengths up after batching: a batch cut to data.max_tokens can then exceed it (the training
    # loop leaves it unset).
    pad_to_multiple_of: int | None = None
    include_ids: bool = False

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        input_ids = _pad([f["input_ids"] for f in features], self.pad_id, self.pad_to_multiple_of)
        mask = torch.zeros_like(input_ids)
        for row, f in enumerate(features):
            mask[row, : len(f["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if "labels" in features[0]:
            batch["labels"] = _pad(
                [f["labels"] for f in features], self.label_pad_id, self.pad_to_multiple_of
            )
        if self.include_ids:
            batch["ids"] = torch.tensor([f["id"] for f in features], dtype=torch.long)
        return batch
