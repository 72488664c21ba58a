"""The translate command on a model trained on real Multi30k: stdin/stdout and files, order, blank lines,
line count, errors; the console entry points; curves.png from the same training run.

One module-scoped run of ``configs/tiny_test.yaml`` (60 updates, seconds) gives a real export; its
translations are still nearly all alike, so order is checked with generation replaced by a copy of the
source. The tests skip without the shared data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from test_train_mt_e2e import OFFLINE_ENV

from fixup_transformer.cli import translate as cli
from fixup_transformer.data import CorpusConfig, load_parallel
from fixup_transformer.training import mt
from fixup_transformer.training.config import load_config
from fixup_transformer.training.metrics import read_metrics
from fixup_transformer.training.mt_config import MTConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(multi30k, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("translate") / "run"
    overrides = {
        "data.data_dir": str(multi30k),
        "output_dir": str(out),
        "train.max_updates": 60,
        "train.log_interval": 10,
        "eval.valid_interval_updates": 20,
        "eval.test_split": "none",
        "checkpoint.save_interval_updates": 0,
    }
    mt.train(load_config(MTConfig, REPO / "configs" / "tiny_test.yaml", overrides))
    return out


@pytest.fixture(scope="module")
def source_lines(multi30k) -> list[str]:
    """25 test sentences with blank lines (empty, whitespace-only) at the start, inside and at the end."""
    sources = [
        s for s, _ in load_parallel(CorpusConfig("multi30k", "de", "en", data_dir=multi30k), "test")[:25]
    ]
    return ["", *sources[:10], "   ", *sources[10:20], "", *sources[20:], "\t"]


@pytest.fixture(scope="module")
def expected(run_dir, source_lines) -> list[str]:
    """What the evaluation's corpus translation gives for the non-blank lines, blanks put back in place."""
    from fixup_transformer.evaluation import GenerationSettings, translate_corpus
    from fixup_transformer.evaluation.mt_eval import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(run_dir / "last")
    # The command's defaults are the training config's eval section: tiny_test.yaml has beam 2, a=1, b=5.
    settings = GenerationSettings(num_beams=2, max_len_a=1.0, max_len_b=5, batch_tokens=8000)
    hyps = iter(
        translate_corpus(
            model, tokenizer, [s for s in source_lines if s.strip()], settings, show_progress=False
        )
    )
    return [next(hyps) if line.strip() else "" for line in source_lines]


