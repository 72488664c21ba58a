"""Resuming with a changed config: refuse what cannot change, apply (and report) what can.

A checkpoint stores the config that produced it (``training_config.yaml``). On resume the new config is
compared with it key by key (dotted keys, values as YAML round-trips them, so ``(0.9, 0.98)`` equals
``[0.9, 0.98]``). Keys matching ``fixed`` patterns (model shape, data, tokenizer, seed: anything the saved
weights, optimizer state or batch position depend on) must be equal, and all differences are reported in
one :class:`~fixup_transformer.errors.ResumeMismatchError`. The other differences are returned
so the caller can apply and log them (a new lr schedule, a longer budget, other eval settings).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ResumeMismatchError
from .config import dump_yaml

Change = tuple[str, Any, Any]  # (dotted key, value in the checkpoint, value now)


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``: one level of sections, as the config dataclasses
    nest; deeper mappings are field values (``data.split_files``) and compare whole."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[Change]:
    """Keys whose value differs; keys only one side knows (older/newer code versions) are ignored."""
    old, new = flatten(saved), flatten(current)
    return [(key, old[key], new[key]) for key in new if key in old and old[key] != new[key]]


def is_fixed(key: str, fixed: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in fixed)


RUN_LOCATION_KEYS = ("output_dir", "resume", "checkpoint.resume")


def format_changes(changes: list[Change]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)


def changes_line(checkpoint: str, changes: list[Change], complete_hint: str | None = None) -> str:
    """The console line for settings changed since ``checkpoint``: applied, or, for a run that is already
    complete (``complete_hint`` says how to train on), not applied."""
    if complete_hint is None:
        return f"settings changed since {checkpoint}, applied: {format_changes(changes)}"
    return (
        f"settings changed since {checkpoint}, not applied (the run is complete; {complete_hint}): "
        f"{format_changes(changes)}"
    )


def check_resume_config(
    saved_yaml_file: str | Path, cfg: Any, fixed: Iterable[str], allowed: Iterable[str] = ()
) -> list[Change]:
    """Compare ``cfg`` with the config saved in a checkpoint; return the changes that may be applied.

    ``fixed`` and ``allowed`` are ``fnmatch`` patterns of dotted keys (``model.*``); ``allowed`` carves
    exceptions out of ``fixed``. Raises ResumeMismatchError listing every fixed key that changed. A
    checkpoint without a saved config (written by an older version) gives no changes.
    """
    path = Path(saved_yaml_file)
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    current = yaml.safe_load(dump_yaml(cfg))
    # Where the run and its checkpoint are found is how this resume came about, not a setting of the run.
    changes = [c for c in config_changes(saved, current) if c[0] not in RUN_LOCATION_KEYS]
    fixed, allowed = tuple(fixed), tuple(allowed)
    refused = [c for c in changes if is_fixed(c[0], fixed) and not is_fixed(c[0], allowed)]
    if refused:
        raise ResumeMismatchError(
            f"cannot resume {path.parent} with these settings, which cannot change during a run (model "
            f"shape, data, tokenizer, seed): {format_changes(refused)}. Set them back, or use a new output_dir"
        )
    return changes
