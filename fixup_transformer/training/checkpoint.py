"""Checkpoints that survive crashes: atomic writes, exact resume, averaging, HF export.

Atomicity. Everything is first written under a hidden temporary name in the same directory
(``.tmp-<name>``) and then moved into place with ``os.replace``, which is atomic on POSIX file systems.
A crash mid-write therefore leaves either the previous complete checkpoint or a ``.tmp-*`` leftover that
no loader ever looks at (``list_checkpoints`` only accepts ``checkpoint-<step>`` directories that contain
``trainer_state.json``, the last file written before the rename).

Exact resume. ``accelerator.save_state`` stores model, optimizer, LR scheduler, GradScaler and the RNG
states of every process; we add ``trainer_state.json`` with the counters the loop needs (update number,
epoch, batches already consumed in the epoch, skipped fp16 steps, best metric, ...) so that training
restarts at the very next batch with the same dropout masks.

Safety. Weights are read from ``.safetensors`` only (averaging, export). ``accelerator.load_state`` reads
the optimizer/RNG pickles that this same program wrote; never point it at files you did not produce.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..atomic_files import atomic_write_text, fsync_dir, replacing
from ..errors import CheckpointError, ConfigError, ModelDirError, one_line
from ..paths import TRAINING_CONFIG_FILE

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------------------------------
# Atomic file and directory writes


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _tmp_dir_for(final: Path) -> Path:
    return final.parent / f".tmp-{final.name}"


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a fully written directory ``tmp`` to ``final`` atomically, replacing an existing ``final``.

    ``os.replace`` cannot overwrite a non-empty directory, so an existing ``final`` is first renamed to
    ``.old-<name>`` and deleted after the new one is in place. If the process dies in between, ``final``
    is briefly missing but ``.old-<name>`` still holds the previous complete copy (and is restored by
    :func:`recover_dir` on the next run).
    """
    tmp, final = Path(tmp), Path(final)
    old = final.parent / f".old-{final.name}"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: str | os.PathLike) -> None:
    """Undo an interrupted :func:`publish_dir`: bring back ``.old-<name>`` if ``final`` is missing."""
    final = Path(final)
    old = final.parent / f".old-{final.name}"
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding an empty temporary directory that becomes ``final`` on success.

    Single-process only (see :func:`save_training_checkpoint` for the multi-process version). On an
    exception the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_dir_for(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final)


# ----------------------------------------------------------------------------------------------------------
# Training checkpoints (Accelerate state + our JSON counters)


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The update number encoded in a ``checkpoint-<step>`` directory name, else None."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and checkpoint_step(path) is not None and (path / STATE_FILE).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete ``checkpoint-<step>`` directories under ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: checkpoint_step(p))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def newest_sound_checkpoints(checkpoints_dir: str | os.PathLike, count: int) -> list[Path]:
    """The newest ``count`` checkpoints that pass :func:`checkpoint_problem`, oldest first (for averaging):
    only those are verified, newest first, not every kept one."""
    sound: list[Path] = []
    for path in reversed(list_checkpoints(checkpoints_dir)):
        if len(sound) == count:
            break
        if checkpoint_problem(path) is None:
            sound.append(path)
    return sound[::-1]


ABANDONED_PREFIX = "abandoned-"


def set_aside(path: Path, name: str) -> Path:
    """Rename ``path`` to ``name`` beside it (``name.2``, ``name.3``, ... when taken, e.g. set aside by an
    earlier resume too): out of the way, never deleted. Returns the new path."""
    target, n = path.with_name(name), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{name}.{n}")
    os.replace(path, target)
    return target


