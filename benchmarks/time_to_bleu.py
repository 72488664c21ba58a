"""Time to quality: this project's Multi30k main job against an HF MarianMTModel twin, same minutes.

Each system trains for ``--minutes`` of wall-clock training time on the same machine and is scored on
Multi30k test2016 with sacreBLEU (beam and length penalty of the config):

* ``fixup``: the README's main job, ``scripts/train_mt.py --config configs/multi30k_de_en.yaml``, as a
  user runs it (validation, checkpoints, exports and all come out of its budget), except that it is tested
  at its last update (``--eval.test_model last``), as the twin is.
* ``layernorm``: the same job with its LayerNorm twin config (post-LN, transformers' N(0, 0.02) init).
* ``marian``: transformers' ``MarianMTModel`` (post-LN, biased linears, its N(0, 0.02) init) at the same
  size and layout (one shared embedding, the output projection untied as the job's), trained by a minimal loop with the same recipe: the same SentencePiece settings, the same
  token batches (this project's ``TokenBatchSampler``), AdamW (0.9, 0.98), the same lr, warmup, label
  smoothing, dropout and weight decay; no validation, scored at its last update. The baseline a user
  would otherwise write.

Reported per system: updates, epochs, target tokens per second end to end (over the training budget plus
the job's end-of-training validation, checkpoint and export; test decoding excluded) and in steps alone, where the time went, and test sacreBLEU / chrF2 with signatures. Results go to
``<output-dir>/<system>.json`` as each system ends, so systems can also run as separate invocations (for
example side by side with ``--threads 1``); ``--report-only`` prints the table from what is there, and
``--summarize-only`` redoes a job system's summary from its finished run folder without training it again.

One run's test score depends on where the clock happens to stop (two runs of the main job, identical
up to update 3000, ended 47 updates apart and 1.0 BLEU apart; docs/benchmarks.md). ``--late-stops K`` therefore also scores, for each system,
the weights at its last K stopping points (every ``checkpoint.save_interval_updates`` updates, and the last
update) and reports their mean and spread. Like the headline score, these are raw weights, never the
job's choice of the best or averaged model on validation, so every system is scored the same way. The job keeps
``checkpoint.keep_last`` checkpoints, so K is at most that.

    python benchmarks/time_to_bleu.py --minutes 30 --output-dir runs/time_to_bleu
    python benchmarks/time_to_bleu.py --minutes 1 --test-limit 50 --output-dir /tmp/ttb   # smoke run
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixup_transformer.atomic_files import atomic_write_text  # noqa: E402
from fixup_transformer.data import TokenBatchSampler, TranslationCollator  # noqa: E402
from fixup_transformer.evaluation.bleu import corpus_scores, scores_to_json  # noqa: E402
from fixup_transformer.evaluation.translate import translate_corpus  # noqa: E402
from fixup_transformer.hardware import (  # noqa: E402
    resolve_mixed_precision,
    skip_per_shape_attention_builds,
    sum_dtype,
)
from fixup_transformer.text.modeling_fixup_transformer import IGNORE_INDEX  # noqa: E402
from fixup_transformer.text.output_loss import label_smoothed_loss_sums  # noqa: E402
from fixup_transformer.training import mt_data, mt_step, mt_validation  # noqa: E402
from fixup_transformer.training.checkpoint import (  # noqa: E402
    WEIGHTS_FILE,
    atomic_write_json,
    list_checkpoints,
    load_averaged_weights,
    read_trainer_state,
)
from fixup_transformer.training.config import load_config  # noqa: E402
from fixup_transformer.training.metrics import read_metrics  # noqa: E402
from fixup_transformer.training.mt_config import MTConfig  # noqa: E402
from fixup_transformer.training.schedules import build_scheduler  # noqa: E402
from fixup_transformer.training.wallclock import WallClock  # noqa: E402

CONFIGS = {"fixup": "multi30k_de_en.yaml", "layernorm": "multi30k_de_en_layernorm.yaml"}
SYSTEMS = ("fixup", "layernorm", "marian")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per system")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--output-dir", type=Path, default=Path("runs/time_to_bleu"))
    p.add_argument("--threads", type=int, default=None, help="torch threads per system (default: all)")
    p.add_argument("--max-updates", type=int, default=None, help="also stop after N updates (probes)")
    p.add_argument(
        "--test-limit", type=int, default=None, help="score only the first N test sentences (smoke runs)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the recipe of every system alike, e.g. --set optim.lr=2e-3 (repeatable)",
    )
    p.add_argument(
        "--late-stops",
        type=int,
        default=0,
        metavar="K",
        help="also score the weights at each system's last K stopping points (mean and spread; 0: off)",
    )
    p.add_argument("--report-only", action="store_true", help="train nothing; print the table")
    p.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing; summarize (and with --late-stops score) the finished runs of the job systems in "
        "--output-dir, e.g. after the summary itself failed (wall_seconds is then unknown)",
    )
    args = p.parse_args(argv)
    if args.summarize_only and "marian" in args.systems:
        p.error("--summarize-only: the Marian twin keeps no run folder; it can only be trained again")
    for item in args.overrides:
        if "=" not in item:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
    if args.late_stops < 0:
        p.error("--late-stops must be >= 0")
    # Refused in every invocation: systems run separately (side by side) are compared later all the same.
    for patterns, why in (
        (NOT_IN_THE_TWIN, "the Marian twin's loop does not implement these"),
        (SET_BY_THIS_SCRIPT, "set for every system by this script's own options"),
    ):
        refused = [
            key for key in recipe_overrides(args) if any(fnmatch.fnmatch(key, pat) for pat in patterns)
        ]
        if refused:
            p.error(f"--set {', '.join(refused)}: {why}; the systems would no longer share the recipe")
    return args


# Recipe keys the Marian twin's minimal loop does not implement (one AdamW, one batch per update, the job's
# mixed precision, Marian's own relu/scaled-embedding settings): --set of one would change the job alone.
NOT_IN_THE_TWIN = (
    "optim.name",
    "optim.decay_*",
    "train.update_freq",
    "train.mixed_precision",
    "train.max_epochs",
    "model.activation_function",
    "model.scale_embedding",
)
# Keys this script sets for every system from --minutes, --max-updates, --test-limit and --threads (and the
# last-update test of both): a --set of one would reach the job and not the twin.
SET_BY_THIS_SCRIPT = (
    "train.max_minutes",
    "train.max_updates",
    "train.num_threads",
    "data.test_limit",
    "eval.test_model",
    "output_dir",
)


def recipe_overrides(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.overrides)


# ----------------------------------------------------------------------------------------------------------
# This project's job, run as a user runs it


def run_job(system: str, args: argparse.Namespace) -> dict:
    out = args.output_dir / system
    command = [
        sys.executable,
        str(REPO / "scripts" / "train_mt.py"),
        "--config",
        str(REPO / "configs" / CONFIGS[system]),
        "--output_dir",
        str(out),
        "--train.max_minutes",
        str(args.minutes),
    ]
    if args.threads is not None:
        command += ["--train.num_threads", str(args.threads)]
    if args.test_limit is not None:
        command += ["--data.test_limit", str(args.test_limit)]
    if args.max_updates is not None:
        command += ["--train.max_updates", str(args.max_updates)]
    # The twin is tested at its last update; so is the job (its own default picks the best or averaged
    # checkpoint on validation, which the twin's loop never gets).
    command += ["--eval.test_model", "last"]
    for key, value in recipe_overrides(args).items():
        command += [f"--{key}", value]
    start = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO)
    return summarize_job(system, args, wall_seconds=time.monotonic() - start)


def summarize_job(system: str, args: argparse.Namespace, wall_seconds: float | None) -> dict:
    """The summary of a job's finished run in ``<output-dir>/<system>`` (with ``--late-stops``, its last
    checkpoints scored on test). ``wall_seconds``: the whole command's, when this process ran it."""
    out = args.output_dir / system
    results = json.loads((out / "results.json").read_text())
    checkpoints = list_checkpoints(out / "checkpoints")
    state = read_trainer_state(checkpoints[-1])
    cfg = load_config(MTConfig, out / "config.yaml")
    cfg.output_dir = str(out)  # as seen from here: its tokenizer is reused
    data = mt_data.prepare_data(cfg, _accelerator(), resuming=True)
    batches_per_epoch = _sampler(cfg, data).batches_per_rank
    late = _job_late_scores(cfg, data, out, checkpoints[-args.late_stops :]) if args.late_stops else None
    return summarize(
        system,
        updates=results["step"],
        epochs=state["epoch"] + state["batches_done"] / batches_per_epoch,
        target_tokens=state["target_tokens"],
        train_seconds=results.get("training_wall_seconds", state["train_seconds"]),
        time_breakdown=results["time_breakdown"],
        test=results["test"],
        wall_seconds=wall_seconds,
        note=f"test model: {results.get('test_model')}",
        valid_loss=_last_valid_loss(out),
        train_curve=[[r["step"], r["loss"]] for r in read_metrics(out / "metrics.jsonl", "train")],
        late_stops=late,
    )


