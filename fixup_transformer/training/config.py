"""YAML config files + ``--key value`` command-line overrides, checked against a dataclass.

One dataclass per recipe family (MT, images) is the single place where a field is named, typed, given a
default and documented (``field_doc(default, "help")`` stores the help text in the field's metadata, so
``--help`` can print it). A YAML file and the command line may only set fields that exist; anything else
is an error naming the key and where it came from, because a misspelt key that is silently ignored is the
most expensive kind of config bug (a 30-minute run with the wrong learning rate).

Values are coerced from the field's declared type, not guessed from YAML syntax: PyYAML reads ``5e-4``
as a *string* (YAML 1.1 wants a dot in floats), and every command-line value is a string anyway.

Usage::

    cfg = parse_config(MTConfig, ["--config", "configs/x.yaml", "--optim.lr", "1e-3"])
    dump_config(cfg, "run/config.yaml")    # the resolved config, saved beside checkpoints
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError, yaml_problem
from ..paths import resolve_path

T = TypeVar("T")

COMMAND_LINE = "the command line"
"""Source name used in error messages for ``--key value`` overrides."""


def require(ok: bool, key: str, value: Any, requirement: str) -> None:
    """Range check for ``validate()`` methods: ``ConfigError("optim.lr must be > 0, got -1.0")``."""
    if not ok:
        raise ConfigError(f"{key} must be {requirement}, got {value!r}")


def field_doc(default: Any = dataclasses.MISSING, doc: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its documentation attached (shown by ``--help`` and in error messages).

    Mutable defaults (lists, dicts, dataclasses) are wrapped in a ``default_factory`` automatically.
    """
    metadata = {"doc": doc}
    if isinstance(default, list | dict | set) or dataclasses.is_dataclass(default):
        return dataclasses.field(
            default_factory=functools.partial(copy.deepcopy, default), metadata=metadata, **kwargs
        )
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def docstring_args(cls: type) -> dict[str, str]:
    """The ``Args:`` section of a Google-style class docstring (transformers' configs), as name -> text.

    ``a / b: text`` documents both fields; indented continuation lines are joined.
    """
    docs: dict[str, str] = {}
    names: list[str] = []
    in_args, indent = False, None
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            in_args = True
            continue
        if not in_args or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        if depth == indent and ":" in stripped:
            head, text = stripped.split(":", 1)
            names = [name.strip() for name in head.split("/")]
            for name in names:
                docs[name] = text.strip()
        else:
            for name in names:
                docs[name] += " " + stripped
    return docs


def config_section(
    source: type, names: Sequence[str], choices: dict[str, tuple], section: str, module: str, doc: str
) -> type:
    """A config dataclass made of the fields ``names`` of the dataclass ``source`` (a transformers config):
    the same types (``choices`` as ``Literal``), defaults and documentation (``source``'s ``Args:``), so a
    recipe section and the model config it builds cannot drift apart. ``module``: the new class's home."""
    source_globals = vars(sys.modules[source.__module__])
    defaults = {f.name: f.default for f in dataclasses.fields(source)}
    docs = docstring_args(source)
    fields = []
    for name in names:
        if name in choices:
            tp = Literal[choices[name]]
        else:  # the class's own annotation; get_type_hints would also resolve every base class's
            annotation = source.__annotations__[name]
            tp = eval(annotation, source_globals) if isinstance(annotation, str) else annotation  # noqa: S307
        fields.append((name, tp, field_doc(defaults[name], docs.get(name, ""))))
    return dataclasses.make_dataclass(section, fields, namespace={"__doc__": doc, "__module__": module})


# ----------------------------------------------------------------------------------------------------------
# Type coercion


class _BareFlag(str):
    """The value of ``--key`` given without one: ``"true"``, for yes/no fields only (:func:`set_dotted`)."""


BARE_FLAG = _BareFlag("true")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_union(tp: Any) -> bool:
    origin = get_origin(tp)
    return origin is Union or origin is types.UnionType


