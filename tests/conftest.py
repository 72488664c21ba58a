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


def _dataset(shared_data_dir: Path, folder: str, files: tuple[str, ...], what: str) -> Path:
    """``shared_data_dir / folder`` if it holds ``files``; else skip, naming the folder and how to provide it.

    A partial data folder (one holding only some datasets, like ``local_data/gpu``) skips the tests of the
    absent ones instead of failing them.
    """
    path = shared_data_dir / folder
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        found = (
            f"{path} lacks {', '.join(missing)}"
            if path.is_dir()
            else f"no {folder}/ folder in {shared_data_dir}"
        )
        pytest.skip(
            f"{what} not found: {found} (link or copy the {folder}/ folder of the shared data, described in its "
            f"README.md, into {shared_data_dir}, or set FIXUP_DATA_DIR to a data folder that holds {folder}/)"
        )
    return path


@pytest.fixture(scope="session")
def multi30k(shared_data_dir) -> Path:
    """The Multi30k de-en folder of the real data (all three splits); skip if it is not there."""
    files = tuple(
        f"{split}.{lang}.gz" for split in ("train", "val", "test_2016_flickr") for lang in ("de", "en")
    )
    return _dataset(shared_data_dir, "multi30k", files, "Multi30k")


@pytest.fixture(scope="session")
def cifar10(shared_data_dir) -> Path:
    """The CIFAR-10 folder of the real data (training subset and shared test set); skip if it is not there."""
    return _dataset(shared_data_dir, "cifar10", ("train_subset.npz", "test_shared.npz"), "CIFAR-10")


@pytest.fixture(scope="session")
def iwslt14(shared_data_dir) -> Path:
    """The IWSLT14 de-en folder of the real data (validation only); skip if it is not there."""
    return _dataset(shared_data_dir, "iwslt14", ("valid.tok.lc.de", "valid.tok.lc.en"), "IWSLT14")


@pytest.fixture(scope="session")
def wmt(shared_data_dir) -> Path:
    """The WMT en-de folder of the real data (newstest2013); skip if it is not there."""
    return _dataset(shared_data_dir, "wmt", ("newstest2013.de", "newstest2013.en"), "WMT newstest2013")


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
