"""End-to-end MT training on a slice of real Multi30k: exact resume, failure handling, exports, DDP.

Runs use ``configs/tiny_test.yaml`` (300 training pairs, a 1+1-layer d=32 model, 8 updates), so each
takes seconds; the data comes from the ``shared_data_dir`` fixture and the tests skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from process_helpers import OFFLINE_ENV, run_process_group, two_cpu_processes
from safetensors.torch import load_file
from transformer_helpers import poison_training_loss

from fixup_transformer.data import CorpusConfig, load_parallel
from fixup_transformer.training import mt
from fixup_transformer.training.checkpoint import list_checkpoints
from fixup_transformer.training.config import load_config
from fixup_transformer.training.metrics import read_metrics
from fixup_transformer.training.mt_config import MTConfig
from fixup_transformer.training.schedules import schedule_multiplier

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"


def tiny_config(multi30k: Path, output_dir: Path, **overrides) -> MTConfig:
    values = {"data.data_dir": str(multi30k), "output_dir": str(output_dir)}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(MTConfig, TINY, values)


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", "train")}


@pytest.mark.slow
def test_exact_resume_exports_and_test_scores(multi30k, tmp_path, capsys):
    full = tmp_path / "full"
    summary = mt.train(tiny_config(multi30k, full, checkpoint__average_last=2))
    reference = train_losses(full)
    assert sorted(reference) == list(range(1, 9))
    # Where the minutes went: every phase the loop ran is timed, and together they stay within the budget.
    spent = summary["time_breakdown"]
    assert {"data", "steps", "checkpoints", "exports", "validation"} <= set(spent)
    assert all(seconds >= 0 for seconds in spent.values())
    assert sum(spent.values()) <= summary["train_seconds"] + 60  # + the end-of-run exports

    # Stopped cleanly at 4 (budget), then resumed with the full budget.
    stopped = tmp_path / "stopped"
    mt.train(tiny_config(multi30k, stopped, train__max_updates=4, eval__test_split="none"))
    mt.train(tiny_config(multi30k, stopped, checkpoint__average_last=2))
    assert train_losses(stopped) == reference  # bit-identical: same batches, dropout masks, optimizer state

    # Killed during update 7 (after checkpoint-4 was written), then resumed automatically.
    killed = tmp_path / "killed"
    real_step = mt.train_step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    mt.train_step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            mt.train(tiny_config(multi30k, killed))
    finally:
        mt.train_step = real_step
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["checkpoint-4"]
    assert max(train_losses(killed)) == 6  # records 5 and 6 were written, and are dropped on resume
    mt.train(tiny_config(multi30k, killed))
    assert train_losses(killed) == reference

    # Exports load through the Auto classes; averaging is the mean of the last two checkpoints.
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import fixup_transformer  # noqa: F401

    for name in ("best", "last", "averaged"):
        model = AutoModelForSeq2SeqLM.from_pretrained(full / name)
        assert type(model).__name__ == "FixupTransformerForConditionalGeneration"
        assert AutoTokenizer.from_pretrained(full / name).eos_token_id == 1
        assert (full / name / "training_config.yaml").exists()
    averaged = load_file(str(full / "averaged" / "model.safetensors"))
    ckpts = [load_file(str(full / "checkpoints" / f"checkpoint-{s}" / "model.safetensors")) for s in (4, 8)]
    name = "model.encoder.layers.0.self_attn.qkv_proj.weight"
    name = (
        name
        if name in averaged
        else next(k for k in averaged if k.endswith("weight") and averaged[k].ndim == 2)
    )
    torch.testing.assert_close(averaged[name], (ckpts[0][name] + ckpts[1][name]) / 2)

    out = capsys.readouterr().out
    assert "sacreBLEU = " in out and "|tok:13a|smooth:exp|version:" in out and "chrF2 = " in out
    results = json.loads((full / "results.json").read_text())
    assert results == summary and results["test_model"] in ("best", "averaged")  # auto: chosen on validation
    assert results["test"]["bleu"]["signature"].startswith("nrefs:1|case:mixed")
    assert len((full / f"test.{results['test_model']}.hyp.en").read_text().splitlines()) == 20

    # scripts/evaluate_mt.py on the exported model: data and languages from its training_config.yaml.
    hyp_file = tmp_path / "hyp.txt"
    evaluate_main = load_script("evaluate_mt").main
    argv = ["--model", str(full / "best"), "--limit", "12", "--beam", "2", "--batch-tokens", "60", "--cpu"]
    assert evaluate_main([*argv, "--output", str(hyp_file), "--tokenized-bleu"]) == 0
    out = capsys.readouterr().out
    assert (
        "multi30k de-en test (" in out
        and "): 12 sentences" in out
        and "sacreBLEU = " in out
        and "tokenized BLEU (lowercased" in out
    )
    from fixup_transformer.evaluation import GenerationSettings, translate_corpus

    model = AutoModelForSeq2SeqLM.from_pretrained(full / "best")
    tokenizer = AutoTokenizer.from_pretrained(full / "best")
    test_pairs = load_parallel(CorpusConfig("multi30k", "de", "en", data_dir=multi30k), "test")[:12]
    expected = translate_corpus(
        model,
        tokenizer,
        [s for s, _ in test_pairs],
        GenerationSettings(num_beams=2, batch_tokens=60, max_len_a=1.0, max_len_b=5),  # a, b: training config
        show_progress=False,
    )
    assert hyp_file.read_text().splitlines() == expected


def test_a_log_window_cut_by_a_checkpoint_logs_the_same_after_resume(multi30k, tmp_path):
    # Records every 3 updates, checkpoints every 4: the record at 6 covers updates 4-6 in both runs.
    def records(run_dir):
        return {
            r["step"]: (r["loss"], r["target_tokens"])
            for r in read_metrics(run_dir / "metrics.jsonl", "train")
        }

    common = dict(train__log_interval=3, eval__test_split="none", checkpoint__average_last=0)
    mt.train(tiny_config(multi30k, tmp_path / "full", **common))
    stopped = tmp_path / "stopped"
    mt.train(tiny_config(multi30k, stopped, train__max_updates=4, **common))
    mt.train(tiny_config(multi30k, stopped, **common))
    assert records(stopped) == records(tmp_path / "full") and sorted(records(stopped)) == [3, 6]


def test_resuming_an_older_checkpoint_sets_the_newer_timeline_aside(multi30k, tmp_path, capsys):
    # A newer checkpoint and a best/ export from updates the resumed run does not continue must not win the
    # next auto-resume, push this run's checkpoints out of rotation, join its average or pass for its best.
    from fixup_transformer.training.checkpoint import export_step

    run = tmp_path / "run"
    common = dict(eval__valid_interval_updates=2, eval__test_split="none", checkpoint__average_last=0)
    mt.train(tiny_config(multi30k, run, **common))
    (run / "results.json").unlink()
    best_before = export_step(run / "best")
    resume = str(run / "checkpoints" / "checkpoint-4")
    summary = mt.train(
        tiny_config(multi30k, run, checkpoint__resume=resume, train__max_updates=6, optim__lr=1e-3, **common)
    )
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["abandoned-checkpoint-8", "checkpoint-4", "checkpoint-6"], names
    if best_before is not None and best_before > 4:  # set aside: the best model is judged anew after update 4
        assert export_step(run / "best") == summary["best_step"] == 6
    elif (run / "best").exists():
        assert export_step(run / "best") == summary["best_step"] <= 6
    if best_before is not None and best_before > 4:
        assert export_step(run / f"best.abandoned-step-{best_before}") == best_before
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "checkpoint-6"


def test_an_epoch_end_is_validated_before_its_checkpoint_and_labelled_with_its_epoch(
    multi30k, tmp_path, capsys
):
    # fairseq labels the end-of-epoch validation with the epoch that ended; the checkpoint of the epoch's
    # last update is written after that validation, so a resume from it does not validate (and log) again.
    out = tmp_path / "run"
    overrides = dict(
        train__max_updates=None,
        train__max_epochs=1,
        eval__valid_every_epoch=True,
        eval__valid_interval_updates=0,
        eval__test_split="none",
        checkpoint__save_interval_updates=1,
        checkpoint__keep_last=2,
        checkpoint__average_last=0,
    )
    mt.train(tiny_config(multi30k, out, **overrides))
    assert "stopped (max_epochs) at update" in capsys.readouterr().out
    records = read_metrics(out / "metrics.jsonl")
    valid = [r for r in records if r["kind"] == "valid"]
    last_update = max(r["step"] for r in records if r["kind"] == "train")
    assert [(r["step"], r["epoch"]) for r in valid] == [(last_update, 1)]
    state = json.loads((list_checkpoints(out / "checkpoints")[-1] / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batches_done"]) == (last_update, 1, 0)
    assert state["last_valid_step"] == last_update
    assert json.loads((out / "last" / "export_info.json").read_text())["budget"]["epochs"] == 1


def test_a_best_metric_changed_on_resume_judges_the_best_model_anew(multi30k, tmp_path, capsys):
    out = tmp_path / "run"
    common = dict(eval__valid_interval_updates=4, eval__test_split="none", checkpoint__average_last=0)
    mt.train(tiny_config(multi30k, out, eval__best_metric="loss", **common))
    mt.train(tiny_config(multi30k, out, eval__best_metric="bleu", train__max_updates=12, **common))
    assert "best model now chosen on valid_bleu (was valid_loss)" in capsys.readouterr().out
    valid = [r for r in read_metrics(out / "metrics.jsonl", "valid") if r["step"] == 12]
    assert valid[0]["best_metric"] == valid[0]["valid_bleu"]  # a BLEU, not the old run's best loss
    results = json.loads((out / "results.json").read_text())
    assert results["best_step"] == 12


def test_the_best_model_is_the_validation_with_the_lowest_loss(multi30k, tmp_path):
    out = tmp_path / "run"
    common = dict(eval__valid_interval_updates=2, eval__test_split="none", checkpoint__average_last=0)
    mt.train(tiny_config(multi30k, out, eval__best_metric="loss", **common))
    losses = {r["step"]: r["valid_loss"] for r in read_metrics(out / "metrics.jsonl", "valid")}
    assert len(losses) >= 3 and len(set(losses.values())) == len(losses)  # distinct: a wrong pick shows
    best = min(losses, key=losses.get)
    assert json.loads((out / "results.json").read_text())["best_step"] == best
    assert json.loads((out / "best" / "export_info.json").read_text())["step"] == best


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step(multi30k, tmp_path, monkeypatch):
    # one micro-batch per update: update 6 diverges
    poison_training_loss(monkeypatch, lambda loss, n: loss * float("nan") if n >= 6 else loss)
    with pytest.raises(mt.NonFiniteLossError, match=r"non-finite loss \(nan\) at update 6 .*checkpoint-4"):
        mt.train(tiny_config(multi30k, tmp_path / "run", eval__test_split="none"))
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["checkpoint-4"]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["kind"] == "error" and records[-1]["step"] == 6


def test_train_script_rejects_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_mt.py"), "--config", str(bad)],
        capture_output=True,
        text=True,
        env=OFFLINE_ENV,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown config key 'optim.learning_rate'" in proc.stderr and str(bad) in proc.stderr


@pytest.mark.slow
def test_two_process_training_matches_single_process(multi30k, tmp_path):
    """DDP over gloo (2 CPU processes) = one process accumulating the same two batches per update."""
    overrides = ["--model.dropout", "0", "--eval.test_split", "none", "--eval.bleu_sentences", "0"]
    dist = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        *two_cpu_processes(),
        str(Path(__file__).with_name("mt_distributed_worker.py")),
        "--config", str(TINY), "--data.data_dir", str(multi30k), "--output_dir", str(dist), *overrides,
    ]  # fmt: skip
    returncode, stderr = run_process_group(cmd, timeout=300)
    assert returncode == 0, stderr[-3000:]

    rank0, rank1 = (load_file(str(dist / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ in {key}"
    echo = [json.loads((dist / f"echo_rank{r}.json").read_text()) for r in (0, 1)]
    assert echo[0]["world"] == 2 and echo[0]["hyps"] == echo[1]["hyps"] and len(echo[0]["hyps"]) == 40

    single = tmp_path / "single"
    mt.train(
        tiny_config(
            multi30k,
            single,
            model__dropout=0,
            eval__test_split="none",
            eval__bleu_sentences=0,
            train__update_freq=2,
            data__tokenizer_dir=str(dist / "tokenizer"),
        )
    )
    dist_losses, single_losses = train_losses(dist), train_losses(single)
    assert sorted(dist_losses) == sorted(single_losses) == list(range(1, 9))
    for step in dist_losses:
        assert dist_losses[step] == pytest.approx(single_losses[step], rel=1e-5)
    single_weights = load_file(str(single / "last" / "model.safetensors"))
    for key, value in single_weights.items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_loop_counts_a_skipped_step_without_counting_it_as_an_update(multi30k, tmp_path, monkeypatch):
    """The loop's bookkeeping of a step the optimizer skipped (an fp16 overflow, simulated here in fp32 by
    Accelerate's flag): reported, not an update, the schedule does not advance. That the real GradScaler
    skip leaves weights and moments alone is tested in test_training_step.py."""
    from accelerate import Accelerator

    flags = iter([False, False, True] + [False] * 20)  # the 3rd optimizer step overflows
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: next(flags)))
    run = tmp_path / "run"
    mt.train(tiny_config(multi30k, run, eval__test_split="none", checkpoint__save_interval_updates=0))
    records = read_metrics(run / "metrics.jsonl", "train")
    assert [r["step"] for r in records] == list(range(1, 9))  # still 8 real updates
    assert [r["skipped_steps"] for r in records] == [0, 0] + [1] * 6
    state = json.loads((run / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["batches_done"] == 9  # 9 batches for 8 updates
    # The schedule did not advance on the skipped step: update k still ran at multiplier(k - 1).
    cfg = tiny_config(multi30k, run)
    multiplier = schedule_multiplier(cfg.schedule, cfg.optim.lr)
    assert [r["lr"] for r in records] == pytest.approx([cfg.optim.lr * multiplier(k) for k in range(8)])