class _Mismatch(Exception):
    """A value that does not fit its type; :func:`coerce` turns it into a ConfigError naming the field."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the declared type ``tp``.

    Raises ConfigError naming the field, the expected type, the bad value and its source.
    """
    try:
        return _coerce(value, tp, key, source)
    except _Mismatch as bad:
        detail = f": {bad.detail}" if bad.detail else ""
        raise ConfigError(
            f"field '{key}' (from {source}) expects {_type_name(tp)}, got {value!r}{detail}"
        ) from None


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    if tp is Any:
        return value
    if _is_union(tp):
        return _to_union(value, get_args(tp), key, source)
    origin = get_origin(tp)
    if origin is Literal:
        return _to_literal(value, get_args(tp))
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _to_sequence(value, tp, key, source)
    if origin is dict or tp is dict:
        if isinstance(value, str) and value.strip().startswith("{"):  # command line: YAML flow syntax
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise _Mismatch(yaml_problem(err)) from None
        if not isinstance(value, dict):
            raise _Mismatch("expected a mapping, e.g. {validation: valid.tok.lc}")
        return dict(value)
    if tp in _SCALAR_PARSERS:
        return _SCALAR_PARSERS[tp](value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch("expected a mapping of sub-fields")
        return from_dict(tp, value, source, prefix=f"{key}.")
    raise ConfigError(f"field '{key}' has unsupported type {_type_name(tp)} in the config dataclass")


def _to_union(value: Any, options: tuple, key: str, source: str) -> Any:
    if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce(value, option, key, source)
        except ConfigError:
            pass
    raise _Mismatch()


def _to_literal(value: Any, choices: tuple) -> Any:
    for choice in choices:
        if value == choice or (isinstance(value, str) and str(choice) == value):
            return choice
    raise _Mismatch(f"choose one of {list(choices)}")


def _to_sequence(value: Any, tp: Any, key: str, source: str) -> list | tuple:
    if isinstance(value, str):
        # Command line: "[0.9, 0.98]" or "(0.9, 0.98)" (as --help prints tuples), or "0.9,0.98" / "a, b".
        text = value.strip()
        if text.startswith("(") and text.endswith(")"):
            text = f"[{text[1:-1]}]"
        try:
            value = (
                yaml.safe_load(text)
                if text.startswith("[")
                else [v.strip() for v in text.split(",") if v.strip()]
            )
        except yaml.YAMLError as err:
            raise _Mismatch(yaml_problem(err)) from None
    if not isinstance(value, list | tuple):
        raise _Mismatch("expected a list")
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _Mismatch(f"expected {len(args)} items")
        items = [coerce(v, a, key, source) for v, a in zip(value, args, strict=True)]
    else:
        item_type = args[0] if args else Any
        items = [coerce(v, item_type, key, source) for v in value]
    return tuple(items) if origin is tuple or tp is tuple else items


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Mismatch("use true/false")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise _Mismatch() from None
        if isinstance(number, float) and not number.is_integer():
            raise _Mismatch()
        return int(number)
    raise _Mismatch()


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _Mismatch() from None
    raise _Mismatch()


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Mismatch()


_SCALAR_PARSERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))


# ----------------------------------------------------------------------------------------------------------
# Building, merging, dumping


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_valid_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(cls: type, key: str, source: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key, _valid_keys(cls), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}{hint}")


def apply_dict(cfg: T, values: dict[str, Any], source: str, prefix: str = "", root: type | None = None) -> T:
    """Set the fields named in a nested mapping on ``cfg`` (in place), checking keys and types.

    ``root`` is the top-level dataclass, used to suggest close dotted key names in errors.
    """
    root = root or type(cfg)
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: expected a mapping at '{prefix or 'top level'}', got {type(values).__name__}"
        )
    hints = _hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key(root, key, source)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if value is None:
                continue
            apply_dict(getattr(cfg, name), value, source, prefix=f"{key}.", root=root)
        else:
            setattr(cfg, name, coerce(value, tp, key, source))
    return cfg


