"""Hub-ready exports: self-contained model code beside the weights, ``auto_map``, and pushing to the Hub.

An export written by training loads through the Auto classes in two ways:

- **with this package installed** (``import fixup_transformer`` registers ``model_type`` with the Auto
  classes): the registered classes are used, with or without ``trust_remote_code`` (transformers prefers
  explicitly registered local code over an ``auto_map``);
- **without it** (a Hub user): ``AutoModelForSeq2SeqLM.from_pretrained(dir_or_repo, trust_remote_code=True)``
  follows the ``auto_map`` in ``config.json`` to the ``configuration_*.py`` / ``modeling_*.py`` files
  written beside the weights.

Those files are generated from the package's own source, not maintained by hand: :func:`remote_code_sources`
starts from the modules that define the config and model classes, follows every import from this package
(top-level and inside functions, found with :mod:`ast`) and rewrites each into a sibling import
``from .<module> import ...``, the only form transformers' dynamic-module loader resolves (it copies the
files named by ``from .x import`` next to each other). Line numbers are kept, so tracebacks point to the
same lines as in the package. The result is checked with transformers' own import scanner, so a file that
would still need ``fixup_transformer`` is never written.

``python -m fixup_transformer.hub DIR REPO`` pushes an export (e.g. to retry a failed end-of-training push).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import create_repo, upload_folder

from .errors import USAGE_EXIT_CODE, one_line

PACKAGE = __name__.split(".")[0]
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
# Files of an export directory that never belong on the Hub (leftovers of interrupted atomic writes).
PUSH_IGNORE = [".tmp-*", ".old-*", "**/.tmp-*", "__pycache__/*", "*.pyc"]


class RemoteCodeError(RuntimeError):
    """The package source cannot be turned into self-contained remote code (message says where)."""


# ----------------------------------------------------------------------------------------------------------
# Flattening package modules into sibling files


def _module_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RemoteCodeError(f"cannot find the source file of module {name!r}")
    if spec.submodule_search_locations is not None:
        raise RemoteCodeError(
            f"{name!r} is a package: exported code must import from the defining module, not from a package "
            "__init__ (which would drag in the whole package)"
        )
    return Path(spec.origin)


def _is_internal(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _import_target(node: ast.ImportFrom, module_name: str) -> str | None:
    """Absolute name of the package module that ``node`` imports from, or None for an external import."""
    if node.level:
        parent = module_name.rpartition(".")[0]
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), parent)
    else:
        target = node.module or ""
    return target if _is_internal(target) else None


def _line_offsets(data: bytes) -> list[int]:
    # ast positions are (1-based line, UTF-8 byte column): byte offset = line start + column.
    offsets = [0]
    for line in data.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _rewrite_module(name: str, source: str, flat_names: Mapping[str, str]) -> tuple[str, list[str]]:
    """``source`` with every package import turned into a sibling import; also the package modules it needs.

    ``flat_names`` maps already known absolute module names to their file stems; unknown ones are returned
    so the caller can add them (their stem is the last dotted component).
    """
    tree = ast.parse(source, filename=name)
    edits: list[tuple[int, int, str]] = []
    needed: list[str] = []
    data = source.encode("utf-8")
    offsets = _line_offsets(data)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad = [alias.name for alias in node.names if _is_internal(alias.name)]
            if bad:
                raise RemoteCodeError(
                    f"{name}:{node.lineno}: 'import {bad[0]}' cannot be exported; use 'from .module import name'"
                )
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _import_target(node, name)
        if target is None:
            continue
        _module_file(target)  # raises for packages (including `from . import x`) and missing modules
        needed.append(target)
        stem = flat_names.get(target, target.rpartition(".")[2])
        replacement = ast.unparse(ast.ImportFrom(module=stem, names=node.names, level=1))
        # Pad with the newlines the original statement spanned, so later line numbers do not move.
        replacement += "\n" * (node.end_lineno - node.lineno)
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        edits.append((start, end, replacement))
    for start, end, replacement in sorted(edits, reverse=True):
        data = data[:start] + replacement.encode("utf-8") + data[end:]
    return data.decode("utf-8"), needed


def remote_code_sources(modules: Iterable[str]) -> dict[str, str]:
    """``{file name: source}`` for ``modules`` and every package module they import, as flat siblings.

    Raises :class:`RemoteCodeError` when two needed modules share a file name, when code imports a
    package ``__init__`` or uses ``import fixup_transformer...``, or when a generated file would still
    import this package.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        origin = f"{PACKAGE} {version(PACKAGE.replace('_', '-'))}"
    except PackageNotFoundError:  # running from a source tree that is not pip-installed
        origin = PACKAGE
    queue = list(modules)
    stems: dict[str, str] = {}  # absolute module name -> file stem
    files: dict[str, str] = {}
    while queue:
        name = queue.pop(0)
        if name in stems:
            continue
        stem = name.rpartition(".")[2]
        clash = next((other for other, s in stems.items() if s == stem), None)
        if clash is not None:
            raise RemoteCodeError(f"{name} and {clash} would both be exported as {stem}.py")
        stems[name] = stem
        path = _module_file(name)
        source, needed = _rewrite_module(name, path.read_text(encoding="utf-8"), stems)
        # Both resolved: a package reached through a symlink (macOS /tmp, cluster homes) would not compare.
        relative = path.resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
        header = (
            f"# Generated from {relative} ({origin}) for loading with trust_remote_code=True:\n"
            "# imports only its sibling files, transformers and torch. Edit the package, not this copy.\n"
        )
        files[f"{stem}.py"] = header + source
        queue.extend(needed)
    _check_self_contained(files)
    return files


