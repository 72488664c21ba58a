"""The benchmark scripts' own rules that decide whether a reported number is fair (no benchmark is run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "override",
    [
        "optim.name=radam",
        "train.update_freq=2",
        "data.test_limit=5",
        "eval.test_model=auto",
        "train.max_updates=9",
    ],
)
def test_time_to_bleu_refuses_overrides_that_would_reach_one_system_only(override, capsys):
    time_to_bleu = load("time_to_bleu")
    with pytest.raises(SystemExit):  # also when the job runs alone: side-by-side runs are compared later
        time_to_bleu.parse_args(["--systems", "fixup", "--set", override])
    assert "would no longer share the recipe" in capsys.readouterr().err
    args = time_to_bleu.parse_args(["--set", "optim.lr=2e-3", "--set", "model.init=t_fixup"])
    assert time_to_bleu.recipe_overrides(args) == {"optim.lr": "2e-3", "model.init": "t_fixup"}


def test_time_to_bleu_summarizes_only_systems_that_keep_a_run_folder(capsys):
    time_to_bleu = load("time_to_bleu")
    with pytest.raises(SystemExit):
        time_to_bleu.parse_args(["--summarize-only", "--systems", "fixup", "marian"])
    assert "the Marian twin keeps no run folder" in capsys.readouterr().err
    assert time_to_bleu.parse_args(["--summarize-only", "--systems", "fixup", "layernorm"]).summarize_only


def test_stability_cells_are_reused_only_under_the_same_setup(tmp_path):
    stability = load("stability")
    cell = {"task": "copy", "variant": "fixup", "layers": 1, "lr": 1e-3, "warmup": 0, "precision": "fp32"}
    cell |= {"optimizer": "adam", "clip_norm": 0.0}
    old_format = tmp_path / "results.json"  # a header for the whole file, no setup per cell
    old_format.write_text(
        json.dumps({"width": {"d_model": 512, "heads": 8, "ffn_dim": 2048}, "steps": 30, "cells": [cell]})
    )
    (loaded,) = stability.load_results(old_format)
    assert loaded["setup"] == {"d_model": 512, "heads": 8, "ffn_dim": 2048, "steps": 30}
    same = {**cell, "setup": {"d_model": 512, "heads": 8, "ffn_dim": 2048, "steps": 30, "batch_size": 16}}
    assert stability.same_cell(loaded, same)
    assert not stability.same_cell(loaded, {**same, "setup": {**same["setup"], "steps": 2}})
    assert not stability.same_cell(loaded, {**same, "lr": 5e-4})


def test_dropout_speed_switches_only_the_dropout_and_restores_the_models(tmp_path):
    dropout_speed = load("dropout_speed")
    from fixup_transformer.text import modeling_fixup_transformer
    from fixup_transformer.text.dropout import dropout

    output = tmp_path / "dropout.json"
    argv = ["--models", "multi30k_job", "--repeats", "1", "--steps", "1", "--calls", "1", "--threads", "1"]
    assert dropout_speed.main([*argv, "--output", str(output)]) == 0
    results = json.loads(output.read_text())["results"]
    assert [r["shape"] for r in results["alone"]] == [[2048, 256], [1920, 512], [1920, 2048]]
    assert [r["model"] for r in results["training_step"]] == ["multi30k_job"]
    assert modeling_fixup_transformer.dropout is dropout  # the model's own dropout again afterwards
    with pytest.raises(SystemExit):
        dropout_speed.main(["--repeats", "0"])


def test_operator_counts_split_each_step_into_its_phases(tmp_path):
    op_counts = load("op_counts")
    from fixup_transformer.text import dropout

    byte_masks = dropout._byte_masks_apply
    output = tmp_path / "counts.json"
    report = op_counts.main(["--variants", "fixup", "marian", "--output", str(output)])
    assert json.loads(output.read_text())["models"].keys() == {"fixup", "marian"}
    for counted in report["models"].values():
        phases = ("forward", "backward", "optimizer")
        assert counted["total"] == sum(counted[phase]["operators"] for phase in phases)
        assert sum(counted["backward"]["by_autograd_node"].values()) == counted["backward"]["operators"]
        assert not set(counted["forward"]["by_operator"]) & op_counts.NO_KERNEL
    # One fused AdamW kernel per dtype group (a Python loop over parameters would count hundreds).
    assert report["models"]["marian"]["optimizer"]["by_operator"].get("_fused_adamw_", 0) >= 1
    assert dropout._byte_masks_apply is byte_masks  # the CUDA dropout path was only borrowed