def test_stdin_to_stdout(run_dir, source_lines, expected):
    stdin = "\n".join(source_lines)  # no final newline: the last line still counts
    proc = subprocess.run(
        [sys.executable, "-m", "fixup_transformer.translate", "--model", str(run_dir / "last")],
        input=stdin.encode("utf-8"),
        capture_output=True,
        env=OFFLINE_ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = proc.stdout.decode("utf-8")
    assert out.endswith("\n") and out.count("\n") == len(source_lines)
    assert out.split("\n")[:-1] == expected
    assert "translating" in proc.stderr.decode()  # progress bar: stdout is not a terminal


def test_input_and_output_files(run_dir, source_lines, expected, tmp_path, capsys):
    src, hyp = tmp_path / "in.de", tmp_path / "out.en"
    src.write_text("".join(line + "\r\n" for line in source_lines), encoding="utf-8")  # CRLF input
    argv = ["--model", str(run_dir / "last"), "--input", str(src), "--output", str(hyp)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == ""  # translations went to the file only
    assert hyp.read_text(encoding="utf-8").split("\n") == [*expected, ""]


def test_order_blanks_and_options_with_an_echo_model(run_dir, source_lines, tmp_path, capsys, monkeypatch):
    """With generation replaced by "copy the source", every output line must be its own input line."""
    from transformers import AutoTokenizer

    from fixup_transformer import FixupTransformerForConditionalGeneration

    calls = []

    def echo(self, input_ids, attention_mask, **kwargs):
        calls.append(kwargs)
        return input_ids

    monkeypatch.setattr(FixupTransformerForConditionalGeneration, "generate", echo)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "last")
    round_trip = [
        tokenizer.decode(tokenizer(s)["input_ids"], skip_special_tokens=True).strip() for s in source_lines
    ]
    assert len(set(round_trip)) == 26  # 25 distinct sentences + blank: a reordering would show
    src, hyp = tmp_path / "in.de", tmp_path / "out.en"
    src.write_text("\n".join(source_lines) + "\n", encoding="utf-8")
    argv = ["--model", str(run_dir / "last"), "--input", str(src), "--output", str(hyp), "--quiet"]

    assert cli.main([*argv, "--batch-tokens", "60"]) == 0
    assert hyp.read_text(encoding="utf-8").split("\n") == [*round_trip, ""]
    assert len(calls) > 3  # several length-sorted batches, put back in input order
    # Defaults from the export's training config (tiny_test.yaml: beam 2, max_len a=1, b=5).
    assert calls[0]["num_beams"] == 2 and calls[0]["length_penalty"] == 1.0
    assert capsys.readouterr().err == ""  # --quiet: no progress bar

    calls.clear()
    assert cli.main([*argv, "--beam", "3", "--lenpen", "0.6", "--max-new-tokens", "3"]) == 0
    assert all(c["num_beams"] == 3 and c["length_penalty"] == 0.6 and c["max_new_tokens"] == 3 for c in calls)
    # Greedy gets no beam-only flags (transformers warns about them at every batch), and never the
    # export's max_length cap beside max_new_tokens (another warning per batch).
    calls.clear()
    assert cli.main([*argv, "--beam", "1", "--lenpen", "0.6"]) == 0
    assert calls and all(
        c["num_beams"] == 1 and "length_penalty" not in c and c["max_length"] is None for c in calls
    )


def test_empty_input_gives_empty_output(run_dir, tmp_path):
    src, hyp = tmp_path / "empty.de", tmp_path / "empty.en"
    src.write_bytes(b"")
    assert cli.main(["--model", str(run_dir / "last"), "--input", str(src), "--output", str(hyp)]) == 0
    assert hyp.read_bytes() == b""


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_errors_are_one_line_with_exit_code_2(run_dir, tmp_path, capsys):
    model = str(run_dir / "last")
    src = tmp_path / "in.de"
    src.write_text("Ein Hund.\n", encoding="utf-8")

    assert cli.main(["--model", str(tmp_path / "missing"), "--input", str(src)]) == 2
    assert "model dir not found" in one_error_line(capsys)

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run_dir / "last" / name, no_tokenizer / name)
    assert cli.main(["--model", str(no_tokenizer), "--input", str(src)]) == 2
    assert f"no tokenizer in {no_tokenizer}" in one_error_line(capsys)
    shutil.copy(run_dir / "last" / "tokenizer_config.json", no_tokenizer / "tokenizer_config.json")
    assert cli.main(["--model", str(no_tokenizer), "--input", str(src)]) == 2  # no tokenizer.json beside it
    assert f"cannot load the tokenizer in {no_tokenizer}" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(tmp_path / "missing.de")]) == 2
    assert f"cannot read input {tmp_path / 'missing.de'}" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(tmp_path)]) == 2  # a folder is no input file
    assert f"cannot read input {tmp_path}" in one_error_line(capsys)

    latin1 = tmp_path / "latin1.de"
    latin1.write_bytes("Ein Hund.\nGrün\n".encode("latin-1"))
    assert cli.main(["--model", model, "--input", str(latin1)]) == 2
    assert f"invalid UTF-8 in {latin1} at line 2" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(src), "--output", str(tmp_path / "no" / "out.en")]) == 2
    assert "cannot write output" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(src), "--output", str(tmp_path)]) == 2
    assert "it is a folder" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(src), "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens must be at least 1" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(src), "--lenpen", "nan"]) == 2
    assert "lenpen must be a finite number" in one_error_line(capsys)

    assert cli.main(["--model", model, "--input", str(src), "--device", "gpu"]) == 2
    assert "--device 'gpu'" in one_error_line(capsys)
    if not torch.cuda.is_available():
        assert cli.main(["--model", model, "--input", str(src), "--device", "cuda"]) == 2
        assert "no CUDA device" in one_error_line(capsys)


