"""Parallel-corpus loading, error reporting and training-data cleaning."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from fixup_transformer.data import (
    CorpusConfig,
    CorpusError,
    clean_pairs,
    load_local_parallel,
    load_parallel,
    load_training_pairs,
    read_lines,
)


def write(path: Path, data: str | bytes) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)
    return path


def test_loads_plain_and_gz(tmp_path: Path) -> None:
    write(tmp_path / "train.de", "Ein Hund.\nZwei Katzen.\n")
    write(tmp_path / "train.en.gz", "A dog.\nTwo cats.\n")
    assert load_local_parallel(tmp_path, "train", "de", "en") == [
        ("Ein Hund.", "A dog."),
        ("Zwei Katzen.", "Two cats."),
    ]


def test_splits_on_newline_only(tmp_path: Path) -> None:
    # U+2028 and \x1c are split points for str.splitlines but can occur inside a sentence.
    write(tmp_path / "a.de", "eins\u2028zwei\r\ndrei\x1cvier\nfünf")
    assert read_lines(tmp_path / "a.de") == ["eins\u2028zwei", "drei\x1cvier", "fünf"]


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path: Path) -> None:
    write(tmp_path / "train.de", "a\nb\nc\n")
    write(tmp_path / "train.en", "a\nb\n")
    with pytest.raises(CorpusError) as err:
        load_local_parallel(tmp_path, "train", "de", "en")
    msg = str(err.value)
    assert str(tmp_path / "train.de") in msg and str(tmp_path / "train.en") in msg
    assert "3 lines" in msg and "2 lines" in msg


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "train.de.gz", b"gut\nauch gut\nkaputt \xff\xfe hier\n")
    write(tmp_path / "train.en", "ok\nok\nok\n")
    with pytest.raises(CorpusError, match=r"train\.de\.gz at line 3\b"):
        load_local_parallel(tmp_path, "train", "de", "en")


def test_missing_empty_and_ambiguous_files(tmp_path: Path) -> None:
    write(tmp_path / "train.de", "a\n")
    with pytest.raises(CorpusError, match=r"not found: tried .*train\.en and .*train\.en\.gz"):
        load_local_parallel(tmp_path, "train", "de", "en")
    write(tmp_path / "train.en", b"")
    with pytest.raises(CorpusError, match=r"empty: .*train\.en"):
        load_local_parallel(tmp_path, "train", "de", "en")
    write(tmp_path / "train.en.gz", "a\n")
    with pytest.raises(CorpusError, match="ambiguous"):
        load_local_parallel(tmp_path, "train", "de", "en")


def test_unknown_split_and_corpus() -> None:
    with pytest.raises(CorpusError, match="unknown split"):
        load_parallel(CorpusConfig(data_dir="/nonexistent"), "dev")
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_parallel(CorpusConfig(name="nope"), "train")


def test_a_typo_in_a_known_corpus_name_is_pointed_out_where_a_split_file_is_missing(tmp_path: Path) -> None:
    for lang in ("de", "en"):
        write(tmp_path / f"train.{lang}", "a\n")
        write(tmp_path / f"val.{lang}", "b\n")  # Multi30k's name for its validation files
    # Any name works with local files; train.* exists under every name, so only validation shows the typo.
    assert load_parallel(CorpusConfig(name="multi31k", data_dir=tmp_path), "train") == [("a", "a")]
    with pytest.raises(
        CorpusError, match=r"validation\.de.*'multi31k' is not one of .*did you mean 'multi30k'"
    ):
        load_parallel(CorpusConfig(name="multi31k", data_dir=tmp_path), "validation")
    assert load_parallel(CorpusConfig(name="multi30k", data_dir=tmp_path), "validation") == [("b", "b")]
    # A name of one's own with the split mapped to its files: no hint (nothing is wrong with the name).
    with pytest.raises(CorpusError) as missing:
        load_parallel(CorpusConfig(name="mine", data_dir=tmp_path, split_files={"test": "tst"}), "test")
    assert "is not one of" not in str(missing.value)


def test_hub_offline_raises_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    config = CorpusConfig("multi30k", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CorpusError, match=r"bentrevett/multi30k.*set data_dir"):
        load_parallel(config, "validation")


def test_cleaning_counts_each_reason() -> None:
    pairs = [
        ("ein Hund", "a dog"),  # kept
        ("", "empty source"),  # empty
        ("leer", "   "),  # empty (whitespace only)
        ("eins zwei drei vier fünf sechs", "one two three four five six"),  # too long (> 5)
        ("ein", "one two"),  # ratio 2.0 > 1.5
        ("  zwei   Katzen ", "two  cats"),  # kept, whitespace collapsed
        ("drei kleine Katzen", "three cats"),  # ratio 1.5, kept (not strictly greater)
    ]
    kept, stats = clean_pairs(pairs, max_len=5, max_ratio=1.5)
    assert kept == [("ein Hund", "a dog"), ("zwei Katzen", "two cats"), ("drei kleine Katzen", "three cats")]
    assert (stats.kept, stats.empty, stats.too_long, stats.ratio) == (3, 2, 1, 1)
    assert stats.dropped == 4 and stats.total == 7
    assert "dropped 2 empty, 1 too long, 1 length ratio" in str(stats)


def test_cleaning_drops_a_pair_with_a_word_longer_than_the_perl_scripts_limit() -> None:
    pairs = [("x" * 1001 + " Hund", "y dog"), ("x" * 1000 + " Hund", "y dog")]
    kept, stats = clean_pairs(pairs, max_len=250, max_ratio=1.5)
    assert kept == [pairs[1]] and stats.long_word == 1 and "1 with a word over 1000 characters" in str(stats)


def test_a_corrupt_gzip_file_is_a_corpus_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "train.de.gz"
    data = bytearray(gzip.compress(("Ein Hund läuft.\n" * 200).encode()))
    data[30] ^= 0xFF  # inside the deflate stream: zlib's own error, not an OSError
    path.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=f"cannot read {path}"):
        read_lines(path)


def test_a_hub_dataset_without_the_language_names_its_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = datasets.Dataset.from_dict({"translation": [{"de": "Ein Hund.", "en": "A dog."}]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: rows)
    with pytest.raises(CorpusError, match=r"has languages \['de', 'en'\], not 'en' and 'fr'"):
        load_parallel(CorpusConfig("wmt14", "en", "fr"), "validation")


def test_a_script_hub_dataset_says_to_use_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def refuse(*args, **kwargs):  # what datasets >= 4 raises for a Hub repo that ships a loading script
        raise RuntimeError("Dataset scripts are no longer supported, but found iwslt14-de-en.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(CorpusError, match=r"script dataset.*set data\.data_dir") as caught:
        load_parallel(CorpusConfig("iwslt14"), "validation")
    assert "download it first" not in str(caught.value)  # downloading again cannot help


def test_real_multi30k_split_sizes(multi30k: Path) -> None:
    config = CorpusConfig("multi30k", "de", "en", data_dir=multi30k)
    sizes = {split: len(load_parallel(config, split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 29000, "validation": 1014, "test": 1000}
    first = load_parallel(config, "validation")[0]
    assert first[0].startswith("Eine Gruppe von Männern") and first[1].startswith("A group of men")


def test_real_multi30k_training_cleaning(multi30k: Path) -> None:
    config = CorpusConfig("multi30k", data_dir=multi30k)
    kept, stats = load_training_pairs(config, max_len=50, max_ratio=2.0)
    assert stats.total == 29000 and stats.kept == len(kept)
    assert 0 < stats.dropped < 2900  # a few percent at most on this clean corpus


def test_real_iwslt14_dev_set(iwslt14: Path) -> None:
    iwslt = CorpusConfig("iwslt14", data_dir=iwslt14, split_files={"validation": "valid.tok.lc"})
    assert len(load_parallel(iwslt, "validation")) == 7283


def test_real_wmt_dev_set(wmt: Path) -> None:
    pairs = load_parallel(CorpusConfig("wmt16", data_dir=wmt), "validation")
    assert len(pairs) == 3000
    assert pairs[0][0] == "Eine republikanische Strategie, um der Wiederwahl von Obama entgegenzutreten"


def test_split_files_with_a_key_that_is_not_a_split_is_refused(tmp_path):
    # ``valid:`` instead of ``validation:`` would otherwise load the table's default stem without a word.
    with pytest.raises(CorpusError, match=r"split_files: unknown split 'valid'; the splits are \['train'"):
        CorpusConfig("iwslt14", data_dir=tmp_path, split_files={"valid": "valid.tok.lc"})
    with pytest.raises(CorpusError, match="data_dir is not set"):
        CorpusConfig("iwslt14", split_files={"validation": "valid.tok.lc"})


def test_files_that_would_misalign_silently_are_named(tmp_path: Path) -> None:
    from fixup_transformer.data.parallel import read_lines

    # A byte-order mark does not shift the reported place of a bad byte.
    bom = tmp_path / "bom.de"
    bom.write_bytes(b"\xef\xbb\xbfeins\nzw\xffei\n")
    with pytest.raises(CorpusError, match=r"bom\.de at line 2 \(byte offset 10\)"):
        read_lines(bom)
    # Old Mac line endings would make each file one "sentence" (both sides alike, so counts agree).
    mac = tmp_path / "mac.de"
    mac.write_bytes(b"Ein Hund .\rZwei Katzen .\rDrei.\r")
    with pytest.raises(CorpusError, match=r"mac\.de ends its lines with \\r only"):
        read_lines(mac)
    crlf = tmp_path / "crlf.de"
    crlf.write_bytes(b"Ein Hund .\r\n")  # one Windows line is fine
    assert read_lines(crlf) == ["Ein Hund ."]
    # A gzip file without the .gz name is named as such, not as invalid UTF-8.
    packed = tmp_path / "packed.de"
    packed.write_bytes(gzip.compress(b"Ein Hund .\n"))
    with pytest.raises(CorpusError, match=r"packed\.de is gzip-compressed: name it packed\.de\.gz"):
        read_lines(packed)


def test_cleaning_counts_chinese_and_japanese_words_without_spaces(multi30k: Path) -> None:
    from fixup_transformer.data.cleaning import sentence_length

    # Each ideograph a word, a run of kana one word: a whole sentence is no longer a single "word".
    assert sentence_length("猫坐在垫子上，看着窗外。") == 12  # 10 ideographs, 2 punctuation marks
    assert sentence_length("皆さん、おはようございます。") == 5  # 皆 / さん / 、 / おはようございます / 。
    pairs = [
        ("The cat sits on the mat and looks out of the window .", "猫坐在垫子上，看着窗外。"),
        ("I like it .", "我喜欢它。"),
        ("Good morning , everyone .", "皆さん、おはようございます。"),
    ]
    assert clean_pairs(pairs)[1].kept == 3  # with whitespace words all three failed the 1.5 ratio
    # Text without ideographs or kana counts exactly as clean-corpus-n.perl (whitespace words).
    lines = [s for pair in load_local_parallel(multi30k, "val", "de", "en") for s in pair]
    assert [sentence_length(s) for s in lines] == [len(s.split()) for s in lines]
    assert sentence_length(" a\x85b\tc\u3000d ") == len(" a\x85b\tc\u3000d ".split())
