"""Training-corpus filtering in the style of Moses/fairseq ``clean-corpus-n.perl``.

Web-crawled and subtitle corpora contain empty lines, runaway sentences and misaligned pairs whose lengths
differ wildly; such pairs waste memory (long ones dominate token-based batches) and teach the model to
hallucinate or drop content. Only training data is cleaned: filtering validation/test sets would make scores
incomparable with published numbers, so :func:`fixup_transformer.data.load_parallel` never calls this.

Lengths are counted in whitespace-separated words, as ``clean-corpus-n.perl`` does (fairseq's
prepare-iwslt14.sh uses ``-ratio 1.5`` with max 175 words on Moses-tokenized text). Words rather than subwords
keep cleaning independent of the tokenizer, which is itself trained on the cleaned text. Chinese and
Japanese are written without spaces: each CJK ideograph counts as a word and each run of kana as one, about
as a word segmenter would split them (Chinese words average 1.5 characters); otherwise a whole sentence
would be one word, fail every length ratio against its translation and never reach max_len. Text without
ideographs or kana counts exactly as the Perl script does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .parallel import Pair

# clean-corpus-n.perl drops a pair with a "word" this long: a URL, a base64 blob or a line without spaces.
MAX_WORD_CHARS = 1000

# Chinese and Japanese have no spaces between words (module docstring): ideographs count one word each,
# runs of kana one word, and runs of anything else between spaces one word, as the Perl script counts.
_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_KANA = "\u3040-\u30ff"
_WORD = re.compile(f"[{_IDEOGRAPHS}]|[{_KANA}]+|[^\\s{_IDEOGRAPHS}{_KANA}]+")


def sentence_length(text: str) -> int:
    """Words of ``text``: whitespace-separated runs, each CJK ideograph and each run of kana one word."""
    return len(_WORD.findall(text))


@dataclass
class CleaningStats:
    """How many pairs were kept and how many were dropped for each reason (first failing check wins)."""

    kept: int = 0
    empty: int = 0
    too_long: int = 0
    ratio: int = 0
    long_word: int = 0

    @property
    def dropped(self) -> int:
        return self.empty + self.too_long + self.ratio + self.long_word

    @property
    def total(self) -> int:
        return self.kept + self.dropped

    def __str__(self) -> str:
        return (
            f"kept {self.kept}/{self.total} pairs; dropped {self.empty} empty, "
            f"{self.too_long} too long, {self.ratio} length ratio, {self.long_word} with a word over "
            f"{MAX_WORD_CHARS} characters"
        )


def clean_pairs(
    pairs: Iterable[Pair], max_len: int = 250, max_ratio: float = 1.5, min_len: int = 1
) -> tuple[list[Pair], CleaningStats]:
    """Drop pairs with a side shorter than ``min_len`` words ("empty"), a side longer than ``max_len`` words
    ("too_long"), a word-count ratio (longer / shorter side) above ``max_ratio`` ("ratio"), or a word of
    more than :data:`MAX_WORD_CHARS` characters ("long_word"), the checks of ``clean-corpus-n.perl``.

    Kept sentences have their whitespace collapsed to single spaces and stripped, as in the Perl script.
    Returns the kept pairs, in their original order, and a :class:`CleaningStats`.
    """
    if min_len < 1:
        raise ValueError(f"min_len must be >= 1, got {min_len}")
    kept: list[Pair] = []
    stats = CleaningStats()
    for src, tgt in pairs:
        src_words, tgt_words = src.split(), tgt.split()
        n_src, n_tgt = sentence_length(src), sentence_length(tgt)
        if min(n_src, n_tgt) < min_len:
            stats.empty += 1
        elif max(n_src, n_tgt) > max_len:
            stats.too_long += 1
        elif max(n_src, n_tgt) / min(n_src, n_tgt) > max_ratio:
            stats.ratio += 1
        elif max(map(len, src_words + tgt_words)) > MAX_WORD_CHARS:
            stats.long_word += 1
        else:
            kept.append((" ".join(src_words), " ".join(tgt_words)))
    stats.kept = len(kept)
    return kept, stats
