"""Token batching, sharding, epoch shuffling, resume, evaluation ordering and collation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fixup_transformer.data import (
    LABEL_PAD_ID,
    PAD_ID,
    CorpusConfig,
    OversizedPairError,
    SortedBatchSampler,
    TokenBatchSampler,
    TranslationCollator,
    TranslationDataset,
    encode_pairs,
    load_parallel,
    restore_order,
    train_tokenizer,
)

MAX_TOKENS = 256


@pytest.fixture(scope="module")
def lengths() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    src = rng.integers(1, 60, size=3000)
    tgt = np.clip(src + rng.integers(-5, 6, size=3000), 1, 70)
    return src, tgt


def padded_size(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    return len(batch) * int(max(src[batch].max(), tgt[batch].max()))


def test_batches_respect_max_tokens_and_bucket_by_length(lengths) -> None:
    src, tgt = lengths
    sampler = TokenBatchSampler(src, tgt, max_tokens=MAX_TOKENS, seed=1)
    batches = list(sampler)
    assert all(padded_size(b, src, tgt) <= MAX_TOKENS for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(src)))
    # bucketing keeps padding low: real tokens fill most of the budget
    real = sum(int(np.maximum(src, tgt)[b].sum()) for b in batches)
    assert real / sum(padded_size(b, src, tgt) for b in batches) > 0.9
    assert len(sampler) == len(batches)


def test_max_sentences_caps_batch_length(lengths) -> None:
    src, tgt = lengths
    assert max(len(b) for b in TokenBatchSampler(src, tgt, MAX_TOKENS, max_sentences=7)) == 7


def rank_batches(
    src, tgt, epoch: int, num_replicas: int = 2, max_tokens: int = MAX_TOKENS, **kwargs
) -> list[list[list[int]]]:
    out = []
    for rank in range(num_replicas):
        sampler = TokenBatchSampler(
            src, tgt, max_tokens, seed=5, num_replicas=num_replicas, rank=rank, **kwargs
        )
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_two_ranks_see_every_pair_exactly_once_when_batches_divide() -> None:
    src = tgt = np.full(200, 10)  # 10 pairs per batch -> 20 batches, divisible by 2
    per_rank = rank_batches(src, tgt, epoch=0, max_tokens=100)
    assert [len(b) for b in per_rank] == [10, 10]
    assert not set(map(tuple, per_rank[0])) & set(map(tuple, per_rank[1]))
    assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(200))


def test_uneven_batch_count_pads_or_drops() -> None:
    src = tgt = np.full(210, 10)  # 21 batches for 2 ranks
    padded = rank_batches(src, tgt, epoch=0, max_tokens=100)
    assert [len(b) for b in padded] == [11, 11]
    counts = Counter(i for batches in padded for b in batches for i in b)
    assert set(counts) == set(range(210)) and sorted(counts.values()).count(2) == 10  # one batch repeated
    dropped = rank_batches(src, tgt, epoch=0, max_tokens=100, uneven="drop")
    assert [len(b) for b in dropped] == [10, 10]
    seen = [i for batches in dropped for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 200


def test_random_lengths_across_ranks(lengths) -> None:
    src, tgt = lengths
    per_rank = rank_batches(src, tgt, epoch=3)
    assert len(per_rank[0]) == len(per_rank[1])
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(counts) == set(range(len(src)))
    reference = TokenBatchSampler(src, tgt, MAX_TOKENS, seed=5)
    repeated = {i for i, c in counts.items() if c > 1}
    if len(reference.batches) % 2 == 0:
        assert not repeated
    else:  # the epoch's first batch is repeated to even out the ranks
        assert repeated == set(reference.epoch_order(3)[0]) and max(counts.values()) == 2


def test_epoch_order_is_seeded(lengths) -> None:
    src, tgt = lengths
    assert rank_batches(src, tgt, epoch=1) == rank_batches(src, tgt, epoch=1)
    assert rank_batches(src, tgt, epoch=1) != rank_batches(src, tgt, epoch=2)
    a = TokenBatchSampler(src, tgt, MAX_TOKENS, seed=1)
    b = TokenBatchSampler(src, tgt, MAX_TOKENS, seed=2)
    assert list(a) != list(b)


def test_resume_skips_first_k_batches(lengths) -> None:
    src, tgt = lengths
    full = rank_batches(src, tgt, epoch=4)[1]
    resumed = TokenBatchSampler(src, tgt, MAX_TOKENS, seed=5, num_replicas=2, rank=1)
    resumed.set_epoch(4, start_batch=7)
    assert len(resumed) == len(full) - 7
    assert list(resumed) == full[7:]
    resumed.set_epoch(5)
    assert len(resumed) == len(full)
    with pytest.raises(ValueError, match="start_batch"):
        resumed.set_epoch(5, start_batch=len(full) + 1)


def test_oversized_pair_raises_or_is_dropped() -> None:
    src = np.array([5, 300, 7])
    tgt = np.array([5, 8, 400])
    with pytest.raises(OversizedPairError, match=r"pair 2 has 400 tokens, more than max_tokens=256"):
        TokenBatchSampler(src, tgt, MAX_TOKENS)
    sampler = TokenBatchSampler(src, tgt, MAX_TOKENS, oversized="drop")
    assert sampler.num_dropped == 2 and list(sampler) == [[0]]


def test_eval_sampler_keeps_everything_and_order_restores(lengths) -> None:
    src, _ = lengths
    src = np.append(src, 1000)  # oversized: its own batch, not dropped
    shards = [SortedBatchSampler(src, MAX_TOKENS, num_replicas=2, rank=r) for r in range(2)]
    batches = [b for s in shards for b in s]
    ids = [i for b in batches for i in b]
    assert sorted(ids) == list(range(len(src)))
    assert [len(src) - 1] in batches
    firsts = [src[b[0]] for b in SortedBatchSampler(src, MAX_TOKENS)]
    assert firsts == sorted(firsts, reverse=True)
    outputs = [f"hyp{i}" for i in ids]  # what a model would produce per dataset index
    assert restore_order(ids, outputs) == [f"hyp{i}" for i in range(len(src))]
    with pytest.raises(ValueError, match="permutation"):
        restore_order(ids[:-1] + ids[:1], outputs)
    assert restore_order([], []) == []


def test_collator_pads_inputs_and_labels() -> None:
    features = [
        {"id": 4, "input_ids": [5, 6, 7, 1], "labels": [8, 1]},
        {"id": 9, "input_ids": [5, 1], "labels": [8, 9, 10, 1]},
    ]
    batch = TranslationCollator(include_ids=True)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [5, 1, PAD_ID, PAD_ID]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 1, LABEL_PAD_ID, LABEL_PAD_ID], [8, 9, 10, 1]]
    assert batch["ids"].tolist() == [4, 9]
    assert all(t.dtype == torch.long for t in batch.values())
    plain = TranslationCollator(pad_to_multiple_of=8)(features)
    assert set(plain) == {"input_ids", "attention_mask", "labels"} and plain["input_ids"].shape == (2, 8)


def test_end_to_end_on_real_multi30k(multi30k: Path) -> None:
    pairs = load_parallel(CorpusConfig("multi30k", data_dir=multi30k), "validation")
    tokenizer = train_tokenizer(pairs, vocab_size=500)
    dataset = encode_pairs(pairs, tokenizer)
    assert isinstance(dataset, TranslationDataset) and len(dataset) == 1014
    assert dataset[0]["input_ids"] == tokenizer(pairs[0][0])["input_ids"]
    sampler = TokenBatchSampler(dataset.src_lengths, dataset.tgt_lengths, max_tokens=1024, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=TranslationCollator())
    seen = 0
    for batch in loader:
        rows, width = batch["input_ids"].shape
        assert rows * max(width, batch["labels"].shape[1]) <= 1024
        # every row is pieces + [</s>]: exactly one EOS, as the last non-pad position
        assert batch["labels"].eq(1).sum(dim=1).tolist() == [1] * rows
        last = batch["attention_mask"].sum(dim=1) - 1
        assert batch["input_ids"][torch.arange(rows), last].tolist() == [1] * rows
        seen += rows
    assert seen == 1014