def _job_late_scores(cfg: MTConfig, data, out: Path, checkpoints: list[Path]) -> list[dict]:
    """Test scores of the job's weights at each of ``checkpoints`` (its last stopping points)."""
    from fixup_transformer.text import FixupTransformerForConditionalGeneration

    model = FixupTransformerForConditionalGeneration.from_pretrained(out / "last").to(_accelerator().device)
    stops = [
        (_checkpoint_update(path), lambda m, path=path: load_averaged_weights(m, [path / WEIGHTS_FILE]))
        for path in checkpoints
    ]
    return late_test_scores(model, data, cfg, stops)


def _checkpoint_update(path: Path) -> int:
    return read_trainer_state(path)["step"]


def late_test_scores(model, data, cfg: MTConfig, stops: list[tuple[int, Callable]]) -> list[dict]:
    """For each ``(update, load)``: ``load(model)``, then score the test set (the config's beam)."""
    pairs = data.test_pairs
    settings = mt_validation.generation_settings(cfg, cfg.eval.beam)
    scores = []
    for update, load in stops:
        load(model)
        hyps = translate_corpus(
            model, data.tokenizer, [s for s, _ in pairs], settings, _accelerator(), desc=f"test @{update}"
        )
        result = corpus_scores(hyps, [t for _, t in pairs])
        scores.append({"update": update, "bleu": result["bleu"].score, "chrf": result["chrf"].score})
    return scores