def _check_self_contained(files: Mapping[str, str]) -> None:
    """Run transformers' own import scanners over the files, as the dynamic-module loader will."""
    for file_name, source in files.items():
        tree = ast.parse(source, filename=file_name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_internal(node.module or ""):
                raise RemoteCodeError(f"{file_name}:{node.lineno} still imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                raise RemoteCodeError(f"{file_name}:{node.lineno}: a parent-relative import is left")
        # The loader finds sibling files with this regex (dynamic_module_utils.get_relative_imports).
        for sibling in re.findall(r"^\s*from\s+\.(\S+)\s+import", source, flags=re.MULTILINE):
            if f"{sibling}.py" not in files:
                raise RemoteCodeError(f"{file_name} imports .{sibling}, which is not exported")


# ----------------------------------------------------------------------------------------------------------
# Which classes each model family exports


@dataclass(frozen=True)
class RemoteCodeSpec:
    """The Auto classes an export maps to remote code: ``{auto class name: class}`` per file."""

    config_class: type
    models: dict[str, type]
    processors: dict[str, type] = field(default_factory=dict)  # written to preprocessor_config.json

    def auto_map(self, classes: Mapping[str, type]) -> dict[str, str]:
        return {auto: f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}" for auto, cls in classes.items()}

    def modules(self) -> list[str]:
        classes = [self.config_class, *self.models.values(), *self.processors.values()]
        return list(dict.fromkeys(cls.__module__ for cls in classes))


def _specs() -> list[RemoteCodeSpec]:
    from .text import FixupTransformerConfig, FixupTransformerForConditionalGeneration, FixupTransformerModel
    from .vision import (
        FixupResNetConfig,
        FixupResNetForImageClassification,
        FixupResNetImageProcessor,
        FixupResNetModel,
    )

    return [
        RemoteCodeSpec(
            FixupTransformerConfig,
            {
                "AutoModel": FixupTransformerModel,
                "AutoModelForSeq2SeqLM": FixupTransformerForConditionalGeneration,
            },
        ),
        RemoteCodeSpec(
            FixupResNetConfig,
            {
                "AutoModel": FixupResNetModel,
                "AutoModelForImageClassification": FixupResNetForImageClassification,
            },
            {"AutoImageProcessor": FixupResNetImageProcessor},
        ),
    ]


def spec_for(config) -> RemoteCodeSpec:
    for spec in _specs():
        if isinstance(config, spec.config_class):
            return spec
    raise RemoteCodeError(f"no remote-code export is defined for {type(config).__name__}")


def _update_json(path: Path, key: str, value: dict) -> None:
    from .atomic_files import atomic_write_text

    data = json.loads(path.read_text(encoding="utf-8"))
    data[key] = value
    # save_pretrained's layout (indent 2, sorted keys), so the file stays diff-friendly.
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _auto_map_refs(export_dir: Path) -> list[str]:
    """The ``module.Class`` references of the ``auto_map`` of ``config.json`` and ``preprocessor_config.json``."""
    refs = []
    for name in (CONFIG_FILE, PROCESSOR_FILE):
        path = export_dir / name
        if path.is_file():
            for value in (json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}).values():
                refs.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return refs


def add_remote_code(export_dir: str | Path, config) -> list[str]:
    """Write the model code beside a ``save_pretrained`` directory and point ``auto_map`` at it.

    ``config`` is the saved model's config (its class decides which files and Auto classes). Returns the
    names of the files written. The ``auto_map`` of ``preprocessor_config.json`` is set only if that file
    exists (the ResNet exports save their image processor).
    """
    export_dir = Path(export_dir)
    spec = spec_for(config)
    if not (export_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{export_dir} has no {CONFIG_FILE}; call save_pretrained first")
    from .atomic_files import atomic_write_text

    files = remote_code_sources(spec.modules())
    for file_name, source in files.items():
        atomic_write_text(export_dir / file_name, source)
    _update_json(
        export_dir / CONFIG_FILE,
        "auto_map",
        spec.auto_map({"AutoConfig": spec.config_class, **spec.models}),
    )
    if spec.processors and (export_dir / PROCESSOR_FILE).is_file():
        _update_json(export_dir / PROCESSOR_FILE, "auto_map", spec.auto_map(spec.processors))
    return sorted(files)


# ----------------------------------------------------------------------------------------------------------
# Pushing


def push_export(
    export_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``export_dir`` (weights, code, tokenizer, card).

    Credentials come from huggingface_hub's usual places (``HF_TOKEN`` or ``hf auth login``). Returns the
    URL of the commit. Refuses a directory that is not a complete export, before any network call.
    """
    from huggingface_hub.utils import validate_repo_id

    export_dir = Path(export_dir)
    validate_repo_id(repo_id)
    # No README.md is allowed (the ResNet exports have no card); the Hub then shows an empty card.
    missing = [name for name in (CONFIG_FILE, "model.safetensors") if not (export_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{export_dir} is not a complete export (missing {', '.join(missing)})")
    config = json.loads((export_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if "auto_map" not in config:
        raise ValueError(f"{export_dir}/{CONFIG_FILE} has no auto_map: it would not load without {PACKAGE}")
    # save_pretrained of a model loaded with the package keeps auto_map but writes no code files.
    absent = sorted(
        {f"{ref.rpartition('.')[0]}.py" for ref in _auto_map_refs(export_dir)}
        - {p.name for p in export_dir.glob("*.py")}
    )
    if absent:
        raise FileNotFoundError(
            f"{export_dir}: auto_map names code that is not there ({', '.join(absent)}); it would not load "
            f"with trust_remote_code. Write it with fixup_transformer.hub.add_remote_code({str(export_dir)!r}, config)"
        )
    create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(export_dir),
        commit_message=commit_message or f"Upload {export_dir.name} export",
        ignore_patterns=PUSH_IGNORE,
    )
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fixup_transformer.hub",
        description="Push an export directory to the Hugging Face Hub.",
    )
    parser.add_argument("export_dir", help="an export written by training (best/, last/, averaged/, final/)")
    parser.add_argument("repo_id", help="Hub repository, e.g. user/fixup-multi30k-de-en")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    args = parser.parse_args(argv)
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    try:
        url = push_export(args.export_dir, args.repo_id, private=args.private or None)
    except (FileNotFoundError, ValueError, HFValidationError, OfflineModeIsEnabled, HfHubHTTPError) as err:
        # an incomplete export, a bad repo id, offline, no permission: one line, nothing uploaded half
        print(f"error: {one_line(err)}", file=sys.stderr)
        return USAGE_EXIT_CODE
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
