"""``evaluate_model``: hypotheses scored against their own references, options honoured (no real model).

The model loading and decoding are replaced by a stub that "translates" each source into its reference,
so any misalignment between sources, hypotheses and references shows up as a BLEU below 100.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixup_transformer.evaluation import GenerationSettings, mt_eval
from fixup_transformer.evaluation.mt_eval import EvalRequest, corpus_for, evaluate_model
from fixup_transformer.paths import resolve_path

PAIRS = [
    ("Ein Hund läuft durch den Schnee.", "A dog runs through the snow."),
    ("Zwei Männer spielen Fußball.", "Two men play soccer."),
    ("Eine Frau liest ein Buch im Park.", "A woman reads a book in the park."),
    ("Kinder springen in einen See.", "Children jump into a lake."),
]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.de").write_text("".join(f"{s}\n" for s, _ in PAIRS), encoding="utf-8")
    (data / "test.en").write_text("".join(f"{t}\n" for _, t in PAIRS), encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / "tokenizer.json").write_text("{}", encoding="utf-8")
    reference = dict(PAIRS)
    seen: list[list[str]] = []

    def fake_translate(model, tokenizer, sources, settings, accelerator=None):
        seen.append(list(sources))
        return [reference[s] for s in sources]

    monkeypatch.setattr(mt_eval, "load_model_and_tokenizer", lambda model_dir, device=None: (None, None))
    monkeypatch.setattr(mt_eval, "translate_corpus", fake_translate)
    return model, data, seen


def request(model: Path, data: Path, **kwargs) -> EvalRequest:
    return EvalRequest(str(model), data_dir=str(data), corpus="local", src_lang="de", tgt_lang="en", **kwargs)


def test_each_hypothesis_is_scored_against_its_own_reference(setup) -> None:
    model, data, seen = setup
    hyps, scores, _ = evaluate_model(request(model, data), GenerationSettings())
    assert seen == [[s for s, _ in PAIRS]]
    assert hyps == [t for _, t in PAIRS]
    assert scores["bleu"].score == pytest.approx(100.0) and scores["chrf"].score == pytest.approx(100.0)
    hyps, scores, _ = evaluate_model(request(model, data, limit=2), GenerationSettings())
    assert seen[-1] == [s for s, _ in PAIRS[:2]] and scores["bleu"].score == pytest.approx(100.0)


def test_pretokenized_references_bring_the_tokenized_bleu_with_them(setup) -> None:
    model, data, _ = setup
    _, scores, _ = evaluate_model(request(model, data), GenerationSettings())
    assert set(scores) == {"bleu", "chrf"}
    _, scores, _ = evaluate_model(request(model, data, pretokenized_references=True), GenerationSettings())
    assert "tokenized_bleu" in scores


def test_explicit_settings_win_over_the_training_config(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    recorded = {
        "data": {
            "corpus": "iwslt14",
            "data_dir": str(tmp_path / "recorded"),
            "src_lang": "de",
            "tgt_lang": "en",
            "split_files": {"validation": "valid.tok.lc"},
        }
    }
    (model / "training_config.yaml").write_text(yaml.safe_dump(recorded), encoding="utf-8")
    corpus = corpus_for(EvalRequest(str(model)))
    assert corpus.data_dir == resolve_path(str(tmp_path / "recorded"))
    assert corpus.split_files == {"validation": "valid.tok.lc"}
    corpus = corpus_for(EvalRequest(str(model), data_dir=str(tmp_path / "mine")))
    assert corpus.data_dir == resolve_path(str(tmp_path / "mine"))
    # Another corpus does not inherit the recorded one's file names.
    corpus = corpus_for(EvalRequest(str(model), corpus="wmt16", data_dir=str(tmp_path / "mine")))
    assert corpus.name == "wmt16" and corpus.split_files == {}