def _last_valid_loss(out: Path) -> float | None:
    records = read_metrics(out / "metrics.jsonl", "valid")
    return records[-1]["valid_loss"] if records else None


@functools.cache
def _accelerator() -> Accelerator:
    """One Accelerator per process (Accelerate's state is a singleton): the GPU if there is one, in bf16
    where the main job's ``mixed_precision: auto`` would pick it (fp16 would need loss scaling)."""
    cfg = load_config(MTConfig, REPO / "configs" / CONFIGS["fixup"])
    cpu = not torch.cuda.is_available()
    bf16 = resolve_mixed_precision(cfg.train.mixed_precision, cpu=cpu) == "bf16"
    skip_per_shape_attention_builds()  # as the main job's loop does (a no-op without CUDA)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")


def _sampler(cfg: MTConfig, data) -> TokenBatchSampler:
    return TokenBatchSampler(
        data.train.src_lengths,
        data.train.tgt_lengths,
        max_tokens=cfg.data.max_tokens,
        max_sentences=cfg.data.max_sentences,
        seed=cfg.seed,
        oversized="drop",
    )


# ----------------------------------------------------------------------------------------------------------
# The Marian twin: a minimal loop with the same recipe


def marian_twin(cfg: MTConfig, tokenizer):
    from transformers import MarianConfig, MarianMTModel

    m = cfg.model
    config = MarianConfig(
        vocab_size=len(tokenizer),
        d_model=m.d_model,
        encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers,
        encoder_attention_heads=m.encoder_attention_heads,
        decoder_attention_heads=m.decoder_attention_heads,
        encoder_ffn_dim=m.encoder_ffn_dim,
        decoder_ffn_dim=m.decoder_ffn_dim,
        dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        activation_dropout=m.activation_dropout,
        activation_function="relu",
        max_position_embeddings=1024,  # sinusoidal: a table, no parameters; room for long test outputs
        scale_embedding=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=None,  # MarianConfig's default (0 = <pad>) would replace a max-length last word
        tie_word_embeddings=m.tie_word_embeddings,
    )
    torch.manual_seed(cfg.seed)
    model = MarianMTModel(config)
    if not m.tie_word_embeddings:
        # The job's model: one embedding for source and target, a separate output projection. Marian's
        # config gates the encoder/decoder sharing on tie_word_embeddings too, so share by hand: the same
        # parameter count as the job's (a tied twin would be one [V, d] matrix smaller).
        model.model.encoder.embed_tokens = model.model.decoder.embed_tokens = model.model.shared
    return model


