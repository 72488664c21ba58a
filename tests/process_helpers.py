"""Running a process group (``accelerate launch`` and its workers) from a test (not collected)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_process_group(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own session; on timeout kill the whole group (launcher *and* its workers)."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"{cmd[:6]} timed out after {timeout}s:\n{stderr[-3000:]}")
    return proc.returncode, stderr


def train_image(args: list[str], launcher: Sequence[str] = (sys.executable,)) -> subprocess.CompletedProcess:
    """``scripts/train_image.py`` with ``args`` under ``launcher``, offline and on one thread, output captured."""
    return subprocess.run(
        [*launcher, str(REPO / "scripts" / "train_image.py"), *args],
        capture_output=True,
        text=True,
        env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"},
        timeout=300,
        cwd=REPO,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_cpu_processes() -> list[str]:
    """``accelerate launch`` arguments for two gloo processes on this machine (the script adds ``cpu``)."""
    return [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
    ]  # fmt: skip
