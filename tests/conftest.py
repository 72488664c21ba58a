"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fixup_transformer import paths


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real-data folder: ``$FIXUP_DATA_DIR`` if set, else ``<repo>/../shared/data``; skip if absent."""
    env = os.environ.get("FIXUP_DATA_DIR")
    path = paths.shared_data_dir()
    if not path.is_dir():
        source = "$FIXUP_DATA_DIR" if env else "default location (set FIXUP_DATA_DIR to override)"
        pytest.skip(f"shared data not found at {path} ({source})")
    return path


@pytest.fixture(scope="session")
def multi30k(shared_data_dir) -> Path:
    """The Multi30k de-en folder of the real data; skip if it is not there."""
    path = shared_data_dir / "multi30k"
    if not (path / "train.de.gz").exists():
        pytest.skip(f"Multi30k not found in {path}")
    return path


@pytest.fixture
def single_thread():
    """Run a test on one torch thread.

    The ResNet tests use nets that are tiny per layer; on a shared 2-core machine, OpenMP threads spinning
    against other processes made each small conv ~100x slower than one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
