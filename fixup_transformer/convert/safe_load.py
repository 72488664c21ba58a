"""Read a fairseq ``checkpoint*.pt`` without running any code from it.

A fairseq checkpoint is a pickle. Besides the weights (``model``) and the configuration (``args``, an
``argparse.Namespace``, or ``cfg``, a dict, or in fairseq 0.10.x an omegaconf ``DictConfig``), it holds
training bookkeeping: meters from ``fairseq.meters`` / ``fairseq.logging.meters``, numpy scalars, the
optimizer state. ``torch.load(weights_only=True)`` refuses all of those classes, and importing fairseq to
rebuild them is neither possible (it does not import on Python 3.11) nor safe.

So the file is loaded with ``weights_only=True`` and, for a fixed list of modules that such checkpoints
are known to reference (fairseq, omegaconf, numpy, typing, enum, collections and a few builtin types),
each referenced class or function is replaced by an inert stand-in: a plain object that records the
arguments and state it is given and runs nothing. Any other global in the file is refused with an error
naming the file and the globals; there is no fall-back to full unpickling.

The stand-ins never reach the converter's output: ``model`` must be a mapping of real tensors, and
omegaconf containers are turned back into plain dicts/lists by :func:`plain`.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import pickle
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Modules whose classes/functions may be replaced by inert stand-ins (matched on the first component).
STAND_IN_MODULES = frozenset({"fairseq", "omegaconf", "numpy", "typing", "enum", "collections", "datetime"})
# Builtin types that omegaconf metadata refers to (``object_type=dict`` ...); never called by us.
STAND_IN_BUILTINS = frozenset(
    f"builtins.{name}" for name in ("dict", "list", "tuple", "int", "float", "str", "bool", "object", "type")
)
# Globals that torch's own weights-only allowlist decides about (tensor rebuilds, OrderedDict, ...).
TORCH_DECIDES_MODULES = frozenset({"torch", "_codecs"})
ALWAYS_ALLOWED = (argparse.Namespace,)


class CheckpointLoadError(ValueError):
    """The file is not a checkpoint this converter will read; the message names the file and why."""


class StandIn:
    """Inert placeholder for a class or function of a module we do not import.

    Calling it, ``__new__``-ing it or setting its state only records what was given.
    ``global_name`` (set on each per-name subclass) says what it stands for.
    """

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls)
        instance.__dict__["_args"] = args
        return instance

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    @property
    def state(self) -> Any:
        return self.__dict__.get("_state")

    def __repr__(self) -> str:
        return f"<stand-in for {self.global_name}>"


def _stand_in_class(global_name: str) -> type:
    return type(f"StandIn[{global_name}]", (StandIn,), {"global_name": global_name})


def _plain_dict(*args) -> dict:
    """Stands in for ``collections.defaultdict``: the unpickler only fills plain dicts with items."""
    return {}


# Stand-ins that must behave as containers rather than record their arguments.
CONTAINER_STAND_INS = {"collections.defaultdict": _plain_dict}


# ---------------------------------------------------------------------------------------------------------
# Which globals does the file reference? (static disassembly, nothing is executed)


def _globals_in_pickle(stream: io.BufferedIOBase) -> set[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in one pickle, read up to its STOP opcode."""
    found: set[str] = set()
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name == "GLOBAL":
            found.add(_python3_name(*arg.split(" ", 1)))
        elif opcode.name == "STACK_GLOBAL":
            if len(strings) < 2:
                raise ValueError("a STACK_GLOBAL whose module/name cannot be read statically")
            found.add(f"{strings[-2]}.{strings[-1]}")
        if isinstance(arg, str) and "UNICODE" in opcode.name:
            strings.append(arg)
    return found


def _python3_name(module: str, name: str) -> str:
    # Protocol-2 pickles (torch.save's default) spell builtins the Python 2 way; the unpickler maps
    # them back exactly like this, and the allowlist is keyed on the mapped name.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _zip_data_pickle(path: Path) -> bytes | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise ValueError("a zip file without exactly one data.pkl (not a torch.save checkpoint)")
        return archive.read(names[0])


def referenced_globals(path: Path) -> set[str]:
    """Every global the checkpoint's pickle names, for the zip format and the legacy (torch < 1.6) one."""
    data = _zip_data_pickle(path)
    if data is not None:
        return _globals_in_pickle(io.BytesIO(data))
    # Legacy format: magic number, protocol version, sys info, then the object itself (four pickles),
    # followed by raw storage bytes that are not pickles.
    with open(path, "rb") as handle:
        found: set[str] = set()
        for _ in range(4):
            found |= _globals_in_pickle(handle)
        return found


def _module_root(global_name: str) -> str:
    return global_name.split(".", 1)[0]


