"""Corpus-cleaning boundaries and the loader's options, on tiny local files (found by mutation testing)."""

from __future__ import annotations

from pathlib import Path

from fixup_transformer.data import CorpusConfig, load_training_pairs, read_lines
from fixup_transformer.data.cleaning import clean_pairs


def test_a_side_of_exactly_max_len_words_is_kept() -> None:
    five = ("eins zwei drei vier fünf", "one two three four five")
    six = ("eins zwei drei vier fünf sechs", "one two three four five six")
    kept, stats = clean_pairs([five, six], max_len=5, max_ratio=1.5)
    assert kept == [five] and stats.too_long == 1


def test_the_length_ratio_is_checked_in_both_directions() -> None:
    # clean-corpus-n.perl drops a pair whose source is much longer than its target as well as the reverse.
    long_source = ("eins zwei drei vier", "one two")
    long_target = ("eins zwei", "one two three four")
    kept, stats = clean_pairs([long_source, long_target, ("eins zwei", "one two")], max_ratio=1.5)
    assert kept == [("eins zwei", "one two")] and stats.ratio == 2


def write_corpus(folder: Path, pairs: list[tuple[str, str]]) -> None:
    (folder / "train.de").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    (folder / "train.en").write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")


def test_load_training_pairs_applies_its_max_len_max_ratio_and_limit(tmp_path: Path) -> None:
    pairs = [
        ("ein Hund", "a dog"),  # ratio 1
        ("drei kleine Katzen", "three cats"),  # ratio 1.5
        ("ein", "one small dog"),  # ratio 3
        ("eins zwei drei vier", "one two three four"),  # 4 words
        ("zwei Katzen", "two cats"),
    ]
    write_corpus(tmp_path, pairs)
    config = CorpusConfig("mycorpus", "de", "en", data_dir=tmp_path)
    kept, stats = load_training_pairs(config, max_len=250, max_ratio=3.0)
    assert kept == pairs and stats.total == 5
    kept, stats = load_training_pairs(config, max_len=3, max_ratio=1.2)
    assert kept == [pairs[0], pairs[4]] and (stats.ratio, stats.too_long) == (2, 1)
    kept, stats = load_training_pairs(config, max_len=250, max_ratio=3.0, limit=3)
    assert kept == pairs[:3] and stats.total == 3


def test_a_blank_last_line_is_a_sentence_of_its_own(tmp_path: Path) -> None:
    # Lines count as wc -l counts them: a final empty line (a blank sentence) keeps both sides aligned.
    path = tmp_path / "valid.en"
    path.write_text("A dog.\n\n", encoding="utf-8")
    assert read_lines(path) == ["A dog.", ""]
    path.write_text("A dog.\n\n\n", encoding="utf-8")
    assert read_lines(path) == ["A dog.", "", ""]
    path.write_text("A dog.", encoding="utf-8")
    assert read_lines(path) == ["A dog."]
