"""Per-layer diagnostics: one row per (step, residual layer), finite values, tables written atomically."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch

from fixup_transformer.diagnostics import (
    LayerRecorder,
    divergence_step,
    first_nonfinite_step,
    json_safe,
    plot_run,
    record_training,
    require_pyplot,
    residual_layers,
    torch_threads,
    write_tables,
)
from fixup_transformer.probe_data import cifar_batches, multi30k_batches
from fixup_transformer.text import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.vision import FixupResNetConfig, FixupResNetForImageClassification


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny per-layer ops run fastest on one thread; several threads on a busy 2-core box thrash."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def cifar_batch(cifar10):
    return cifar_batches(cifar10, batch_size=8)


@pytest.fixture(scope="module")
def mt_batch(multi30k):
    return multi30k_batches(multi30k, batch_size=8, vocab_size=500, max_tokens=20, tokenizer_pairs=2000)


def tiny_resnet(depth: int = 20, **kwargs) -> FixupResNetForImageClassification:
    torch.manual_seed(0)
    return FixupResNetForImageClassification(
        FixupResNetConfig.cifar(depth=depth, width_multiplier=0.25, **kwargs)
    )


def test_residual_layers_of_a_transformer_are_encoder_then_decoder_layers():
    config = FixupTransformerConfig(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=32, decoder_ffn_dim=32
    )
    model = FixupTransformerForConditionalGeneration(config)
    layers = residual_layers(model)
    assert [module for _, module in layers] == [*model.model.encoder.layers, *model.model.decoder.layers]
    assert layers[0][0] == "model.encoder.layers.0" and layers[-1][0] == "model.decoder.layers.2"


def test_residual_layers_of_a_resnet_are_its_blocks():
    model = tiny_resnet(depth=20)
    blocks = [b for stage in model.resnet.stages for b in stage.blocks]
    assert [m for _, m in residual_layers(model)] == blocks
    assert len(blocks) == model.config.num_blocks == 9


def test_residual_layers_rejects_unknown_models():
    with pytest.raises(ValueError, match="no residual layers"):
        residual_layers(torch.nn.Linear(2, 2))


def test_resnet_diagnostics_table_has_one_finite_row_per_step_and_layer(cifar_batch, tmp_path):
    model = tiny_resnet(depth=20)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = record_training(model, cifar_batch, optimizer, steps=2, progress=False, meta={"title": "t"})
    assert [r.step for r in run.records] == [0, 1, 2]
    rows = run.rows()
    assert len(rows) == 3 * 9
    for row in rows:
        assert math.isfinite(row["activation_rms"]) and row["activation_rms"] > 0
        assert math.isfinite(row["grad_norm"]) and math.isfinite(row["loss"])
    # Fixup at init: zero classifier, so the loss is exactly log(10).
    assert run.records[0].loss == pytest.approx(math.log(10), abs=1e-5)
    # Hooks are removed when recording ends.
    assert all(not block._forward_hooks for _, block in residual_layers(model))

    paths = write_tables(run, tmp_path / "out", "resnet20")
    with open(paths["csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert table[0].keys() == {"step", "layer_index", "layer", "activation_rms", "grad_norm", "loss"}
    payload = json.loads(paths["json"].read_text())
    assert payload["layers"] == run.layer_names and len(payload["rows"]) == len(rows)
    assert [s["step"] for s in payload["steps"]] == [0, 1, 2]
    assert not list((tmp_path / "out").glob(".*.tmp")), "temporary files must be renamed away"


def test_transformer_diagnostics_on_real_text(mt_batch):
    batches, vocab_size = mt_batch
    config = FixupTransformerConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98))
    run = record_training(model, batches, optimizer, steps=1, progress=False)
    assert len(run.rows()) == 2 * 5
    assert all(math.isfinite(r["activation_rms"]) and math.isfinite(r["grad_norm"]) for r in run.rows())
    # Fixup zero-inits every branch's last layer: at init each layer passes its input through, so the
    # output scale of consecutive encoder layers is identical.
    init = run.records[0].activation_rms
    assert init[0] == pytest.approx(init[1]) == pytest.approx(init[2])


def test_recording_stops_at_the_first_non_finite_loss(cifar_batch):
    # Un-normalized He init at 110 layers: the logits are ~1e7 at init and the first update breaks it.
    model = tiny_resnet(depth=110, init="kaiming")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = record_training(model, cifar_batch, optimizer, steps=5, progress=False)
    assert len(run.records) < 6
    assert first_nonfinite_step(run.losses) == len(run.records) - 1
    assert divergence_step(run.losses) is not None


def test_divergence_step_rules():
    assert divergence_step([2.0, 1.5, 1.0]) is None
    assert divergence_step([2.0, 3.0, 4.5]) == 2
    assert divergence_step([2.0, float("nan")]) == 1
    assert divergence_step([float("inf"), 1.0]) == 0
    assert json_safe({"a": [float("nan"), float("inf"), 1.0]}) == {"a": ["nan", "inf", 1.0]}


def test_layer_recorder_reports_nan_for_layers_that_did_not_run():
    model = tiny_resnet(depth=20)
    with LayerRecorder(residual_layers(model)) as recorder:
        assert all(math.isnan(v) for v in recorder.activation_rms())
        assert recorder.gradient_norms() == [0.0] * 9


def test_plot_is_written(cifar_batch, tmp_path):
    pytest.importorskip("matplotlib")
    model = tiny_resnet(depth=20)
    run = record_training(model, cifar_batch, None, steps=0, progress=False)
    path = plot_run(run, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        require_pyplot()


def test_diagnose_script_reports_missing_data_as_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "diagnose.py"), "transformer", "--data-dir", str(tmp_path / "nope"),
         "--output-dir", str(tmp_path / "out"), "--no-plot"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert str(tmp_path / "nope") in done.stderr
    sizes = subprocess.run(
        [sys.executable, str(repo / "scripts" / "diagnose.py"), "resnet", "--depth", "21",
         "--output-dir", str(tmp_path / "out"), "--no-plot"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert sizes.returncode == 2 and sizes.stderr.startswith("error: ") and "Traceback" not in sizes.stderr