def stand_ins_for(global_names: set[str]) -> tuple[list[tuple[Any, str]], list[str]]:
    """(stand-ins to register, refused names) for the globals a checkpoint references."""
    always = {f"{cls.__module__}.{cls.__qualname__}" for cls in ALWAYS_ALLOWED}
    stand_ins, refused = [], []
    for name in sorted(global_names):
        root = _module_root(name)
        if name in always or root in TORCH_DECIDES_MODULES:
            continue
        if name in CONTAINER_STAND_INS:
            stand_ins.append((CONTAINER_STAND_INS[name], name))
        elif root in STAND_IN_MODULES or name in STAND_IN_BUILTINS:
            stand_ins.append((_stand_in_class(name), name))
        else:
            refused.append(name)
    return stand_ins, refused


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, loaded with ``weights_only=True`` and inert stand-ins.

    Raises :class:`CheckpointLoadError` (naming the file) when the file is missing, is not a
    ``torch.save`` pickle, or references code outside the allowed modules.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"{path}: no such file")
    try:
        names = referenced_globals(path)
    except (ValueError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointLoadError(f"{path}: not a torch.save checkpoint ({error})") from None
    stand_ins, refused = stand_ins_for(names)
    if refused:
        raise CheckpointLoadError(
            f"{path}: refusing to load, the pickle references code outside weights and plain config "
            f"({', '.join(refused[:6])}{', ...' if len(refused) > 6 else ''})"
        )
    try:
        with torch.serialization.safe_globals([*ALWAYS_ALLOWED, *stand_ins]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointLoadError(f"{path}: cannot be loaded with weights_only=True ({first_line})") from None
    if not isinstance(state, dict):
        raise CheckpointLoadError(
            f"{path}: holds a {type(state).__name__}, expected a fairseq checkpoint dict"
        )
    return state


# ---------------------------------------------------------------------------------------------------------
# Back to plain Python values


# A real fairseq config has a few hundred entries, nested a few levels. A pickle can share one object many
# times by reference (a 1 KB file can describe 2**60 list entries) or make it contain itself: copying such a
# tree would hang or recurse without end, so the copy is bounded and refuses what exceeds the bounds.
MAX_CONFIG_ENTRIES = 100_000
MAX_CONFIG_DEPTH = 64


def plain(value: Any) -> Any:
    """Plain dicts/lists/scalars for a config that may contain omegaconf stand-ins or Namespaces.

    omegaconf containers keep their items in ``_content`` (a dict or list of nodes) and value nodes keep
    theirs in ``_val``; an enum member is rebuilt as its value. Other stand-ins are returned unchanged
    (reading an option from one fails later with a clear error). The result is a tree (shared references are
    copied) of at most :data:`MAX_CONFIG_ENTRIES` entries and :data:`MAX_CONFIG_DEPTH` levels; a config
    beyond either bound raises ``ValueError``.
    """
    return _Plainer().copy(value, 0)


class _Plainer:
    def __init__(self) -> None:
        self.entries = 0

    def copy(self, value: Any, depth: int) -> Any:
        self.entries += 1
        if self.entries > MAX_CONFIG_ENTRIES:
            raise ValueError(
                f"the stored config has more than {MAX_CONFIG_ENTRIES} entries (a crafted file?)"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(
                f"the stored config nests deeper than {MAX_CONFIG_DEPTH} levels (a reference cycle?)"
            )
        inner = depth + 1
        if isinstance(value, argparse.Namespace):
            return argparse.Namespace(**{key: self.copy(item, inner) for key, item in vars(value).items()})
        if isinstance(value, dict):
            return {key: self.copy(item, inner) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.copy(item, inner) for item in value)
        if isinstance(value, StandIn):
            return self.stand_in(value, inner)
        return value

    def stand_in(self, value: StandIn, depth: int) -> Any:
        state = value.state
        if isinstance(state, dict):
            if "_content" in state:
                return self.copy(state["_content"], depth)
            if "_val" in state:
                return self.copy(state["_val"], depth)
        return _plain_scalar_stand_in(value)


def _plain_scalar_stand_in(value: StandIn) -> Any:
    if value.global_name.startswith("omegaconf.") and value.state is None and not value.__dict__.get("_args"):
        return None
    args = value.__dict__.get("_args") or ()
    if len(args) == 1 and isinstance(args[0], str | int | float | bool):
        return args[0]  # an Enum member pickled as EnumClass(value)
    return value


def iter_stand_ins(value: Any) -> Iterator[StandIn]:
    """Stand-ins left anywhere inside ``value`` (used to reject configs we could not read)."""
    if isinstance(value, StandIn):
        yield value
    elif isinstance(value, argparse.Namespace):
        yield from iter_stand_ins(vars(value))
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_stand_ins(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_stand_ins(item)
