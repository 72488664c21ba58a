"""Ending a (possibly multi-process) run without hanging at interpreter shutdown.

With the gloo backend (CPU multi-process runs), PyTorch can deadlock at exit: destroying the DDP reducer
destroys the process group, whose destructor joins gloo's worker threads *while holding the GIL*, and a
worker that is still releasing the tensors of a finished collective needs the GIL to do so. It happens
rarely, and more often on an oversubscribed CPU (observed here at the end of ``accelerate launch
--multi_gpu --num_processes 2`` runs on 2 cores). All our outputs are written atomically and fsynced
before the end, so a multi-process run ends with ``os._exit`` after flushing, skipping that teardown.
Objects that own the process group (the DDP-wrapped model) must stay referenced until then:
:func:`keep_alive` parks them in a module-level list, so returning from a function does not free them.
"""

from __future__ import annotations

import os
import sys

from ..errors import ConfigError


def is_multi_process() -> bool:
    """True when launched as one of several processes (``torchrun``/``accelerate launch`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_process_count(num_processes: int, cpu_option: str) -> None:
    """Refuse a launch of several processes that Accelerate turned into independent one-process runs.

    Without GPUs and without ``cpu=True``, ``accelerate launch --num_processes N`` starts N processes that
    each set up a single-process run: each would train the whole model alone and they would race for
    the output folder. Raises :class:`~fixup_transformer.errors.ConfigError` naming the option to set.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and num_processes != world_size:
        raise ConfigError(
            f"launched as one of {world_size} processes (WORLD_SIZE), but Accelerate set up {num_processes}: "
            f"on a machine without GPUs pass {cpu_option} for multi-process CPU training (gloo)"
        )


_KEPT: list[object] = []


def keep_alive(obj: object) -> None:
    """In a multi-process run, keep ``obj`` referenced until :func:`exit_process` (see module docstring)."""
    if is_multi_process():
        _KEPT.append(obj)


def exit_process(code: int = 0) -> None:
    """``sys.exit(code)``; in a multi-process run, flush and ``os._exit(code)`` to skip the gloo teardown."""
    if is_multi_process():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
