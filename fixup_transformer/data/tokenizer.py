"""Joint SentencePiece vocabulary for source and target, served as a HuggingFace fast tokenizer.

The model is trained with the ``sentencepiece`` library (the reference implementation, deterministic for a
fixed input) and then converted into a ``tokenizers`` pipeline with transformers' own SentencePiece converter,
so ids match ``SentencePieceProcessor.encode`` (BPE exactly; unigram up to ties between segmentations of
equal score, which the two break differently, e.g. in long digit runs: 15 of 13,041 test sentences) except
for text that spells a special token: like
every transformers tokenizer it reads a literal ``</s>`` as EOS (SentencePiece spells it out in pieces);
the training loop warns when a corpus contains one. It is saved as a plain ``tokenizer.json`` plus
``tokenizer_config.json`` (class ``TokenizersBackend``): ``AutoTokenizer.from_pretrained(dir)`` reloads it from
those two files alone, offline, without any custom code or the ``.model`` file.

Special-token convention (the model relies on it; fairseq-like, no BOS, no language tags):
``<pad>`` = 0, ``</s>`` = 1 (EOS), ``<unk>`` = 2. Every encoded sentence, source or target, is
``pieces + [</s>]``. The decoder start token is EOS; the model config handles that, not the tokenizer.
Decoding with ``skip_special_tokens=True`` drops ``<unk>`` too (SentencePiece itself would print " ⁇ ").
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm
from tokenizers import processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

from .parallel import Pair

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"


def _sample(sentences: list[str], max_sentences: int | None, seed: int) -> list[str]:
    """A seeded random subset (in original order), so capped training stays deterministic."""
    if max_sentences is None or len(sentences) <= max_sentences:
        return sentences
    keep = sorted(random.Random(seed).sample(range(len(sentences)), max_sentences))
    return [sentences[i] for i in keep]


def train_sentencepiece(
    sentences: Iterable[str],
    vocab_size: int,
    model_type: Literal["unigram", "bpe"] = "unigram",
    max_sentences: int | None = None,
    character_coverage: float = 1.0,
    seed: int = 0,
    num_threads: int = 1,
) -> bytes:
    """Train a SentencePiece model in memory and return its serialized proto.

    ``max_sentences`` caps the training text with a seeded random subset (SentencePiece's own sampling is
    not needed). Empty lines are skipped. ``num_threads=1`` by default because multithreaded training is
    not guaranteed to be bit-for-bit reproducible.
    """
    text = _sample([s for s in sentences if s.strip()], max_sentences, seed)
    if not text:
        raise ValueError("no non-empty sentences to train the tokenizer on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        pad_piece=PAD_TOKEN,
        eos_id=EOS_ID,
        eos_piece=EOS_TOKEN,
        unk_id=UNK_ID,
        unk_piece=UNK_TOKEN,
        bos_id=-1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=num_threads,
        minloglevel=2,
    )
    return model.getvalue()


def tokenizer_from_sentencepiece(model_proto: bytes) -> PreTrainedTokenizerFast:
    """Wrap a serialized SentencePiece model as a fast tokenizer that appends ``</s>`` to every sequence."""
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model_proto)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if [p for p, _ in pieces[:3]] != [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]:
        raise ValueError(f"expected {PAD_TOKEN}, {EOS_TOKEN}, {UNK_TOKEN} at ids 0-2, got {pieces[:3]}")
    # Unigram takes (piece, score) pairs; BPE takes a piece->id dict and rebuilds merges from the scores.
    vocab = pieces if proto.trainer_spec.model_type == 1 else {p: i for i, (p, _) in enumerate(pieces)}
    # legacy=True reproduces SentencePiece's handling of leading/duplicate spaces exactly.
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab, legacy=True)
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, EOS_ID)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    check_special_tokens(tokenizer)
    return tokenizer


def train_tokenizer(
    pairs: Sequence[Pair],
    vocab_size: int,
    model_type: Literal["unigram", "bpe"] = "unigram",
    max_sentences: int | None = None,
    seed: int = 0,
    num_threads: int = 1,
) -> PreTrainedTokenizerFast:
    """Train one joint vocabulary on both sides of the (cleaned) training pairs.

    ``max_sentences`` caps the total number of sentences (source and target together).
    """
    sentences = [s for s, _ in pairs] + [t for _, t in pairs]
    proto = train_sentencepiece(
        sentences, vocab_size, model_type, max_sentences=max_sentences, seed=seed, num_threads=num_threads
    )
    return tokenizer_from_sentencepiece(proto)


def check_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise if ``tokenizer`` breaks the fixed convention (pad 0, eos 1, unk 2, no BOS, ``pieces + [eos]``)."""
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id)
    if ids != (PAD_ID, EOS_ID, UNK_ID, None):
        raise ValueError(f"tokenizer has (pad, eos, unk, bos) ids {ids}, expected (0, 1, 2, None)")
    encoded = tokenizer("a")["input_ids"]
    if encoded[-1] != EOS_ID or EOS_ID in encoded[:-1]:
        raise ValueError(f"tokenizer must append exactly one </s>; 'a' encodes to {encoded}")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Save ``tokenizer.json`` + ``tokenizer_config.json`` into ``directory`` (e.g. a model checkpoint dir)."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """Reload a saved tokenizer with ``AutoTokenizer`` and verify the special-token convention."""
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    check_special_tokens(tokenizer)
    return tokenizer
