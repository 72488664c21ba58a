"""Token-budget batching with length bucketing, per-epoch shuffling, sharding and exact mid-epoch resume.

Translation batches are sized by tokens, not sentences (fairseq ``--max-tokens``): a batch costs its padded
size, ``len(batch) * max(max_src_len, max_tgt_len)``, so grouping pairs of similar length (sort, then cut
greedily, fairseq ``batch_by_size``) wastes little on padding and keeps memory per step bounded.

Training (:class:`TokenBatchSampler`): batches are formed once, from a seeded length sort, and only their
order is reshuffled each epoch from ``seed + epoch``. Rank ``r`` of ``R`` takes batches ``r, r + R, ...`` of
that epoch order, so when the number of batches ``B`` is divisible by ``R`` every pair is seen exactly once per
epoch across all ranks. Otherwise (``uneven="pad"``, default) the order is extended by repeating its first
``R - B % R`` batches so all ranks take the same number of steps (those pairs are seen twice that epoch;
which ones changes each epoch), or (``uneven="drop"``) its last ``B % R`` batches are skipped that epoch.

Evaluation (:class:`SortedBatchSampler` + :func:`restore_order`): batches by source length, longest first,
never drops anything; outputs are put back in corpus order afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, TypeVar

import numpy as np
from torch.utils.data import Sampler

T = TypeVar("T")


class OversizedPairError(ValueError):
    """A single pair is longer than ``max_tokens``, so no batch can hold it."""


def length_sorted_indices(src_lengths: np.ndarray, tgt_lengths: np.ndarray, seed: int) -> np.ndarray:
    """Indices sorted by source length, then target length, ties broken by a seeded shuffle (fairseq order)."""
    indices = np.random.default_rng(seed).permutation(len(src_lengths))
    indices = indices[np.argsort(tgt_lengths[indices], kind="stable")]
    return indices[np.argsort(src_lengths[indices], kind="stable")]


def batch_by_size(
    indices: Sequence[int] | np.ndarray,
    num_tokens: np.ndarray,
    max_tokens: int,
    max_sentences: int | None = None,
) -> list[list[int]]:
    """Cut ``indices`` (in the given order) greedily into batches whose padded size fits ``max_tokens``.

    The padded size of a batch is ``len(batch) * max(num_tokens[batch])``. Raises :class:`OversizedPairError`
    for a pair that alone exceeds ``max_tokens`` (filter those first if they are to be dropped).
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    batch_max = 0
    for index in indices:
        index = int(index)
        size = int(num_tokens[index])
        if size > max_tokens:
            raise OversizedPairError(
                f"pair {index} has {size} tokens, more than max_tokens={max_tokens}; raise max_tokens or "
                "drop oversized pairs (oversized='drop')"
            )
        new_max = max(batch_max, size)
        full = max_sentences is not None and len(batch) >= max_sentences
        if batch and (full or (len(batch) + 1) * new_max > max_tokens):
            batches.append(batch)
            batch, new_max = [], size
        batch.append(index)
        batch_max = new_max
    if batch:
        batches.append(batch)
    return batches


class TokenBatchSampler(Sampler[list[int]]):
    """Training batch sampler: bucketed token batches, shuffled per epoch, sharded, resumable.

    Use as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=TranslationCollator())`` and call
    ``set_epoch(epoch)`` before each epoch. To resume after ``k`` optimizer-visible batches of an epoch on this
    rank, call ``set_epoch(epoch, start_batch=k)``: iteration then yields exactly the remaining batches. The
    sampler shards itself, so do not let another wrapper (e.g. ``accelerate``'s dataloader preparation)
    shard it again.

    ``oversized="raise"`` (default) fails on a pair longer than ``max_tokens``; ``"drop"`` leaves such pairs
    out of training and counts them in :attr:`num_dropped`.
    """

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        max_sentences: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        oversized: Literal["raise", "drop"] = "raise",
        uneven: Literal["pad", "drop"] = "pad",
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        src = np.asarray(src_lengths, dtype=np.int64)
        tgt = np.asarray(tgt_lengths, dtype=np.int64)
        num_tokens = np.maximum(src, tgt)
        order = length_sorted_indices(src, tgt, seed)
        if oversized == "drop":
            fits = num_tokens[order] <= max_tokens
            self.num_dropped = int((~fits).sum())
            order = order[fits]
        else:
            self.num_dropped = 0
        self.batches = batch_by_size(order, num_tokens, max_tokens, max_sentences)
        if uneven == "drop" and len(self.batches) < num_replicas:
            raise ValueError(f"only {len(self.batches)} batches for {num_replicas} ranks with uneven='drop'")
        if not self.batches:
            raise ValueError("no batches: the dataset is empty (after dropping oversized pairs)")
        self.max_tokens = max_tokens
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.uneven = uneven
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_rank(self) -> int:
        """Batches every rank yields in a full epoch (the same on all ranks)."""
        total = len(self.batches)
        if self.uneven == "pad":
            return -(-total // self.num_replicas)
        return total // self.num_replicas

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """All ranks' batches for ``epoch`` in global step order, after padding/dropping to a multiple of R."""
        order = np.arange(len(self.batches))
        if self.shuffle:
            order = np.random.default_rng(self.seed + epoch).permutation(order)
        needed = self.batches_per_rank * self.num_replicas
        order = np.resize(order, needed)  # np.resize repeats from the start when growing
        return [self.batches[i] for i in order]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip this rank's first ``start_batch`` batches (0 for a fresh epoch)."""
        if not 0 <= start_batch <= self.batches_per_rank:
            raise ValueError(f"start_batch {start_batch} is not in [0, {self.batches_per_rank}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_order(self.epoch)[self.rank :: self.num_replicas]
        yield from (list(batch) for batch in mine[self.start_batch :])

    def __len__(self) -> int:
        return self.batches_per_rank - self.start_batch


class SortedBatchSampler(Sampler[list[int]]):
    """Evaluation batch sampler: token batches of similar source length, longest first, nothing dropped.

    Sorting by length makes generation fast; pass ``TranslationCollator(include_ids=True)`` (or iterate this
    sampler alongside the loader) and use :func:`restore_order` to get outputs back in corpus order. A pair
    longer than ``max_tokens`` is put in a batch of its own rather than dropped, since every test sentence
    must be translated. Sharded round-robin over ranks; ranks may differ by one batch.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        max_sentences: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        capped = np.minimum(lengths, max_tokens)  # an oversized pair then fills a batch alone
        self.batches = batch_by_size(order, capped, max_tokens, max_sentences)[rank::num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def restore_order(ids: Sequence[int], items: Sequence[T]) -> list[T]:
    """Put ``items[k]`` (the output for dataset index ``ids[k]``) back at position ``ids[k]``.

    ``ids`` must be a permutation of ``range(len(ids))`` (all outputs gathered); anything else is an error,
    because a silently missing or duplicated hypothesis would corrupt the BLEU score.
    """
    if len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids but {len(items)} items")
    if sorted(ids) != list(range(len(ids))):
        raise ValueError("ids are not a permutation of 0..n-1 (missing or duplicated outputs)")
    if not items:
        return []
    result: list[T] = [items[0]] * len(items)
    for index, item in zip(ids, items, strict=True):
        result[int(index)] = item
    return result
