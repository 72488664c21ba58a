"""Edge cases of token batching that the broader batching tests let through (found by mutation testing).

Each test pins one boundary of the fairseq ``--max-tokens`` semantics (a batch costs
``len(batch) * max(src_len, tgt_len)``) or of the sampler options, on tiny hand-made length arrays.
"""

from __future__ import annotations

import numpy as np

from fixup_transformer.data import SortedBatchSampler, TokenBatchSampler, TranslationCollator
from fixup_transformer.data.batching import batch_by_size


def test_a_pair_exactly_max_tokens_long_is_kept_when_oversized_pairs_are_dropped() -> None:
    # The training loop uses oversized="drop": a pair of exactly max_tokens fits a batch of its own.
    sampler = TokenBatchSampler([20, 21, 4], [3, 3, 20], max_tokens=20, oversized="drop", shuffle=False)
    assert sampler.num_dropped == 1
    assert sorted(i for batch in sampler for i in batch) == [0, 2]
    assert batch_by_size([0], np.array([20]), max_tokens=20) == [[0]]


def test_a_batch_filling_max_tokens_exactly_is_not_cut() -> None:
    assert batch_by_size(range(4), np.array([5, 5, 5, 5]), max_tokens=20) == [[0, 1, 2, 3]]
    assert batch_by_size(range(5), np.array([5, 5, 5, 5, 5]), max_tokens=20) == [[0, 1, 2, 3], [4]]


def test_the_cost_of_a_pair_is_its_longer_side() -> None:
    # Short sources, long targets: the targets set the padded size (fairseq num_tokens = max(src, tgt)).
    sampler = TokenBatchSampler([2] * 4, [10] * 4, max_tokens=20, shuffle=False)
    assert sorted(len(batch) for batch in sampler) == [2, 2]
    sampler = TokenBatchSampler([10] * 4, [2] * 4, max_tokens=20, shuffle=False)
    assert sorted(len(batch) for batch in sampler) == [2, 2]


def test_a_new_batch_starts_with_its_own_longest_pair_when_lengths_decrease() -> None:
    # Evaluation batches go longest first: after a long pair fills a batch, the short ones that follow
    # must be batched by their own length, not by the previous batch's maximum.
    assert batch_by_size([0, 1, 2, 3], np.array([10, 5, 5, 5]), max_tokens=15) == [[0], [1, 2, 3]]
    assert SortedBatchSampler([5, 10, 5, 5], max_tokens=15).batches == [[1], [0, 2, 3]]


def test_shuffle_false_keeps_the_same_batch_order_every_epoch() -> None:
    src = tgt = np.arange(1, 41)
    sampler = TokenBatchSampler(src, tgt, max_tokens=40, seed=3, shuffle=False)
    assert len(sampler.batches) > 3
    first = sampler.epoch_order(0)
    assert first == sampler.batches
    assert all(sampler.epoch_order(epoch) == first for epoch in (1, 2, 7))
    sampler.set_epoch(5)
    assert list(sampler) == first


def test_the_seed_breaks_length_ties_so_it_changes_which_pairs_share_a_batch() -> None:
    # All pairs have the same length: only the seeded tie-break decides the batch composition.
    src = tgt = np.full(40, 5)
    compositions = {
        tuple(
            sorted(tuple(sorted(b)) for b in TokenBatchSampler(src, tgt, 20, seed=s, shuffle=False).batches)
        )
        for s in range(4)
    }
    assert len(compositions) == 4
    again = TokenBatchSampler(src, tgt, 20, seed=2, shuffle=False).batches
    assert again == TokenBatchSampler(src, tgt, 20, seed=2, shuffle=False).batches


def test_pad_to_multiple_of_keeps_lengths_that_are_already_a_multiple() -> None:
    features = [{"input_ids": list(range(3, 11)), "labels": [4, 1]}, {"input_ids": [5, 1], "labels": [4] * 9}]
    batch = TranslationCollator(pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8)  # 8 stays 8
    assert batch["labels"].shape == (2, 16)  # 9 rounds up to 16
    assert batch["attention_mask"].sum(dim=1).tolist() == [8, 2]