def test_sources_and_outputs_longer_than_the_positions_fit_them(run_dir, tmp_path, capsys):
    # One line out per line in: a source longer than the model's positions is cut to fit (with a warning),
    # and the output limit a * length + b is capped at the positions, as fairseq caps it.
    from fixup_transformer.evaluation import GenerationSettings, translate_corpus
    from fixup_transformer.evaluation.mt_eval import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(run_dir / "last")
    model.config.max_position_embeddings = 12
    sources = ["Ein Hund.", " ".join(["Ein Hund läuft über die Wiese."] * 6), "Zwei Katzen."]
    settings = GenerationSettings(num_beams=2, max_len_a=2.0, max_len_b=10, batch_tokens=8000)
    with pytest.warns(UserWarning, match=r"1 source sentence\(s\) longer than the model's 12 positions"):
        hyps = translate_corpus(model, tokenizer, sources, settings, show_progress=False)
    assert len(hyps) == 3
    assert settings.new_tokens(30, positions=12) == 11 and settings.new_tokens(1, positions=None) == 12


def test_split_lines_counts_like_wc():
    assert cli.split_lines(b"", "x") == []
    assert cli.split_lines(b"\n", "x") == [""]
    assert cli.split_lines(b"a\r\nb", "x") == ["a", "b"]
    assert cli.split_lines("a\u2028b\n\nc\n".encode(), "x") == [
        "a\u2028b",
        "",
        "c",
    ]  # U+2028 is no line break


def test_translate_lines_keeps_blanks_and_one_line_per_sentence():
    seen = []

    def fake(sources):
        seen.append(sources)
        return [s.upper() + "\nmore" for s in sources]  # a model output with a line break in it

    assert cli.translate_lines(["a", "", " ", "b"], fake) == ["A more", "", "", "B more"]
    assert seen == [["a", "b"]]  # blank lines never reach the model
    assert cli.translate_lines(["", ""], fake) == ["", ""] and len(seen) == 1


def test_console_entry_points_are_installed():
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("fixup-")}
    expected = {"fixup-train-mt", "fixup-evaluate-mt", "fixup-translate", "fixup-train-image"}
    assert expected <= scripts.keys()
    for name in expected:
        assert callable(scripts[name].load())


def test_training_run_writes_curves(run_dir):
    pytest.importorskip("matplotlib")
    from PIL import Image

    valid = read_metrics(run_dir / "metrics.jsonl", "valid")
    assert [r["step"] for r in valid] == [20, 40, 60] and all("valid_bleu" in r for r in valid)
    with Image.open(run_dir / "curves.png") as image:
        assert image.format == "PNG" and image.width > image.height  # loss and BLEU panels side by side


# ----------------------------------------------------------------------------------------------------------
# scripts/evaluate_mt.py on the same model: the decoding the run was scored with, and its usage errors


def test_evaluate_decodes_with_the_training_configs_settings(run_dir, multi30k, tmp_path, capsys):
    # Like fixup-translate: the eval section of training_config.yaml (tiny_test.yaml: beam 2, a=1, b=5), so
    # evaluate_mt reproduces the run's own test translations unless told otherwise.
    from fixup_transformer.cli import evaluate_mt
    from fixup_transformer.evaluation import GenerationSettings, translate_corpus
    from fixup_transformer.evaluation.mt_eval import load_model_and_tokenizer

    out = tmp_path / "hyp.en"
    argv = ["--model", str(run_dir / "last"), "--data-dir", str(multi30k), "--limit", "6", "--cpu"]
    assert evaluate_mt.main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 sentences, beam 2, lenpen 1.0" in printed
    assert f"({multi30k / 'test_2016_flickr'}.{{de,en}})" in printed  # the files scored, not the name only
    sources = [
        s for s, _ in load_parallel(CorpusConfig("multi30k", "de", "en", data_dir=multi30k), "test")[:6]
    ]
    model, tokenizer = load_model_and_tokenizer(run_dir / "last")
    settings = GenerationSettings(num_beams=2, max_len_a=1.0, max_len_b=5, batch_tokens=8000)
    assert out.read_text(encoding="utf-8").splitlines() == translate_corpus(
        model, tokenizer, sources, settings, show_progress=False
    )
    assert evaluate_mt.main([*argv, "--beam", "1"]) == 0
    assert "beam 1, lenpen 1.0" in capsys.readouterr().out