def marian_loss_sums(label_smoothing: float):
    """(loss sum, nll sum, tokens) of a Marian batch, with the job's label smoothing (torch's convention:
    ``label_smoothing / V`` on every class, as the Fixup model's own loss)."""

    def loss_sums(model, batch, pad_id: int, start_id: int):
        labels = batch["labels"]
        logits = mt_step.teacher_forced(model, batch, pad_id, start_id).logits
        loss, nll = label_smoothed_loss_sums(logits, labels, label_smoothing / logits.size(-1))
        return loss, nll, (labels != IGNORE_INDEX).sum()

    return loss_sums


def run_marian(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.output_dir / "marian"
    overrides = {**recipe_overrides(args), "output_dir": str(out), "data.test_limit": args.test_limit}
    cfg = load_config(MTConfig, REPO / "configs" / CONFIGS["fixup"], overrides)
    accelerator = _accelerator()
    device = accelerator.device
    data = mt_data.prepare_data(cfg, accelerator)
    pad, eos = data.tokenizer.pad_token_id, data.tokenizer.eos_token_id
    model = marian_twin(cfg, data.tokenizer).to(device)
    loss_sums = marian_loss_sums(cfg.train.label_smoothing)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=True
    )
    scheduler = build_scheduler(optimizer, cfg.schedule, o.lr)
    sampler, collate = _sampler(cfg, data), TranslationCollator(pad_id=pad)
    clock, updates, epoch, batches_done = WallClock(), 0, 0, 0
    # Kept on the device and read every 25 updates (the loss curve's interval), as the job reads once per
    # log interval: a host read per update would stall a GPU.
    sums = torch.zeros(
        3, dtype=sum_dtype(device), device=device
    )  # loss, tokens since the last read, all tokens
    curve = []
    # (update, weights) at the updates where the job saves checkpoints, for --late-stops
    snapshots: list[tuple[int, dict]] = []
    start = time.monotonic()

    def out_of_time() -> bool:
        done = args.max_updates is not None and updates >= args.max_updates
        return done or time.monotonic() - start >= 60 * args.minutes

    bar = tqdm(desc="marian", unit="upd")
    model.train()
    while not out_of_time():
        sampler.set_epoch(epoch)
        batches_done = 0
        for group in sampler:
            if out_of_time():
                break
            with clock.section("data"):
                batch = {k: v.to(device) for k, v in collate([data.train[i] for i in group]).items()}
            with clock.section("steps"):
                with accelerator.autocast():
                    loss, _, ntok = loss_sums(model, batch, pad, eos)
                (loss / ntok).backward()
                if o.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                sums += torch.stack([loss.detach(), ntok, ntok]).to(sums.dtype)
                updates, batches_done = updates + 1, batches_done + 1
                if updates % 25 == 0:
                    loss_sum, window_tokens, _ = sums.tolist()
                    curve.append([updates, loss_sum / window_tokens])
                    sums[:2] = 0
            if args.late_stops > 1 and updates % cfg.checkpoint.save_interval_updates == 0:
                snapshots = [*snapshots, (updates, _weights_copy(model))][-args.late_stops :]
            bar.update(1)
        if batches_done == sampler.batches_per_rank:
            epoch, batches_done = epoch + 1, 0
    train_seconds = time.monotonic() - start
    bar.close()
    valid = mt_validation.validation_loss(model, accelerator, data.valid, cfg, (pad, eos), loss_sums)
    pairs = data.test_pairs
    settings = mt_validation.generation_settings(cfg, cfg.eval.beam)
    hyps = translate_corpus(model, data.tokenizer, [s for s, _ in pairs], settings, accelerator, desc="test")
    atomic_write_text(out / f"test.hyp.{cfg.data.tgt_lang}", "\n".join(hyps) + "\n")
    test = corpus_scores(hyps, [t for _, t in pairs])
    late = None
    if args.late_stops:
        # The last update is scored above; the earlier stops are loaded and decoded in turn.
        earlier = [s for s in snapshots if s[0] != updates]
        earlier = earlier[max(0, len(earlier) - (args.late_stops - 1)) :]
        stops = [(update, lambda m, state=state: m.load_state_dict(state)) for update, state in earlier]
        final = {"update": updates, "bleu": test["bleu"].score, "chrf": test["chrf"].score}
        late = [*late_test_scores(model, data, cfg, stops), final]
    return summarize(
        "marian",
        updates=updates,
        epochs=epoch + batches_done / sampler.batches_per_rank,
        target_tokens=int(sums[2]),
        train_seconds=train_seconds,
        time_breakdown=clock.rounded(),
        test=scores_to_json(test),
        wall_seconds=None,
        note="last update, no validation during training",
        valid_loss=valid["valid_loss"],
        train_curve=curve,
        late_stops=late,
    )


