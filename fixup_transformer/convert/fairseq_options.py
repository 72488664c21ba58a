"""The hyperparameters and dictionaries of a fairseq checkpoint, read without fairseq.

Options live in ``args`` (an ``argparse.Namespace``, fairseq < 0.10 and models trained from the legacy
CLI) or in ``cfg`` (a dict, or a ``DictConfig`` in fairseq 0.10.x) whose ``model`` entry is either a
Namespace with the same flat names or a ``TransformerConfig`` dict with nested ``encoder``/``decoder``
sections. Both are flattened to the legacy names (``encoder_embed_dim``, ``decoder_normalize_before``,
``quant_noise_pq``, ...), which is what fairseq's own ``TransformerConfig.from_namespace`` does.

Dictionaries (``dict.<lang>.txt``) are not stored in the checkpoint. A fairseq ``Dictionary`` always
starts with ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and then adds the file's symbols in order
(``fairseq/data/dictionary.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.parallel import split_text_lines
from .safe_load import StandIn, iter_stand_ins, plain

FAIRSEQ_SPECIALS = {"bos": 0, "pad": 1, "eos": 2, "unk": 3}
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")
_MISSING = object()


def raw_config(checkpoint: dict[str, Any]) -> tuple[str, Any]:
    """("args", Namespace) or ("cfg", dict): the checkpoint's configuration as it is stored (made plain)."""
    if checkpoint.get("args") is not None:
        args = plain(checkpoint["args"])
        if not isinstance(args, argparse.Namespace):
            raise ValueError(f"`args` is a {type(args).__name__}, expected an argparse.Namespace")
        return "args", args
    if checkpoint.get("cfg") is not None:
        cfg = plain(checkpoint["cfg"])
        if not isinstance(cfg, dict):
            raise ValueError(f"`cfg` is a {type(cfg).__name__}, expected a dict")
        return "cfg", cfg
    raise ValueError("the checkpoint has neither `args` nor `cfg`; cannot tell the architecture")


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    if isinstance(value, dict):
        return dict(value)
    return {}


def _flatten_model_section(section: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in section.items() if not isinstance(value, dict)}
    for group in ("encoder", "decoder", "quant_noise"):
        for key, value in _as_dict(section.get(group)).items():
            flat.setdefault(f"{group}_{key}", value)
    return flat


def flat_options(kind: str, config: Any) -> dict[str, Any]:
    """All options under their legacy flat names (model, task and criterion merged; model wins unless None)."""
    if kind == "args":
        return _flatten_model_section(_as_dict(config))
    options: dict[str, Any] = {}
    for section in ("criterion", "task", "common"):
        options.update(_as_dict(config.get(section)))
    # fairseq 0.12 stores a legacy --arch's args as the model section, with source_lang=None etc. where the
    # task inferred the value: an unset (None) model option must not hide the task's.
    for key, value in _flatten_model_section(_as_dict(config.get("model"))).items():
        if value is not None or key not in options:
            options[key] = value
    return options


def option(options: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """A typed option, with ``default`` when it is absent or None; a clear error when unreadable."""
    value = options.get(name)
    if value is None:
        if default is _MISSING:
            raise ValueError(f"the checkpoint's config has no `{name}`, which the conversion needs")
        return default
    if isinstance(value, StandIn) or any(True for _ in iter_stand_ins(value)):
        raise ValueError(f"the checkpoint's `{name}` is an object that cannot be read without fairseq")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(
            f"the checkpoint's `{name}` is {value!r}, expected {getattr(kind, '__name__', kind)}"
        )
    return value


def to_json_compatible(config: Any) -> Any:
    """The stored config as JSON (a Namespace becomes ``{"__namespace__": {...}}``), for the sidecar."""
    if isinstance(config, argparse.Namespace):
        return {"__namespace__": {key: to_json_compatible(value) for key, value in vars(config).items()}}
    if isinstance(config, dict):
        return {str(key): to_json_compatible(value) for key, value in config.items()}
    if isinstance(config, tuple):
        return {"__tuple__": [to_json_compatible(value) for value in config]}
    if isinstance(config, list):
        return [to_json_compatible(value) for value in config]
    if config is None or isinstance(config, str | int | float | bool):
        return config
    raise ValueError(f"a config value of type {type(config).__name__} cannot be recorded ({config!r})")


def from_json_compatible(value: Any) -> Any:
    """Inverse of :func:`to_json_compatible`."""
    if isinstance(value, dict):
        if set(value) == {"__namespace__"}:
            return argparse.Namespace(
                **{key: from_json_compatible(item) for key, item in value["__namespace__"].items()}
            )
        if set(value) == {"__tuple__"}:
            return tuple(from_json_compatible(item) for item in value["__tuple__"])
        return {key: from_json_compatible(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_compatible(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# Dictionaries


@dataclass(frozen=True)
class FairseqDictionary:
    path: Path
    symbols: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.symbols)


def read_dictionary(path: str | Path) -> FairseqDictionary:
    """A ``dict.*.txt`` as fairseq's ``Dictionary.load`` reads it: the 4 specials, then each new symbol."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{path}: cannot read the fairseq dictionary ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (not a fairseq dict.*.txt)") from None
    lines = split_text_lines(text) if text else []  # fairseq reads lines as files iterate: on "\n" only
    symbols = list(SPECIAL_SYMBOLS)
    known = set(symbols)
    for number, line in enumerate(lines, start=1):
        word, overwrite = _dictionary_entry(line)
        if word is None:
            raise ValueError(
                f"{path}:{number}: expected '<symbol> <count> [#fairseq:overwrite]', got {line!r}"
            )
        if word in known and not overwrite:
            raise ValueError(f"{path}:{number}: duplicate symbol {word!r} (fairseq refuses this file too)")
        # "#fairseq:overwrite" gives the symbol a new index, as fairseq's add_symbol(overwrite=True) does.
        known.add(word)
        symbols.append(word)
    return FairseqDictionary(path, tuple(symbols))


def _dictionary_entry(line: str) -> tuple[str | None, bool]:
    """(symbol, overwrite flag) of one line, split from the right as fairseq does; (None, _) if malformed."""
    fields = line.rstrip().rsplit(" ", 1)
    overwrite = len(fields) == 2 and fields[1] == "#fairseq:overwrite"
    if overwrite:
        fields = fields[0].rsplit(" ", 1)
    if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        return None, overwrite
    return fields[0], overwrite


def find_dictionaries(data_dir: str | Path, source_lang: str | None, target_lang: str | None) -> list[Path]:
    """``dict.<src>.txt`` and ``dict.<tgt>.txt`` in a fairseq data-bin directory."""
    data_dir = Path(data_dir)
    if source_lang and target_lang:
        paths = [data_dir / f"dict.{source_lang}.txt", data_dir / f"dict.{target_lang}.txt"]
    else:
        paths = sorted(data_dir.glob("dict.*.txt"))
        if len(paths) not in (1, 2):
            raise ValueError(
                f"{data_dir}: the checkpoint names no languages and there are {len(paths)} dict.*.txt files; "
                "pass --dict SRC_DICT [TGT_DICT]"
            )
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: no such fairseq dictionary")
    return paths
