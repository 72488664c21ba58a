"""curves.png from metrics.jsonl: panels, the minutes axis, atomic write, skipping without matplotlib."""

from __future__ import annotations

import json
import math
import sys

import pytest
from PIL import Image

from fixup_transformer.training import plots


def write_metrics(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


TRAIN = [{"kind": "train", "step": s, "loss": 9.0 - s / 10, "train_seconds": 6.0 * s} for s in (10, 20, 30)]
VALID = [
    {"kind": "valid", "step": 15, "valid_loss": 8.0, "valid_bleu": 1.5},
    {"kind": "valid", "step": 30, "valid_loss": "nan", "valid_bleu": 3.0},  # how NaN is stored
]


def test_valid_minutes_are_interpolated_from_the_training_clock():
    minutes = plots.training_minutes([0, 5, 15, 30, 40], TRAIN)
    # 6 s per update; before the first logged update the clock starts at 0; after the last it stays.
    assert minutes.tolist() == pytest.approx([0.0, 0.5, 1.5, 3.0, 3.0])


def test_panels_hold_losses_together_and_bleu_apart():
    panels = plots.curve_panels(TRAIN + VALID + [{"kind": "error", "step": 31, "message": "x"}])
    loss_title, bleu_title = list(panels)
    assert [s.label for s in panels[loss_title]] == ["train loss", "valid loss"]
    valid_loss = panels[loss_title][1]
    assert valid_loss.steps.tolist() == [15, 30] and valid_loss.minutes.tolist() == pytest.approx([1.5, 3.0])
    assert valid_loss.values[0] == 8.0 and math.isnan(valid_loss.values[1])  # a gap, not a dropped point
    assert panels[bleu_title][0].values.tolist() == [1.5, 3.0]
    # No BLEU logged (eval.bleu_sentences: 0): no empty BLEU panel.
    assert list(plots.curve_panels(TRAIN)) == [loss_title]


def test_write_curves_writes_a_png_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    write_metrics(run, TRAIN + VALID)
    lines = []
    path = plots.write_curves(run, log=lines.append)
    assert path == run / "curves.png" and lines == [f"curves: {path}"]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height  # two panels side by side
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temp file left


def test_without_matplotlib_the_plot_is_skipped_with_one_line(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_metrics(run, TRAIN)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    lines = []
    assert plots.write_curves(run, log=lines.append) is None
    assert len(lines) == 1 and "matplotlib is not installed" in lines[0] and "[plot]" in lines[0]
    assert not (run / "curves.png").exists()


def test_end_of_run_plot_failure_is_logged_not_raised(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    write_metrics(run, TRAIN)

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "render_curves", broken)
    lines = []
    assert plots.try_write_curves(run, log=lines.append) is None
    assert lines == ["curves.png not written: RuntimeError: no fonts"]
    with pytest.raises(RuntimeError):
        plots.write_curves(run, log=lines.append)  # the command-line path does not hide it


def test_command_line(tmp_path, capsys):
    assert plots.main([str(tmp_path)]) == 2
    assert f"no metrics.jsonl in {tmp_path}" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path, TRAIN)
    assert plots.main([str(tmp_path)]) == 0 and (tmp_path / "curves.png").is_file()