def set_aside_checkpoints_after(checkpoints_dir: str | os.PathLike, step: int) -> list[Path]:
    """Rename ``checkpoint-<n>`` with ``n > step`` to ``abandoned-checkpoint-<n>``; returns the new paths.

    After resuming from update ``step``, newer checkpoints belong to updates the run does not continue;
    under their own names they would win the next auto-resume, survive rotation in place of the run's own
    checkpoints and join the final average. Main process only.
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    moved = []
    for path in sorted(checkpoints_dir.iterdir(), key=lambda p: checkpoint_step(p) or -1):
        n = checkpoint_step(path)
        if n is not None and n > step and path.is_dir():
            moved.append(set_aside(path, ABANDONED_PREFIX + path.name))
    if moved:
        fsync_dir(checkpoints_dir)
    return moved


def export_step(export_dir: str | os.PathLike) -> int | None:
    """The update an exported model directory (``best/``, ``last/``) was saved at, from its export_info."""
    try:
        info = json.loads((Path(export_dir) / "export_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = info.get("step") if isinstance(info, dict) else None
    return step if isinstance(step, int) else None


def resolve_resume(
    resume: str | None, output_dir: str | os.PathLike, option: str = "--resume"
) -> Path | None:
    """``None``/``""`` -> no resume; ``"auto"`` -> newest complete checkpoint in ``output_dir`` (or none);
    anything else must be a complete checkpoint directory (or a run directory holding some)."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(Path(output_dir) / "checkpoints")
    path = Path(resume)
    if is_complete_checkpoint(path):
        return path
    for candidate in (path, path / "checkpoints"):
        found = latest_checkpoint(candidate)
        if found is not None:
            return found
    raise CheckpointError(
        f"{option} {resume}: not a complete checkpoint directory ({CHECKPOINT_PREFIX}<step> with {STATE_FILE}) "
        "and no such checkpoint below it"
    )


