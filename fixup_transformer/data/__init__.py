"""Machine-translation data: parallel corpora, cleaning, a joint SentencePiece tokenizer, token batching.

Typical training-side flow::

    config = CorpusConfig("multi30k", "de", "en", data_dir=".../multi30k")
    train_pairs, stats = load_training_pairs(config, max_len=250, max_ratio=1.5)  # cleaned
    valid_pairs = load_parallel(config, "validation")                          # never cleaned
    tokenizer = train_tokenizer(train_pairs, vocab_size=8000)
    save_tokenizer(tokenizer, checkpoint_dir)
    train_set = encode_pairs(train_pairs, tokenizer)
    sampler = TokenBatchSampler(train_set.src_lengths, train_set.tgt_lengths, max_tokens=4096,
                                seed=1, num_replicas=world_size, rank=rank)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=TranslationCollator())
"""

from .batching import (
    OversizedPairError,
    SortedBatchSampler,
    TokenBatchSampler,
    batch_by_size,
    length_sorted_indices,
    restore_order,
)
from .cleaning import CleaningStats, clean_pairs
from .collate import LABEL_PAD_ID, TranslationCollator
from .corpora import (
    CORPORA,
    SPLITS,
    CorpusConfig,
    CorpusSpec,
    load_hub_parallel,
    load_parallel,
    load_training_pairs,
)
from .encoding import TranslationDataset, encode_pairs
from .parallel import CorpusError, Pair, find_split_file, load_local_parallel, read_lines, read_parallel_files
from .tokenizer import (
    EOS_ID,
    EOS_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    UNK_ID,
    UNK_TOKEN,
    check_special_tokens,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
    train_tokenizer,
)

__all__ = [
    "CORPORA",
    "EOS_ID",
    "EOS_TOKEN",
    "LABEL_PAD_ID",
    "PAD_ID",
    "PAD_TOKEN",
    "SPLITS",
    "UNK_ID",
    "UNK_TOKEN",
    "CleaningStats",
    "CorpusConfig",
    "CorpusError",
    "CorpusSpec",
    "OversizedPairError",
    "Pair",
    "SortedBatchSampler",
    "TokenBatchSampler",
    "TranslationCollator",
    "TranslationDataset",
    "batch_by_size",
    "check_special_tokens",
    "clean_pairs",
    "encode_pairs",
    "find_split_file",
    "length_sorted_indices",
    "load_hub_parallel",
    "load_local_parallel",
    "load_parallel",
    "load_tokenizer",
    "load_training_pairs",
    "read_lines",
    "read_parallel_files",
    "restore_order",
    "save_tokenizer",
    "tokenizer_from_sentencepiece",
    "train_sentencepiece",
    "train_tokenizer",
]
