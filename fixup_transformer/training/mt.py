"""The machine-translation training loop (fairseq recipe, Accelerate mechanics).

Pipeline: load corpus -> clean train -> train (or reuse) a joint SentencePiece tokenizer -> encode ->
token batches -> train, validating (loss + BLEU on a capped slice) and checkpointing as it goes; at the
end: optional checkpoint averaging, export of the ``best``/``last`` HF model directories, and the test
set scored with sacreBLEU (printed with its signature).

Design choices (and why):

- **Gradient accumulation by hand** (``train.update_freq``), with ``accelerator.no_sync`` on all but the
  last micro-batch. Accelerate's ``gradient_accumulation_steps`` divides every micro-batch loss by a fixed
  count and decides when to step by counting batches; fairseq instead divides the summed loss by the
  number of target tokens of the *whole* update on *all* processes, and an epoch's last update may have
  fewer batches. We reproduce fairseq, so the Accelerator is built with ``gradient_accumulation_steps=1``.
- **Batches come straight from the data layer's** :class:`~fixup_transformer.data.TokenBatchSampler`,
  which shards by rank itself and can skip the batches already consumed in an epoch. The loader is not
  passed through ``accelerator.prepare`` (that would shard it a second time), and no ``DataLoader``
  iterator is created, because creating one draws from the global torch RNG and would shift the dropout
  masks after a resume.
- **Exact resume**: Accelerate saves model, optimizer, scheduler, GradScaler and every process's RNG;
  ``trainer_state.json`` adds epoch / batches consumed / counters (see ``checkpoint.py``).
- **fp16**: an update whose gradients overflow is skipped by the GradScaler; like fairseq it does not count
  as an update (the LR schedule does not advance) and is reported as ``skipped_steps``.
- **Non-finite loss or gradient norm** (the same on every rank: the loss is reduced over processes, the
  norm is taken of the all-reduced gradients): the update is not applied, decided on the device by the
  fused optimizer (``step_guard.py``), and neither is any later one; at the next log interval, validation
  or checkpoint the run stops with :class:`NonFiniteLossError` naming that update (in fp16 an overflow is
  the GradScaler's skip, above). Checkpoints are written only from finite weights, and the error names
  the newest checkpoint whose weights are finite.
- **No host reads in the hot path**: a step's loss sums and gradient norm stay on the device and are read
  once per log interval, so a GPU is never waited for between steps; with several processes the time
  budget is agreed on at log intervals too. Every run records where its time went (``time_breakdown``:
  data, steps, validation, checkpoints, exports) in its train records and ``results.json``.
- **Rerunning the same command is safe**: one run per ``output_dir`` (``runlock.py``); a run whose budget
  is spent and whose ``results.json`` is written does nothing; one killed after training only redoes the
  end-of-run steps. Resume skips unusable checkpoints (saying which) and compares the config with the
  checkpoint's (``resume.py``): model shape, data and tokenizer cannot change, the rest is applied and
  logged. The tokenizer in ``<output_dir>/tokenizer`` records the data settings it was built from.
- Losses are in nats per target token; ``ppl = exp(nll_loss)`` (fairseq prints base 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..atomic_files import atomic_write_text
from ..data import (
    TokenBatchSampler,
    TranslationCollator,
)
from ..errors import NonFiniteLossError, ResumeMismatchError
from ..evaluation.bleu import corpus_scores, format_scores, scores_to_json
from ..evaluation.translate import position_limit, translate_corpus
from ..hardware import resolve_mixed_precision, skip_per_shape_attention_builds
from ..text import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from .checkpoint import (
    TRAINING_CONFIG_FILE,
    WEIGHTS_FILE,
    atomic_write_json,
    check_replaceable_export,
    checkpoint_problem,
    export_pretrained,
    export_step,
    find_resume_checkpoint,
    list_checkpoints,
    load_averaged_weights,
    load_training_checkpoint,
    newest_sound_checkpoints,
    read_trainer_state,
    save_training_checkpoint,
    set_aside,
    set_aside_checkpoints_after,
)
from .config import ConfigError, dump_yaml, to_dict
from .hub_export import complete_mt_export, push_best_export, record_test_scores
from .metrics import MetricsWriter, available_trackers, tracker_config
from .mt_config import CHANGEABLE_ON_RESUME, FIXED_ON_RESUME, ModelConfig, MTConfig
from .mt_data import MTData, prepare_data
from .mt_step import compiled_forward_loss, forward_loss_sums, train_step
from .mt_validation import best_metric_key, best_metric_value, generation_settings, validate
from .optim import build_optimizer
from .plots import try_write_curves
from .process import check_process_count, keep_alive
from .resume import changes_line, check_resume_config
from .runlock import lock_run_dir
from .schedules import build_scheduler
from .state import TrainerState, epoch_of_last_update, improves, out_of_time
from .step_guard import StepAccumulator
from .wallclock import WallClock


@dataclasses.dataclass
class MTTrainerState(TrainerState):
    """The shared counters plus the MT loop's own (saved as ``trainer_state.json``)."""

    skipped_steps: int = 0  # fp16 updates skipped for gradient overflow
    target_tokens: int = 0  # target tokens trained on, all processes
    best_metric: float | None = None
    best_metric_key: str | None = None  # what best_metric measures (None: a checkpoint from before this)
    best_step: int | None = None
    last_valid_step: int | None = None
    last_valid: dict | None = None  # that validation's result: the model card of an export at that step
    # The log window cut by the checkpoint: StepAccumulator.window_sums() and its seconds so far
    log_window: list[float] = dataclasses.field(default_factory=list)
    log_window_seconds: float = 0.0
    num_processes: int | None = None  # batches_done counts this many processes' shares of each epoch