def from_dict(cls: type[T], values: dict[str, Any], source: str = "a mapping", prefix: str = "") -> T:
    """Build ``cls`` from defaults + a nested mapping."""
    return apply_dict(cls(), values, source, prefix)


def set_dotted(cfg: Any, key: str, value: Any, source: str = COMMAND_LINE) -> None:
    """Set one (possibly dotted, e.g. ``optim.lr``) field from a string or YAML value."""
    target = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = _hints(type(target))
        if part not in {f.name for f in dataclasses.fields(target)}:
            raise _unknown_key(type(cfg), key, source)
        tp = hints[part]
        if i == len(parts) - 1:
            if isinstance(value, _BareFlag) and part == "resume":
                value = "auto"  # a bare --resume / --checkpoint.resume: the newest checkpoint
            elif isinstance(value, _BareFlag) and not (
                tp is bool or (_is_union(tp) and bool in get_args(tp))
            ):
                # e.g. `--output_dir --seed 2` or `--output_dir` last: "true" would be used as the path
                raise ConfigError(
                    f"--{key} (from {source}) needs a value; only yes/no options may stand alone"
                )
            if dataclasses.is_dataclass(tp):
                raise ConfigError(
                    f"'{key}' (from {source}) is a group of fields; set '{key}.<field>' instead"
                )
            setattr(target, part, coerce(value, tp, key, source))
        else:
            if not dataclasses.is_dataclass(tp):
                raise _unknown_key(type(cfg), key, source)
            target = getattr(target, part)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}"
        )
    return data


def load_config(
    cls: type[T], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> T:
    """Defaults, then the YAML file (if any), then ``overrides`` (dotted keys -> values)."""
    cfg = cls()
    if path is not None:
        path = resolve_path(str(path))  # configs/x.yaml from any working directory of a checkout, ${VAR}, ~
        apply_dict(cfg, load_yaml(path), source=str(path))
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value, COMMAND_LINE)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def parse_overrides(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """Split ``--config PATH --a.b 1 --flag --c=2`` into (config path, {dotted key: raw string}).

    A key followed by another ``--key`` (or nothing) is a bare boolean flag and gets :data:`BARE_FLAG`
    (``"true"``), which only yes/no fields accept.
    """
    config_path = None
    overrides: dict[str, str] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r} on {COMMAND_LINE}; use --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                value = argv[i + 1]
                i += 1
            else:
                value = BARE_FLAG
        key = key.replace("-", "_")
        if key == "config":
            config_path = value
        else:
            overrides[key] = value
        i += 1
    return config_path, overrides


def format_help(cls: type, prefix: str = "") -> str:
    """One line per field: dotted key, type, default, documentation."""
    lines = []
    hints = _hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(format_help(tp, f"{prefix}{f.name}."))
            continue
        default = getattr(defaults, f.name)
        lines.append(
            f"  --{prefix}{f.name} ({_type_name(tp)}, default {default!r})\n      {f.metadata.get('doc', '')}"
        )
    return "\n".join(lines)


def parse_config(cls: type[T], argv: Sequence[str] | None = None, prog: str | None = None) -> T:
    """Command-line entry point: ``--config FILE`` plus ``--key value`` overrides; ``--help`` lists fields."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog or Path(sys.argv[0]).name} [--config FILE.yaml] [--key value ...]\n")
        print(
            "values: --key value or --key=value; lists 0.9,0.98 or [0.9, 0.98]; mappings {a: b}; null / none "
            "for an unset optional field; a yes/no field alone means yes (--train.compile)\n"
        )
        print(f"fields of {cls.__name__} (dotted keys set nested fields):")
        print(format_help(cls))
        raise SystemExit(0)
    path, overrides = parse_overrides(argv)
    return load_config(cls, path, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-Python mapping of a config (tuples become lists, so it round-trips through YAML)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (field order preserved)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def dump_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config to ``path`` atomically."""
    from ..atomic_files import atomic_write_text

    atomic_write_text(path, dump_yaml(cfg))