def non_finite_weights(weights_file: str | os.PathLike) -> list[str]:
    """Names of the floating tensors in a ``.safetensors`` file that hold NaN or inf (read lazily)."""
    bad = []
    with safe_open(str(weights_file), framework="pt") as f:
        for name in f.keys():
            tensor = f.get_tensor(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or None when it looks sound.

    Checks what a crash, a full disk or a diverged run can leave behind, without unpickling anything:
    ``trainer_state.json`` parses; the weights parse as safetensors and are all finite; every torch
    archive Accelerate wrote (optimizer, scheduler, RNG states: zip files) is complete and passes its
    CRC checks.
    """
    path = Path(path)
    if not is_complete_checkpoint(path):
        return f"missing {STATE_FILE}"
    try:
        state = read_trainer_state(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"unreadable {STATE_FILE} ({err})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_FILE} has no integer 'step'"
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        return f"missing {WEIGHTS_FILE}"
    try:
        bad = non_finite_weights(weights)
    except (OSError, SafetensorError, RuntimeError) as err:
        return f"unreadable {WEIGHTS_FILE} ({type(err).__name__}: {err})"
    if bad:
        return f"{WEIGHTS_FILE} has non-finite values in {len(bad)} tensors (e.g. {bad[0]})"
    for archive in sorted(path.iterdir()):
        if archive.suffix not in (".bin", ".pkl", ".pt"):
            continue
        try:
            with zipfile.ZipFile(archive) as z:
                broken = z.testzip()
        except (OSError, zipfile.BadZipFile) as err:
            return f"unreadable {archive.name} ({err})"
        if broken is not None:
            return f"{archive.name} is corrupt (bad CRC in {broken})"
    return None


def find_resume_checkpoint(
    resume: str | None, output_dir: str | os.PathLike, log=print, resume_option: str = "resume=auto"
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint to resume from, validated; returns it and the ``(checkpoint, reason)`` pairs skipped.

    No ``resume`` in a folder that already holds checkpoints is refused (:class:`ConfigError` naming
    ``resume_option``): a fresh run there would mix its files with the old run's, and the old run's
    higher-numbered checkpoints would outrank (and get the new ones pruned) at the next save.

    ``resume="auto"`` takes the newest *sound* checkpoint in ``output_dir/checkpoints``: unusable newer
    ones are reported through ``log`` and skipped, never deleted (after resuming, the trainers rename every
    checkpoint newer than the resumed one with :func:`set_aside_checkpoints_after`). An explicitly named
    checkpoint must be sound. Raises
    :class:`CheckpointError` when checkpoints exist but none is usable.
    """
    if isinstance(resume, str) and resume.lower() in ("true", "yes", "on"):
        resume = "auto"  # resume: true in YAML, or a yes-word on the command line
    if isinstance(resume, str) and resume.lower() in ("false", "no", "off"):
        resume = None
    if not resume:
        if latest_checkpoint(Path(output_dir) / "checkpoints") is not None:
            raise ConfigError(
                f"{output_dir} already has checkpoints; resume with {resume_option} or use a new output_dir"
            )
        return None, []
    if resume != "auto":
        path = resolve_resume(resume, output_dir, resume_option.split("=", 1)[0])  # the option's name
        problem = checkpoint_problem(path) if path is not None else None
        if problem is not None:
            raise CheckpointError(f"cannot resume from {path}: {problem}")
        return path, []
    skipped = []
    for path in reversed(list_checkpoints(Path(output_dir) / "checkpoints")):
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                log(f"resuming from {path.name}, the newest usable checkpoint")
            return path, skipped
        log(f"skipping checkpoint {path}: {problem}")
        skipped.append((path, problem))
    if skipped:
        listed = "; ".join(f"{p}: {why}" for p, why in skipped)
        raise CheckpointError(
            f"no usable checkpoint in {Path(output_dir) / 'checkpoints'} ({listed}); move them away to start "
            "over, or resume from another run with checkpoint.resume=PATH"
        )
    return None, []


class _SharedTensorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()  # after Accelerate's "[RANK n] "


@contextlib.contextmanager
def _without_shared_tensor_notice():
    """Accelerate warns at every save that it drops the duplicate names of shared tensors (safetensors stores
    a storage once). Here they are the embeddings the models share by construction, and loading fills them
    again through the kept name (the exact-resume tests compare every weight), so the notice is noise."""
    notice, log = _SharedTensorNotice(), logging.getLogger("accelerate.utils.other")
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def save_training_checkpoint(
    accelerator,
    checkpoints_dir: str | os.PathLike,
    step: int,
    trainer_state: dict[str, Any],
    config_yaml: str | None = None,
    keep_last: int | None = None,
) -> Path:
    """Save the full training state as ``checkpoints_dir/checkpoint-<step>``; call on every process.

    All processes write into the same ``.tmp-checkpoint-<step>`` (Accelerate writes the weights from the
    main process and one RNG file per process); the main process then adds ``trainer_state.json``, renames
    the directory into place and deletes checkpoints beyond the newest ``keep_last``.
    Assumes a file system shared by all processes (the single-node case).
    """
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = _tmp_dir_for(final)
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    with _without_shared_tensor_notice():
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if config_yaml is not None:
            atomic_write_text(tmp / TRAINING_CONFIG_FILE, config_yaml)
        atomic_write_json(tmp / STATE_FILE, {**trainer_state, "step": step})  # last file: marks completeness
        publish_dir(tmp, final)
        if keep_last is not None and keep_last > 0:
            for old in list_checkpoints(checkpoints_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json`` (our counters), read without loading any weights."""
    return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))


def load_training_checkpoint(accelerator, path: str | os.PathLike) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/scaler/RNG through Accelerate; return our ``trainer_state``."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (missing {STATE_FILE})")
    try:
        accelerator.load_state(str(path))
        return read_trainer_state(path)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # Accelerate/torch errors (size mismatches, truncated pickles) never say which checkpoint it was.
        raise CheckpointError(
            f"cannot restore checkpoint {path}: {type(err).__name__}: {one_line(err)}"
        ) from err


# ----------------------------------------------------------------------------------------------------------
# Checkpoint averaging (fairseq scripts/average_checkpoints.py)


def average_state_dicts(paths: Sequence[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights stored in ``.safetensors`` files (or checkpoint dirs).

    Like fairseq, floating tensors are summed in float64 and cast back to their dtype; integer tensors
    (e.g. counters, which Fixup models do not have) must agree and are taken from the first file.
    Only safetensors are read, so untrusted checkpoints cannot execute code.
    """
    if not paths:
        raise ValueError("average_state_dicts needs at least one checkpoint")
    files = [Path(p) / WEIGHTS_FILE if Path(p).is_dir() else Path(p) for p in paths]
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for file in files:
        if file.suffix != ".safetensors":
            raise ValueError(f"refusing to average {file}: only .safetensors files are read")
        state = load_file(str(file))
        if total and set(state) != set(total):
            missing = sorted(set(total) ^ set(state))[:5]
            raise ValueError(f"{file} has different parameter names than {files[0]} (e.g. {missing})")
        for name, tensor in state.items():
            if name not in total:
                dtypes[name] = tensor.dtype
                total[name] = tensor.double() if tensor.is_floating_point() else tensor.clone()
            elif tensor.is_floating_point():
                total[name] += tensor.double()
            elif not torch.equal(total[name], tensor):
                raise ValueError(f"integer tensor {name!r} differs between checkpoints; cannot average")
    n = len(files)
    return {name: (t / n).to(dtypes[name]) if t.is_floating_point() else t for name, t in total.items()}


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Atomic safetensors write (contiguous copies, no shared storage, as safetensors requires)."""
    with replacing(path) as tmp:
        save_file(
            {k: v.detach().contiguous().clone() for k, v in state.items()}, tmp, metadata={"format": "pt"}
        )


def load_averaged_weights(model: torch.nn.Module, paths: Sequence[str | os.PathLike]) -> None:
    """Load the average of ``paths`` into ``model``.

    safetensors files store a tied weight once (Accelerate drops the duplicate names), so a name missing
    from the files is accepted only if its tensor shares storage with one that was loaded.
    """
    averaged = average_state_dicts(paths)
    missing, unexpected = model.load_state_dict(averaged, strict=False)
    params = dict(model.state_dict(keep_vars=True))
    loaded_ptrs = {params[k].data_ptr() for k in averaged if k in params}
    missing = [k for k in missing if params[k].data_ptr() not in loaded_ptrs]
    if missing or unexpected:
        raise ValueError(
            f"averaged weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


# ----------------------------------------------------------------------------------------------------------
# Hugging Face export


def check_replaceable_export(output_dir: str | os.PathLike) -> None:
    """Refuse (:class:`ModelDirError`) to replace a non-empty folder that is not a model export: replacing
    is for an earlier export; any other folder (data, checkpoints) would be lost. Trainers call it on every
    process before an export, so a refusal stops them all."""
    output_dir = Path(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / "config.json").is_file():
        raise ModelDirError(
            f"{output_dir} exists and is not a model export (no config.json): refusing to replace it; "
            "name a new or empty folder"
        )


def export_pretrained(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    config_yaml: str | None = None,
    extra_json: dict[str, Any] | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer + resolved training config, published atomically.

    Call on the main process only, with an unwrapped model (``accelerator.unwrap_model``). The result
    loads with ``AutoModel*.from_pretrained(output_dir)`` / ``AutoTokenizer.from_pretrained(output_dir)``.
    ``extra_json`` (e.g. the step and validation scores) is written to ``export_info.json``.
    ``finalize(tmp_dir)`` runs last, before publishing, so that what it adds (model code, a model card:
    :mod:`fixup_transformer.training.hub_export`) appears together with the weights or not at all.
    """
    output_dir = Path(output_dir)
    recover_dir(output_dir)
    check_replaceable_export(output_dir)
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if config_yaml is not None:
            (tmp / TRAINING_CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        if extra_json is not None:
            (tmp / "export_info.json").write_text(json.dumps(extra_json, indent=2, sort_keys=True) + "\n")
        if finalize is not None:
            finalize(tmp)
    return output_dir