# ----------------------------------------------------------------------------------------------------------
# Setup


def build_accelerator(cfg: MTConfig) -> Accelerator:
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    out = Path(cfg.output_dir)
    trackers = available_trackers(cfg.train.trackers)
    precision = resolve_mixed_precision(cfg.train.mixed_precision, cpu=cfg.train.cpu)
    accelerator = Accelerator(
        cpu=cfg.train.cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=1,  # accumulation is done by hand, fairseq-style (module docstring)
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False,  # one schedule step per update, however many processes
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.train.ddp_timeout_minutes))],
    )
    check_process_count(accelerator.num_processes, "--train.cpu true")
    if precision == "fp16" and getattr(accelerator, "scaler", None) is None:
        raise ConfigError(
            f"train.mixed_precision: fp16 gets neither autocast nor loss scaling on {accelerator.device.type} "
            "from Accelerate, so the run would silently be fp32; use bf16 (fast on CPUs with AMX), no, or auto"
        )
    if skip_per_shape_attention_builds():  # only where CUDA is present
        accelerator.print(
            "attention: cuDNN's kernel off (it builds a graph per batch shape); flash/efficient used"
        )
    if cfg.train.mixed_precision == "auto":
        accelerator.print(f"train.mixed_precision auto -> {precision} on {accelerator.device}")
    skipped = [name for name in cfg.train.trackers if name not in trackers]
    if skipped:
        accelerator.print(f"train.trackers: {', '.join(skipped)} not installed, skipped (pip install it)")
    return accelerator


def check_lengths_fit_positions(data: MTData, cfg: MTConfig) -> None:
    """Every training pair that batching keeps (at most ``data.max_tokens`` tokens) and every validation
    pair must fit the model's positions; found at start-up, not at the first batch that holds the longest
    pair (``data.max_len`` counts words, positions count pieces)."""
    train = data.train.num_tokens
    kept = train[train <= cfg.data.max_tokens]  # longer pairs are dropped by the batch sampler
    valid = data.valid.num_tokens
    longest_train, longest_valid = int(kept.max(initial=0)), int(valid.max(initial=0))
    positions = cfg.model.max_position_embeddings
    if longest_valid > positions:
        # Validation is never filtered, so its index is the line in the validation files; the first pair
        # too long, so that a valid_limit below it helps.
        line = int((valid > positions).argmax()) + 1
        raise ConfigError(
            f"model.max_position_embeddings={positions} is shorter than validation pair {line} (line {line} of "
            f"the validation files: {int(valid[line - 1])} pieces with </s>; the longest has {longest_valid}); "
            f"raise it, or set data.valid_limit below {line} to score only the pairs before it"
        )
    if longest_train > positions:
        raise ConfigError(
            f"model.max_position_embeddings={positions} is shorter than the longest training pair kept "
            f"({longest_train} pieces with </s>); raise it, or lower data.max_len (now {cfg.data.max_len} words) "
            f"or data.max_tokens (now {cfg.data.max_tokens}) to drop longer training pairs"
        )