def test_evaluate_usage_errors_are_one_line_before_decoding(run_dir, multi30k, tmp_path, capsys):
    from fixup_transformer.cli import evaluate_mt

    model = run_dir / "last"
    argv = ["--model", str(model), "--data-dir", str(multi30k), "--cpu"]
    for extra, message in [
        (["--limit", "0"], "--limit must be at least 1, got 0"),
        (["--beam", "0"], "num_beams must be at least 1"),
        (["--json", str(tmp_path)], "it is a folder"),
        (["--output", str(tmp_path / "no" / "hyp.en")], "cannot write output"),
    ]:
        assert evaluate_mt.main([*argv, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
    assert not (tmp_path / "no").exists()

    bad_type = tmp_path / "bad_config"
    shutil.copytree(model, bad_type)
    config = json.loads((bad_type / "config.json").read_text())
    (bad_type / "config.json").write_text(json.dumps({**config, "d_model": float(config["d_model"])}))
    assert evaluate_mt.main(["--model", str(bad_type), "--data-dir", str(multi30k), "--cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model config" in err and "field 'd_model'" in err

    unrecorded = tmp_path / "no_training_config"
    shutil.copytree(model, unrecorded)
    (unrecorded / "training_config.yaml").unlink()
    assert evaluate_mt.main(["--model", str(unrecorded), "--src", "de", "--tgt", "en", "--cpu"]) == 2
    assert "records no corpus: pass --corpus" in capsys.readouterr().err
    assert evaluate_mt.main([*argv, "--src", "de", "--tgt", "de"]) == 2
    assert "source and target language are both 'de'" in capsys.readouterr().err

    truncated = tmp_path / "truncated_weights"
    shutil.copytree(model, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:7])
    bad_yaml = tmp_path / "bad_training_config"
    shutil.copytree(model, bad_yaml)
    (bad_yaml / "training_config.yaml").write_text("eval: [unclosed\n", encoding="utf-8")
    for broken, message in [(truncated, "cannot load the model in"), (bad_yaml, "is not valid YAML")]:
        assert evaluate_mt.main(["--model", str(broken), "--data-dir", str(multi30k), "--cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err

    for missing, message in [
        ("model.safetensors", "cannot load the model in"),
        ("tokenizer.json", "tokenizer"),
    ]:
        broken = tmp_path / f"without_{missing}"
        shutil.copytree(model, broken)
        (broken / missing).unlink()
        assert evaluate_mt.main(["--model", str(broken), "--data-dir", str(multi30k), "--cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_evaluate_keeps_its_translations_when_scoring_fails(run_dir, multi30k, tmp_path, monkeypatch):
    from fixup_transformer.cli import evaluate_mt
    from fixup_transformer.evaluation import mt_eval

    def broken_scoring(*args, **kwargs):
        raise RuntimeError("a scorer failed")

    monkeypatch.setattr(mt_eval, "corpus_scores", broken_scoring)
    out = tmp_path / "hyp.en"
    argv = ["--model", str(run_dir / "last"), "--data-dir", str(multi30k), "--limit", "4", "--cpu"]
    with pytest.raises(RuntimeError, match="a scorer failed"):
        evaluate_mt.main([*argv, "--output", str(out)])
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
