"""Where files are: the repository root, the shared data folder, config paths with ``${VAR}``, and the name
of the resolved training config saved beside a model's weights.

Used by the training loops, the evaluation and the benchmarks alike, so it depends on nothing of theirs
(only on the config error type, which makes a bad path an exit-code-2 usage error).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]

# Written into every checkpoint and export by training, read back by evaluation and resume.
TRAINING_CONFIG_FILE = "training_config.yaml"

_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def shared_data_dir() -> Path:
    """``$FIXUP_DATA_DIR`` if set, else ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("FIXUP_DATA_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def resolve_path(path: str) -> Path:
    """Expand ``${VAR}``/``${VAR:-default}`` and ``~``; try the repository root for missing relative paths."""

    def expand(match: re.Match) -> str:
        value = os.environ.get(match.group(1))
        if value:
            return value
        if match.group(2) is not None:
            return match.group(2)
        raise ConfigError(f"path {path!r} uses ${{{match.group(1)}}}, which is not set")

    resolved = Path(os.path.expanduser(_VAR.sub(expand, path)))
    if not resolved.is_absolute() and not resolved.exists() and (REPO_ROOT / resolved).exists():
        return REPO_ROOT / resolved
    return resolved