def build_model(
    model_cfg: ModelConfig, tokenizer, label_smoothing: float
) -> FixupTransformerForConditionalGeneration:
    config = FixupTransformerConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        label_smoothing=label_smoothing,
        **to_dict(model_cfg),
    )
    return FixupTransformerForConditionalGeneration(config)


def set_decoding_defaults(model: FixupTransformerForConditionalGeneration, eval_cfg) -> None:
    """What a plain ``model.generate(**batch)`` of the exports does: the run's beam and length penalty, and a
    length cap that the positions allow (transformers' default stops every translation at 20 tokens). The
    loop's own decoding passes its settings explicitly and is not affected."""
    generation = model.generation_config
    generation.max_length = position_limit(model)
    if eval_cfg.beam > 1:  # transformers refuses to save beam-only settings for greedy decoding
        generation.num_beams = eval_cfg.beam
        generation.length_penalty = eval_cfg.lenpen
        generation.early_stopping = True


# ----------------------------------------------------------------------------------------------------------
# The loop


class MTTrainer:
    """Holds the run's objects; :meth:`fit` trains, :meth:`finish` averages/exports/tests."""

    def __init__(self, cfg: MTConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.accelerator = build_accelerator(cfg)
        self.lock = lock_run_dir(self.out, self.accelerator, log=self.accelerator.print)  # before any write
        try:
            self._setup()
        except BaseException:
            self.close()  # the lock must not outlive a failed start (a caller may retry in this process)
            raise

    def _setup(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        self.config_yaml = dump_yaml(cfg)
        resume, changes = self._find_resume()  # before any weights load: clear errors, not size mismatches
        set_seed(cfg.seed)  # identical init on every process
        self.data = prepare_data(cfg, accelerator, resuming=resume is not None)
        check_lengths_fit_positions(self.data, cfg)
        tokenizer = self.data.tokenizer
        self.ids = (tokenizer.pad_token_id, tokenizer.eos_token_id)  # pad, decoder start (= eos)
        model = build_model(cfg.model, tokenizer, cfg.train.label_smoothing)
        set_decoding_defaults(model, cfg.eval)
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr, cfg.train.max_updates)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.forward_loss = compiled_forward_loss() if cfg.train.compile else forward_loss_sums
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", enabled=accelerator.is_main_process)
        self.state = MTTrainerState()
        self._saved_step: int | None = None  # update of the checkpoint this process saved or resumed last
        self.completed: dict | None = None  # results.json, when this is a rerun of a finished run
        if resume is not None:
            self._resume(resume, changes)
            self.completed = self.completed_summary()
            self._announce_changes(resume, changes)
        else:
            self.metrics.truncate_after(0)  # records of an earlier attempt that saved no checkpoint
        self.clock = WallClock(self.state.time_breakdown)
        try:
            self.sampler = TokenBatchSampler(
                self.data.train.src_lengths,
                self.data.train.tgt_lengths,
                max_tokens=cfg.data.max_tokens,
                max_sentences=cfg.data.max_sentences,
                seed=cfg.seed,
                num_replicas=accelerator.num_processes,
                rank=accelerator.process_index,
                oversized="drop",
            )
        except ValueError as err:
            raise ConfigError(
                f"no training batches with data.max_tokens={cfg.data.max_tokens} "
                f"(every pair has more tokens?): {err}"
            ) from None
        if accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.completed is None:  # config.yaml holds the settings the run's results were made with
                atomic_write_text(self.out / "config.yaml", self.config_yaml)
            n_params = sum(p.numel() for p in accelerator.unwrap_model(self.model).parameters())
            accelerator.print(
                f"model: {n_params / 1e6:.2f}M parameters, normalization={cfg.model.normalization}, "
                f"init={cfg.model.init}; {len(self.data.train)} training pairs, "
                f"{self.sampler.batches_per_rank} batches/epoch/process x {accelerator.num_processes} processes"
                + (
                    f" ({self.sampler.num_dropped} pairs over max_tokens dropped)"
                    if self.sampler.num_dropped
                    else ""
                )
            )
        accelerator.init_trackers("mt", config=tracker_config(to_dict(cfg)))

    # -- start-up: lock, resume -------------------------------------------------------------------------

    def _find_resume(self) -> tuple[Path | None, list]:
        """The (validated) checkpoint to resume from, and the config changes since it that may apply."""
        cfg = self.cfg
        resume, _ = find_resume_checkpoint(
            cfg.checkpoint.resume,
            self.out,
            log=self.accelerator.print,
            resume_option="checkpoint.resume=auto",
        )
        if resume is None:
            return None, []
        saved = MTTrainerState.from_dict(read_trainer_state(resume))
        running = self.accelerator.num_processes
        if saved.num_processes is not None and saved.num_processes != running:
            # The batch position is per process: another count would repeat or skip batches of the epoch.
            raise ResumeMismatchError(
                f"{resume} was saved by {saved.num_processes} process(es), this run has {running}: resume "
                f"with {saved.num_processes} (accelerate launch --num_processes {saved.num_processes}) or "
                "start a new output_dir"
            )
        changes = check_resume_config(
            resume / TRAINING_CONFIG_FILE, cfg, FIXED_ON_RESUME, CHANGEABLE_ON_RESUME
        )
        return resume, changes

    def _resume(self, path: Path, changes: list) -> None:
        # The optimizer's hyper-parameters and the scheduler's base lrs are part of the checkpoint; keep the
        # new config's, so that a changed lr or schedule really applies.
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.state = MTTrainerState.from_dict(load_training_checkpoint(self.accelerator, path))
        self._saved_step = self.state.step
        self.metrics.truncate_after(self.state.step, drop_at_step=("resume",))  # this resume writes its own
        best_step = export_step(self.out / "best")  # read by every process before the main one moves it
        stale_best = (self.out / "best").is_dir() and best_step != self.state.best_step
        # A process still reading after the move would keep the stale best metric and skip the next best
        # export, whose barrier the others then wait at forever.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._set_aside_the_abandoned_timeline(path, best_step if stale_best else None)
        self.accelerator.wait_for_everyone()
        if stale_best:  # the resumed run's own best export is gone: its next validation is the best so far
            self.state.best_metric = self.state.best_step = self.state.best_metric_key = None
        self.accelerator.print(
            f"resumed from {path} (update {self.state.step}, epoch {self.state.epoch + 1})"
        )
        if any(
            key.startswith(("optim.", "schedule.")) or key == "train.max_updates" for key, _, _ in changes
        ):
            self._apply_optim_settings(fresh_groups)

    def _announce_changes(self, path: Path, changes: list) -> None:
        """Say which settings changed since the resumed checkpoint, and whether they take effect: a run
        that is already complete trains, validates and tests nothing more, so only its upload is redone."""
        if self.completed is not None:
            ignored = [change for change in changes if change[0] != "train.push_to_hub"]
            if ignored:
                hint = (
                    "raise train.max_updates/max_minutes/max_epochs to train on, or score its best/ export "
                    "with fixup-evaluate-mt"
                )
                self.accelerator.print(changes_line(path.name, ignored, hint))
            return
        if not changes:
            return
        self.accelerator.print(changes_line(path.name, changes))
        self.metrics.write(
            {
                "kind": "resume",
                "step": self.state.step,
                "checkpoint": str(path),
                "changed": {key: [old, new] for key, old, new in changes},
                "lr": self.optimizer.param_groups[0]["lr"],
            }
        )

    def _set_aside_the_abandoned_timeline(self, path: Path, stale_best_step: int | None) -> None:
        """Checkpoints and a ``best/`` export newer than the resumed state came from updates this run does
        not continue (it resumed from an older or explicitly named checkpoint, or past an unusable newer
        one): renamed out of the way, never deleted, so they neither outrank this run's checkpoints (auto-
        resume, rotation, averaging) nor pass for its best model."""
        step, log = self.state.step, self.accelerator.print
        for moved in set_aside_checkpoints_after(self.out / "checkpoints", step):
            log(f"{moved.name}: a newer checkpoint than the resumed {path.name}, set aside (not this run's)")
        if stale_best_step is not None:
            aside = set_aside(self.out / "best", f"best.abandoned-step-{stale_best_step}")
            log(
                f"best/ (update {stale_best_step}) is not the resumed run's best (update "
                f"{self.state.best_step}): moved to {aside.name}; the best model is judged anew from here"
            )

    def _apply_optim_settings(self, fresh_groups: list[dict]) -> None:
        """Put the new config's optimizer settings and lr schedule in place of the checkpoint's."""
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)  # unwrap AcceleratedScheduler
        step = scheduler.last_epoch  # schedule steps taken = updates applied
        for group, fresh, multiplier in zip(
            self.optimizer.param_groups, fresh_groups, scheduler.lr_lambdas, strict=True
        ):
            group.update(fresh)
            group["lr"] = fresh["initial_lr"] * multiplier(step)
        scheduler.base_lrs = [g["initial_lr"] for g in fresh_groups]
        scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def close(self) -> None:
        """Release the output_dir lock (idempotent; process exit releases it too)."""
        self.lock.release()

    def completed_summary(self) -> dict | None:
        """``results.json`` when this run is already finished (budget spent, results of this update)."""
        if self.state.step == 0 or self._spent_before_training() is None:
            return None
        try:
            summary = json.loads((self.out / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return summary if summary.get("step") == self.state.step else None

    # -- helpers ---------------------------------------------------------------------------------------

    def _spent_before_training(self) -> str | None:
        """The budget already spent by the resumed state, if any (so a rerun trains no extra update)."""
        t = self.cfg.train
        if t.max_epochs is not None and self.state.epoch >= t.max_epochs:
            return "max_epochs"
        return self._budget_exhausted()

    def _budget_exhausted(self, agree: bool = True) -> str | None:
        """Why training must stop now, or None. Clocks differ between processes, so with several the time
        budget is decided together (a reduce, i.e. a host read) and only when ``agree`` (log boundaries)."""
        t = self.cfg.train
        if t.max_updates is not None and self.state.step >= t.max_updates:
            return "max_updates"  # the same on every process
        return "max_minutes" if out_of_time(self.accelerator, self.state, t.max_minutes, agree) else None

    @contextlib.contextmanager
    def _outside_throughput(self):
        """Time that the logged tokens/s must not count (validation, checkpoints, exports)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._window_paused += time.monotonic() - start

    def _save(self) -> None:
        with self.clock.section("checkpoints"), self._outside_throughput():
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        self._check_finite_weights()
        self.state.log_window = self.steps.window_sums()
        self.state.log_window_seconds = time.monotonic() - self._window_start - self._window_paused
        self.state.num_processes = self.accelerator.num_processes
        self.accelerator.wait_for_everyone()
        save_training_checkpoint(
            self.accelerator,
            self.out / "checkpoints",
            self.state.step,
            dataclasses.asdict(self.state),
            config_yaml=self.config_yaml,
            keep_last=self.cfg.checkpoint.keep_last or None,
        )
        self._saved_step = self.state.step

    def _export(self, name: str, extra: dict) -> None:
        with self.clock.section("exports"):
            self._export_pretrained(name, extra)

    def _export_pretrained(self, name: str, extra: dict) -> None:
        check_replaceable_export(self.out / name)  # every process: a refusal must not hang the others
        if self.accelerator.is_main_process:
            export_pretrained(
                self.accelerator.unwrap_model(self.model),
                self.out / name,
                tokenizer=self.data.tokenizer,
                config_yaml=self.config_yaml,
                extra_json={"step": self.state.step, **extra},
                finalize=self._hub_files(name),
            )
        self.accelerator.wait_for_everyone()

    def _hub_files(self, name: str):
        """Hook for ``export_pretrained``: model code, budget and model card (``hub_export``)."""
        model = self.accelerator.unwrap_model(self.model)
        state = dataclasses.asdict(self.state)
        example = self.data.valid_pairs[0][0] if self.data.valid_pairs else None
        # Scores of exactly these weights, or none; kept in the state, so that an export redone after a
        # resume (a kill during the last one) has them too.
        valid = self.state.last_valid if self.state.last_valid_step == self.state.step else None
        return lambda tmp: complete_mt_export(tmp, name, model, state, example, valid)

    def _validate(self, bar=None) -> dict:
        with self.clock.section("validation"), self._outside_throughput():
            return self._validate_and_export(bar)

    def _validate_and_export(self, bar=None) -> dict:
        result = validate(self.model, self.accelerator, self.data, self.cfg, self.ids)
        self.state.last_valid_step, self.state.last_valid = self.state.step, result
        key = best_metric_key(self.cfg, result)
        if self.state.best_metric_key not in (None, key):  # e.g. eval.best_metric changed on resume
            self.accelerator.print(
                f"best model now chosen on {key} (was {self.state.best_metric_key}): judged anew from here"
            )
            self.state.best_metric = None
        value, higher = best_metric_value(self.cfg, result)
        improved = improves(value, self.state.best_metric, higher)
        if improved:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.best_metric_key = key
            self._export("best", result)
        record = {"kind": "valid", "step": self.state.step, "epoch": self._epoch(), **result}
        record["best_metric"] = self.state.best_metric
        self.metrics.write(record)
        self.accelerator.log({k: v for k, v in result.items() if isinstance(v, float)}, step=self.state.step)
        text = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
        if self.accelerator.is_main_process:  # tqdm's write prints on every process
            (bar.write if bar is not None else print)(
                f"update {self.state.step}: {text}{' (best)' if improved else ''}"
            )
        return result

    # -- training --------------------------------------------------------------------------------------

    def fit(self) -> str:
        """Train until a budget runs out; returns the reason ('max_updates', 'max_epochs', 'max_minutes')."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        collate = TranslationCollator()
        dataset = self.data.train
        segment_start = time.monotonic()
        prior_seconds, prior_tokens = state.train_seconds, state.target_tokens
        self.steps = StepAccumulator(acc.device)
        self.steps.restore_window(state.log_window)
        # A window cut by a checkpoint also resumes its clock, so the first tokens/s after a resume is a rate.
        self._window_start, self._window_paused = time.monotonic() - state.log_window_seconds, 0.0
        bar = tqdm(
            total=cfg.train.max_updates,
            initial=state.step,
            desc="training",
            unit="upd",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        stop = self._spent_before_training()  # a rerun of a finished budget trains no extra update
        if stop is not None:
            acc.print(f"budget ({stop}) already spent at update {state.step}: finishing the end-of-run steps")
        self.model.train()
        while stop is None:
            if cfg.train.max_epochs is not None and state.epoch >= cfg.train.max_epochs:
                stop = "max_epochs"
                break
            self.sampler.set_epoch(state.epoch, start_batch=state.batches_done)
            batches = iter(self.sampler)
            while stop is None:
                with self.clock.section("data"):
                    group = list(islice(batches, cfg.train.update_freq))
                    micro = [collate([dataset[i] for i in ids]) for ids in group]
                if not group:
                    break
                with self.clock.section("steps"):
                    outcome = train_step(
                        self.model,
                        self.optimizer,
                        acc,
                        micro,
                        cfg,
                        self.ids,
                        self.steps.halted,
                        self.forward_loss,
                    )
                    self.steps.add(outcome.sums, outcome.grad_norm, outcome.not_finite, state.step + 1)
                state.batches_done += len(group)
                lr = self.optimizer.param_groups[0]["lr"]
                if outcome.skipped:
                    state.skipped_steps += 1
                else:
                    state.step += 1
                    self.scheduler.step()
                    bar.update(1)
                state.train_seconds = prior_seconds + time.monotonic() - segment_start
                due = self._due(outcome.skipped)
                if due or outcome.grad_norm is None:  # fp16's non-finite loss is already known on the host
                    window = self._read_steps(prior_tokens)
                    if "log" in due:
                        self._log_train(window, lr, bar)
                if "valid" in due:
                    self._validate(bar)
                    # The validation's minutes count: for the budget check and in the checkpoint's clock.
                    elapsed = prior_seconds + time.monotonic() - segment_start
                    state.train_seconds = max(state.train_seconds, elapsed)
                stop = self._budget_exhausted(agree="log" in due)
                epoch_done = state.batches_done >= self.sampler.batches_per_rank
                if stop is None and epoch_done:  # before the save: the checkpoint then holds the epoch's end
                    self._end_epoch(bar, prior_tokens)
                if stop is None and "save" in due:
                    self._save()
                if epoch_done:
                    break
            if stop is None and state.batches_done >= self.sampler.batches_per_rank:
                self._end_epoch(bar, prior_tokens)  # resumed from a checkpoint at an epoch's last update
        bar.close()
        self._read_steps(prior_tokens)
        # At least the clock all processes agreed to stop on (out_of_time), so a rerun finds it spent.
        state.train_seconds = max(state.train_seconds, prior_seconds + time.monotonic() - segment_start)
        acc.print(
            f"stopped ({stop}) at update {state.step}, epoch {self._epoch()}, "
            f"{state.train_seconds / 60:.1f} min, {state.skipped_steps} skipped fp16 steps"
        )
        acc.print(f"time: {self.clock.summary(state.train_seconds)}")
        end_of_run = time.monotonic()
        if state.last_valid_step != state.step:
            self._validate()
        if self._saved_step != state.step:  # not the newest file on disk: it may be a corrupt one skipped
            self._save()
        self._export("last", {"stop_reason": stop})
        # The budget clock stops before these; the wall-clock cost of training includes them.
        self.training_wall_seconds = state.train_seconds + time.monotonic() - end_of_run
        return stop

    def _end_epoch(self, bar, prior_tokens: int) -> None:
        state = self.state
        state.epoch += 1
        state.batches_done = 0
        if self.cfg.eval.valid_every_epoch and state.last_valid_step != state.step:
            self._read_steps(prior_tokens)
            self._validate(bar)

    def _epoch(self) -> int:
        return epoch_of_last_update(self.state.epoch, self.state.batches_done)

    def _due(self, skipped: bool) -> set[str]:
        """What this update is due for: 'log', 'valid', 'save' (an fp16-skipped step is due for nothing)."""
        cfg, step = self.cfg, self.state.step
        if skipped:
            return set()
        every = {
            "log": cfg.train.log_interval,
            "valid": cfg.eval.valid_interval_updates,
            "save": cfg.checkpoint.save_interval_updates,
        }
        return {name for name, n in every.items() if n and step % n == 0}

    def _read_steps(self, prior_tokens: int):
        """Read the device-side step sums (one host read); stop the run if a step was not finite."""
        with self.clock.section("steps"):  # on a GPU, this is where the host waits for the queued steps
            window = self.steps.read()
        if window.first_bad is not None:
            self._non_finite(*window.first_bad)
        self.state.target_tokens = prior_tokens + int(window.total_tokens)
        return window

    def _log_train(self, window, lr: float, bar) -> None:
        seconds = max(time.monotonic() - self._window_start - self._window_paused, 1e-9)
        ntok = max(window.tokens, 1)
        record = {
            "kind": "train",
            "step": self.state.step,
            "epoch": self._epoch(),
            "loss": window.loss / ntok,
            "nll_loss": window.nll / ntok,
            "ppl": math.exp(min(window.nll / ntok, 50.0)),
            "lr": lr,
            "grad_norm": window.grad_norm,
            "target_tokens": int(window.tokens),
            "tokens_per_second": window.tokens / seconds,
            "skipped_steps": self.state.skipped_steps,
            "train_seconds": self.state.train_seconds,
            "time_breakdown": self.clock.rounded(),
        }
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            record["loss_scale"] = float(scaler.get_scale())
        self.metrics.write(record)
        scalars = {k: v for k, v in record.items() if k not in ("kind", "step", "time_breakdown")}
        scalars.update({f"time/{k}": v for k, v in record["time_breakdown"].items()})
        self.accelerator.log(scalars, step=self.state.step)
        bar.set_postfix(
            loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_second']:.0f}"
        )
        self.steps.reset_window()
        self._window_start, self._window_paused = time.monotonic(), 0.0

    def _last_good_checkpoint(self) -> Path | None:
        """The newest checkpoint that can be resumed from (finite weights, complete files)."""
        for path in reversed(list_checkpoints(self.out / "checkpoints")):
            if checkpoint_problem(path) is None:
                return path
        return None

    def _non_finite(self, update: int, loss: float, grad_norm: float) -> None:
        what = f"non-finite loss ({loss})"
        if math.isfinite(loss):
            what = f"non-finite gradient norm ({grad_norm}; loss {loss:.4g})"
        self._fail(f"{what} at update {update} (epoch {self._epoch()})", update)

    def _check_finite_weights(self) -> None:
        """Never write a checkpoint nobody can resume from (a NaN can slip past the loss/norm checks)."""
        model = self.accelerator.unwrap_model(self.model)
        bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            self._fail(
                f"non-finite weights after update {self.state.step} ({len(bad)} tensors, e.g. {bad[0]})",
                self.state.step,
            )

    def _fail(self, what: str, step: int) -> None:
        last = self._last_good_checkpoint()
        message = (
            f"{what}; the update was not applied and nothing was saved. Last good checkpoint: "
            f"{last if last is not None else 'none'}. Lower optim.lr, add warmup or use fp32/bf16."
        )
        self.metrics.write({"kind": "error", "step": step, "message": message})
        self.accelerator.end_training()
        raise NonFiniteLossError(message)

    # -- end of training -------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Average checkpoints (optional), pick the test model, score the test set; returns the summary."""
        cfg, acc = self.cfg, self.accelerator
        model = acc.unwrap_model(self.model)
        summary: dict[str, Any] = {
            "step": self.state.step,
            "train_seconds": round(self.state.train_seconds, 1),  # the budget clock (max_minutes)
            # ... plus the end-of-training validation, checkpoint and export (not the test decoding):
            "training_wall_seconds": round(
                getattr(self, "training_wall_seconds", self.state.train_seconds), 1
            ),
            "time_breakdown": self.clock.rounded(),
            "best_step": self.state.best_step,
            "best_valid_metric": self.state.best_metric,
        }
        averaged_better = False
        if cfg.checkpoint.average_last > 1:
            paths = newest_sound_checkpoints(self.out / "checkpoints", cfg.checkpoint.average_last)
            acc.print(f"averaging {len(paths)} checkpoints: {', '.join(p.name for p in paths)}")
            load_averaged_weights(model, paths)
            result = validate(self.model, acc, self.data, cfg, self.ids)
            acc.print(
                "averaged: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
            )
            summary["averaged_valid"] = result
            self._export("averaged", {"averaged": [p.name for p in paths], **result})
            value, higher = best_metric_value(cfg, result)
            averaged_better = improves(value, self.state.best_metric, higher)
        test_model = cfg.eval.test_model
        if test_model == "auto":  # chosen on validation, never on test
            test_model = "averaged" if averaged_better else "best"
        if test_model == "best" and not (self.out / "best" / WEIGHTS_FILE).exists():
            test_model = "last"
        if test_model in ("best", "last"):
            load_averaged_weights(model, [self.out / test_model / WEIGHTS_FILE])
        summary["test_model"] = test_model
        if self.data.test_pairs:
            pairs = self.data.test_pairs
            hyps = translate_corpus(
                model,
                self.data.tokenizer,
                [s for s, _ in pairs],
                generation_settings(cfg, cfg.eval.beam),
                accelerator=acc,
                desc="test",
            )
            scores = corpus_scores(
                hyps,
                [t for _, t in pairs],
                with_tokenized_bleu=cfg.eval.tokenized_bleu,
                target_lang=cfg.data.tgt_lang,
                with_compound_split_bleu=cfg.eval.compound_split_bleu,
            )
            summary["test"] = scores_to_json(scores)
            if acc.is_main_process:
                split = cfg.eval.test_split
                atomic_write_text(
                    self.out / f"{split}.{test_model}.hyp.{cfg.data.tgt_lang}", "\n".join(hyps) + "\n"
                )
                acc.print(f"{split} ({len(pairs)} sentences, {test_model} model, beam {cfg.eval.beam}):")
                acc.print(format_scores(scores))
                if (self.out / test_model / "README.md").is_file():  # the card shows the test scores
                    record_test_scores(
                        self.out / test_model, split, len(pairs), summary["test"], cfg.eval.beam
                    )
        if acc.is_main_process:  # results.json last: its presence marks the run complete
            try_write_curves(self.out, log=acc.print)
            atomic_write_json(self.out / "results.json", summary)
        acc.end_training()
        self.push_if_asked(summary)
        return summary

    def push_if_asked(self, summary: dict) -> None:
        """Upload ``best/`` when ``train.push_to_hub`` asks and this run has not yet; done after everything
        is saved (a failed upload loses nothing) and recorded in results.json (a rerun retries only this)."""
        repo = self.cfg.train.push_to_hub
        if not repo or not self.accelerator.is_main_process or summary.get("pushed_to") == repo:
            return
        url = push_best_export(self.out, repo)
        self.accelerator.print(f"pushed to the Hub: {url}")
        summary["pushed_to"] = repo
        atomic_write_json(self.out / "results.json", summary)


def train(cfg: MTConfig) -> dict:
    """Run the whole pipeline for ``cfg``; returns the summary also written to ``results.json``."""
    trainer = MTTrainer(cfg)
    try:
        done = trainer.completed
        if done is not None:
            trainer.accelerator.print(
                f"{trainer.out} is already complete (update {done['step']}); nothing to do. "
                f"Results: {trainer.out / 'results.json'}"
            )
            trainer.accelerator.end_training()
            trainer.push_if_asked(done)  # a run killed (or offline) before its upload
            return done
        trainer.fit()
        return trainer.finish()
    finally:
        trainer.close()
        keep_alive(trainer)  # multi-process: freed only by exit_process (gloo teardown deadlock, process.py)
