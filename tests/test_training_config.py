"""Config loading: YAML + overrides, type coercion, errors that name the key and its source."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import yaml

from fixup_transformer.training.config import ConfigError, dump_config, field_doc, load_config, parse_config


@dataclasses.dataclass
class Inner:
    """A nested group."""

    lr: float = field_doc(5e-4, "learning rate")
    betas: tuple[float, float] = field_doc((0.9, 0.98), "betas")
    milestones: list[int] = field_doc([], "milestones")


@dataclasses.dataclass
class Outer:
    """A top-level config."""

    name: str = field_doc("run", "name")
    steps: int | None = field_doc(None, "steps")
    norm: Literal["none", "post_ln"] = field_doc("none", "normalization")
    flag: bool = field_doc(False, "a flag")
    optim: Inner = field_doc(Inner(), "optimizer")


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_with_coercion(tmp_path):
    # PyYAML reads 5e-4 without a dot as a string; the field type must make it a float.
    path = write(tmp_path, "name: a\noptim:\n  lr: 1e-3\n  milestones: [10, 20]\n")
    cfg = parse_config(Outer, ["--config", str(path), "--optim.betas", "0.9,0.99", "--steps=7", "--flag"])
    assert cfg == Outer(
        name="a", steps=7, flag=True, optim=Inner(lr=1e-3, betas=(0.9, 0.99), milestones=[10, 20])
    )
    assert parse_config(Outer, ["--steps", "none"]).steps is None
    assert parse_config(Outer, ["--optim.milestones", "[1, 2]"]).optim.milestones == [1, 2]


def test_defaults_are_not_shared_between_instances():
    a, b = Outer(), Outer()
    a.optim.milestones.append(3)
    assert b.optim.milestones == []


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.lrr' in .*cfg.yaml.*did you mean 'optim.lr'"
    ):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz' in the command line"):
        parse_config(Outer, ["--stepz", "3"])


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--steps", "abc"], r"field 'steps' \(from the command line\) expects int \| None, got 'abc'"),
        (["--optim.lr", "fast"], r"field 'optim.lr' .* expects float"),
        (["--norm", "pre"], r"field 'norm' .*choose one of \['none', 'post_ln'\]"),
        (["--flag", "maybe"], r"field 'flag' .*true/false"),
        (["--optim.betas", "1,2,3"], r"field 'optim.betas' .*expected 2 items"),
    ],
)
def test_bad_type_names_field(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(Outer, argv)


def test_bad_type_in_file_names_field_and_file(tmp_path):
    path = write(tmp_path, "steps: 1.5\n")
    with pytest.raises(ConfigError, match=r"field 'steps' \(from .*cfg.yaml\) expects int"):
        load_config(Outer, path)


def test_dump_round_trips(tmp_path):
    cfg = parse_config(Outer, ["--optim.lr", "0.002", "--steps", "3"])
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["optim"]["betas"] == [0.9, 0.98]
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg


def test_help_lists_documented_fields(capsys):
    with pytest.raises(SystemExit):
        parse_config(Outer, ["--help"])
    out = capsys.readouterr().out
    assert "--optim.lr (float, default 0.0005)" in out and "learning rate" in out


def test_shipped_mt_configs_parse_and_twins_differ_only_in_normalization():
    from pathlib import Path

    from fixup_transformer.training.config import to_dict
    from fixup_transformer.training.mt_config import MTConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    # The paper-recipe twins use fairseq's init; the main job's twin the stronger transformers one.
    baseline_init = {"multi30k_de_en": "normal", "iwslt14_de_en": "xavier", "wmt16_en_de": "xavier"}
    for name, init in baseline_init.items():
        fixup = to_dict(load_config(MTConfig, configs / f"{name}.yaml"))
        layernorm = to_dict(load_config(MTConfig, configs / f"{name}_layernorm.yaml"))
        # The main job uses T-Fixup (chosen on validation); the paper-recipe configs the paper's init.
        fixup_init = "t_fixup" if name == "multi30k_de_en" else "fixup"
        assert (fixup["model"]["normalization"], fixup["model"]["init"]) == ("none", fixup_init)
        assert (layernorm["model"]["normalization"], layernorm["model"]["init"]) == ("post_ln", init)
        for cfg in (fixup, layernorm):
            cfg["model"].pop("normalization"), cfg["model"].pop("init"), cfg.pop("output_dir")
            cfg["model"].pop("init_std")  # read by init normal only
        assert fixup == layernorm, name
    load_config(MTConfig, configs / "tiny_test.yaml")


def test_model_section_is_the_model_config_restricted_to_the_recipe_fields():
    """Same defaults, choices and a --help text for every field: the section cannot drift from the model."""
    from typing import get_args

    from fixup_transformer import FixupTransformerConfig
    from fixup_transformer.text.configuration_fixup_transformer import CHOICES
    from fixup_transformer.training.mt_config import ARCHITECTURE_FIELDS, ModelConfig, MTConfig

    model_defaults = FixupTransformerConfig()
    section = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert tuple(section) == ARCHITECTURE_FIELDS
    for name, field in section.items():
        assert field.default == getattr(model_defaults, name), name
        assert len(field.metadata["doc"]) > 10, name
        if name in CHOICES:
            assert get_args(field.type) == CHOICES[name], name
    with pytest.raises(
        ConfigError, match=r"model\.init.*choose one of \['fixup', 't_fixup', 'xavier', 'normal'\]"
    ):
        load_config(MTConfig, None, {"model.init": "kaiming"})


def test_mt_config_names_a_split_files_key_that_is_not_a_split(tmp_path):
    from fixup_transformer.training.mt_config import MTConfig

    path = tmp_path / "cfg.yaml"
    path.write_text(
        "data:\n  data_dir: /data\n  split_files: {dev: valid.tok.lc}\ntrain:\n  max_updates: 1\n"
    )
    with pytest.raises(ConfigError, match=r"data\.split_files: unknown split 'dev'"):
        load_config(MTConfig, path)


def test_only_yes_no_options_may_stand_alone_on_the_command_line():
    # `--name --flag` would otherwise set name to the string "true", e.g. an output_dir named "true".
    assert parse_config(Outer, ["--flag", "--steps", "3"]).flag is True
    with pytest.raises(ConfigError, match=r"--name .*needs a value; only yes/no options may stand alone"):
        parse_config(Outer, ["--name", "--flag"])
    with pytest.raises(ConfigError, match=r"--steps .*needs a value"):
        parse_config(Outer, ["--steps"])


def test_mt_resume_words_empty_output_dir_and_seed_range(tmp_path):
    from fixup_transformer.training.checkpoint import find_resume_checkpoint
    from fixup_transformer.training.mt_config import MTConfig

    budget = ["--train.max_updates", "1"]
    assert parse_config(MTConfig, [*budget, "--checkpoint.resume"]).checkpoint.resume == "auto"  # bare
    assert find_resume_checkpoint("false", tmp_path) == (None, [])  # a no-word: start fresh
    assert find_resume_checkpoint("true", tmp_path) == (None, [])  # auto, and nothing there yet
    for argv, message in [
        (["--output_dir", ""], "output_dir must name a directory"),
        (["--seed", "-5"], r"seed must be in \[0, 2\*\*32\)"),
        (["--seed", "5000000000"], r"seed must be in \[0, 2\*\*32\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(MTConfig, [*budget, *argv]).validate()


def test_a_config_path_of_the_checkout_works_from_any_working_directory(tmp_path, monkeypatch):
    from fixup_transformer.training.mt_config import MTConfig

    monkeypatch.chdir(tmp_path)
    assert load_config(MTConfig, "configs/multi30k_de_en.yaml").model.init == "t_fixup"


def test_command_line_lists_tuples_and_mappings_read_as_help_prints_them():
    from fixup_transformer.training.mt_config import MTConfig

    cfg = parse_config(
        MTConfig,
        ["--train.max_updates", "1", "--optim.betas", "(0.9, 0.99)", "--train.trackers", "tensorboard, wandb",
         "--data.data_dir", "/data", "--data.split_files", "{validation: valid.tok.lc}"],
    )  # fmt: skip
    assert cfg.optim.betas == (0.9, 0.99) and cfg.train.trackers == ["tensorboard", "wandb"]
    assert cfg.data.split_files == {"validation": "valid.tok.lc"}
