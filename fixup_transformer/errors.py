"""The project's own error types and how the scripts report them: one clear line, a meaningful exit code.

A traceback is for bugs. A bad config value, a corrupt corpus, a busy run directory or a diverged run are
the user's (or the data's) problem, and the message alone must say what to fix. The scripts therefore
catch exactly these types (never a bare ``Exception``, which would hide real bugs) through
:func:`run_script`:

- exit code 2, usage / input errors: :class:`ConfigError` (and its
  :class:`ResumeMismatchError`), :class:`CorpusError`, :class:`RunLockedError`, :class:`ModelDirError`,
  :class:`ImageDataError`, :class:`InputError`;
- exit code 1, the run itself failed: :class:`NonFiniteLossError`, :class:`CheckpointError`, or its upload
  did: :class:`HubPushError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE_EXIT_CODE = 2
FAILURE_EXIT_CODE = 1


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


class CorpusError(ValueError):
    """A corpus file is missing, empty, undecodable or misaligned with its counterpart."""


class NonFiniteLossError(FloatingPointError):
    """The loss, gradient norm or weights became NaN/inf; the message names the update and the last good
    checkpoint (the newest one whose weights are finite). Also importable from ``training.mt``."""


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock (two runs must never share an output_dir)."""


class CheckpointError(RuntimeError):
    """A training checkpoint cannot be used; the message names it and says why."""


class ResumeMismatchError(ConfigError):
    """Resuming with settings that cannot change mid-run (model shape, data, tokenizer); lists them all."""


class HubPushError(RuntimeError):
    """An upload to the Hub failed after the run saved everything; the message gives the command to retry."""


class ModelDirError(ValueError):
    """A model directory is missing or lacks a file it needs (config, weights, tokenizer)."""


class InputError(ValueError):
    """Text to translate cannot be read, an output cannot be written where asked, or a decoding option is
    out of range (the translation and evaluation commands)."""


class ImageDataError(ValueError):
    """An image dataset has a shape, channel count or labels the trainer cannot use; names the file."""


def one_line(err: Exception) -> str:
    """An error's message in one line (transformers', safetensors' and PyYAML's span several)."""
    return " ".join(str(err).split())


def yaml_problem(err: Exception) -> str:
    """PyYAML's error in one line: the problem and where (its own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


USAGE_ERRORS = (ConfigError, CorpusError, RunLockedError, ModelDirError, ImageDataError, InputError)


FAILURE_ERRORS = (NonFiniteLossError, CheckpointError, HubPushError)


def run_script(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; turn the project's own errors into one ``error: ...`` line on stderr.

    Returns ``main``'s int result (0 when it returns something else), 2 for usage errors, 1 for failures.
    """
    try:
        result = main(argv)
    except USAGE_ERRORS as err:
        prefix = "config error" if isinstance(err, ConfigError) else "error"
        print(f"{prefix}: {err}", file=sys.stderr)
        return USAGE_EXIT_CODE
    except FAILURE_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return FAILURE_EXIT_CODE
    return result if isinstance(result, int) else 0