def _weights_copy(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------
# Report


def summarize(system: str, **fields) -> dict:
    steps = fields["time_breakdown"].get("steps", 0.0)
    fields["tokens_per_s_end_to_end"] = fields["target_tokens"] / max(fields["train_seconds"], 1e-9)
    fields["tokens_per_s_steps"] = fields["target_tokens"] / max(steps, 1e-9)
    fields["test_bleu"] = fields["test"]["bleu"]["score"]
    late = [s["bleu"] for s in fields.get("late_stops") or []]
    if late:
        fields["late_test_bleu_mean"] = statistics.mean(late)
        fields["late_test_bleu_sd"] = statistics.stdev(late) if len(late) > 1 else 0.0
    return {"system": system, **fields}


def table(results: list[dict]) -> str:
    lines = [
        "| system | updates | epochs | target tok/s (end to end / steps) | time: steps / data / validation / "
        "checkpoints / exports (s) | valid loss (last) | test sacreBLEU | chrF2 |",
        "|" + "---|" * 8,
    ]
    for r in results:
        t = r["time_breakdown"]
        spent = " / ".join(
            f"{t.get(k, 0):.0f}" for k in ("steps", "data", "validation", "checkpoints", "exports")
        )
        lines.append(
            f"| {r['system']} | {r['updates']} | {r['epochs']:.2f} | {r['tokens_per_s_end_to_end']:.0f} / "
            f"{r['tokens_per_s_steps']:.0f} | {spent} | {_fmt(r.get('valid_loss'))} | {r['test_bleu']:.2f} | "
            f"{r['test']['chrf']['score']:.2f} |"
        )
    signature = results[0]["test"]["bleu"]["signature"] if results else ""
    text = "\n".join(lines) + f"\n\nsacreBLEU signature: `{signature}`\n"
    late = [r for r in results if r.get("late_stops")]
    if late:
        text += "\n| system | test sacreBLEU at the last stopping points (update: BLEU) | mean ± sd |\n|---|---|---|\n"
        for r in late:
            each = ", ".join(f"{s['update']}: {s['bleu']:.2f}" for s in r["late_stops"])
            text += f"| {r['system']} | {each} | {r['late_test_bleu_mean']:.2f} ± {r['late_test_bleu_sd']:.2f} |\n"
    return text


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for system in args.systems:
            if args.summarize_only:
                result = summarize_job(system, args, wall_seconds=None)
            else:
                result = run_marian(args) if system == "marian" else run_job(system, args)
            result["minutes"] = args.minutes
            result["threads"] = args.threads
            atomic_write_json(args.output_dir / f"{system}.json", result)
            print(json.dumps({k: v for k, v in result.items() if k != "test"}, indent=1))
    results = [
        json.loads(path.read_text())
        for system in SYSTEMS
        if (path := args.output_dir / f"{system}.json").exists()
    ]
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
