"""Joint SentencePiece tokenizer: special-token convention, parity with sentencepiece, offline reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from fixup_transformer.data import (
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CorpusConfig,
    load_parallel,
    save_tokenizer,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def multi30k_pairs(multi30k: Path) -> list[tuple[str, str]]:
    return load_parallel(CorpusConfig("multi30k", data_dir=multi30k), "train")[:5000]


@pytest.fixture(scope="module")
def tokenizer(multi30k_pairs: list[tuple[str, str]]):
    return train_tokenizer(multi30k_pairs, vocab_size=1000)


def test_special_token_convention(tokenizer) -> None:
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        PAD_ID,
        EOS_ID,
        UNK_ID,
    )
    assert (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2)
    assert tokenizer.bos_token_id is None
    assert len(tokenizer) == 1000
    src = tokenizer(["Ein Hund.", "Zwei Männer spielen Fußball."])["input_ids"]
    tgt = tokenizer(text_target=["A dog.", "Two men play soccer."])["input_ids"]
    for ids in src + tgt:
        assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1] and PAD_ID not in ids
    assert tokenizer("Ein Hund.")["input_ids"] == src[0]


def test_ids_match_sentencepiece(multi30k_pairs: list[tuple[str, str]], tokenizer) -> None:
    proto = train_sentencepiece([s for s, _ in multi30k_pairs] + [t for _, t in multi30k_pairs], 1000)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    texts = [s for s, _ in multi30k_pairs[:300]] + [t for _, t in multi30k_pairs[:300]]
    texts += ["  doppelte  Leerzeichen ", "Größe, Straße; ÄÖÜ!", "ｆｕｌｌｗｉｄｔｈ", "中文 unbekannt"]
    ours = tokenizer(texts)["input_ids"]
    assert ours == [sp.encode(t) + [EOS_ID] for t in texts]
    assert UNK_ID in ours[-1]  # unseen characters map to <unk>, not to bytes or extra ids


def test_training_is_deterministic(multi30k_pairs: list[tuple[str, str]]) -> None:
    pairs = multi30k_pairs[:800]
    first = train_sentencepiece(
        [s for s, _ in pairs] + [t for _, t in pairs], 300, max_sentences=1000, seed=3
    )
    again = train_sentencepiece(
        [s for s, _ in pairs] + [t for _, t in pairs], 300, max_sentences=1000, seed=3
    )
    assert first == again


def test_bpe_model_type(multi30k_pairs: list[tuple[str, str]]) -> None:
    proto = train_sentencepiece([t for _, t in multi30k_pairs[:2000]], 400, model_type="bpe")
    tok = tokenizer_from_sentencepiece(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    texts = [t for _, t in multi30k_pairs[:200]]
    assert tok(texts)["input_ids"] == [sp.encode(t) + [EOS_ID] for t in texts]


def test_rejects_model_with_other_special_ids() -> None:
    import io

    model = io.BytesIO()
    text = ["ein kleiner Test", "noch ein Satz"] * 50
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, vocab_size=20, minloglevel=2
    )
    with pytest.raises(ValueError, match="expected <pad>, </s>, <unk> at ids 0-2"):
        tokenizer_from_sentencepiece(model.getvalue())


FRESH_PROCESS = r"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
src = tok(["Ein Hund läuft durch den Schnee.", "Zwei  Männer."])["input_ids"]
tgt = tok(text_target=["A dog runs through the snow."])["input_ids"]
print(json.dumps({
    "cls": type(tok).__name__, "special": [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id],
    "src": src, "tgt": tgt, "decoded": tok.batch_decode(src + tgt, skip_special_tokens=True),
}))
"""


def test_save_and_reload_in_fresh_process(tokenizer, tmp_path: Path) -> None:
    save_dir = save_tokenizer(tokenizer, tmp_path / "checkpoint")
    assert sorted(p.name for p in save_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(save_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # nothing from the repo on the path beyond the installed packages
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["special"] == [0, 1, 2, None]
    assert out["src"] == tokenizer(["Ein Hund läuft durch den Schnee.", "Zwei  Männer."])["input_ids"]
    assert out["tgt"] == tokenizer(text_target=["A dog runs through the snow."])["input_ids"]
    # SentencePiece detokenization gives the original text back, up to whitespace normalization.
    assert out["decoded"] == [
        "Ein Hund läuft durch den Schnee.",
        "Zwei Männer.",
        "A dog runs through the snow.",
    ]
