"""Turn text pairs into token-id lists once, up front, so batching can see every length in advance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .parallel import Pair


class TranslationDataset(Dataset):
    """Encoded pairs; item ``i`` is ``{"id": i, "input_ids": [...], "labels": [...]}`` (unpadded lists).

    ``src_lengths``/``tgt_lengths`` are numpy arrays for the length-aware batch samplers; ``num_tokens`` is the
    per-pair padded cost used by fairseq, ``max(src_len, tgt_len)``.
    """

    def __init__(self, src_ids: Sequence[list[int]], tgt_ids: Sequence[list[int]]):
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"{len(src_ids)} sources but {len(tgt_ids)} targets")
        self.src_ids = list(src_ids)
        self.tgt_ids = list(tgt_ids)
        self.src_lengths = np.fromiter(
            (len(s) for s in self.src_ids), dtype=np.int64, count=len(self.src_ids)
        )
        self.tgt_lengths = np.fromiter(
            (len(t) for t in self.tgt_ids), dtype=np.int64, count=len(self.tgt_ids)
        )

    @property
    def num_tokens(self) -> np.ndarray:
        return np.maximum(self.src_lengths, self.tgt_lengths)

    def __len__(self) -> int:
        return len(self.src_ids)

    def __getitem__(self, index: int) -> dict[str, int | list[int]]:
        return {"id": index, "input_ids": self.src_ids[index], "labels": self.tgt_ids[index]}


def encode_pairs(
    pairs: Sequence[Pair],
    tokenizer: PreTrainedTokenizerBase,
    chunk_size: int = 10_000,
    show_progress: bool | None = None,
) -> TranslationDataset:
    """Encode sources (``tokenizer(...)``) and targets (``tokenizer(text_target=...)``) in batched chunks.

    Each side becomes ``pieces + [</s>]``. The fast tokenizer parallelizes within a chunk; chunking only
    bounds memory and drives the tqdm bar, which is shown by default for more than ``10 * chunk_size`` pairs.
    """
    if show_progress is None:
        show_progress = len(pairs) > 10 * chunk_size
    src_ids: list[list[int]] = []
    tgt_ids: list[list[int]] = []
    starts = range(0, len(pairs), chunk_size)
    for start in tqdm(starts, desc="encoding pairs", unit="chunk", disable=not show_progress):
        chunk = pairs[start : start + chunk_size]
        src_ids += tokenizer([s for s, _ in chunk], return_attention_mask=False)["input_ids"]
        tgt_ids += tokenizer(text_target=[t for _, t in chunk], return_attention_mask=False)["input_ids"]
    return TranslationDataset(src_ids, tgt_ids)
