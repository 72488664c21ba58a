"""Hub-ready exports: every MT export loads where ``fixup_transformer`` cannot be imported, carries a model
card, and ``train.push_to_hub`` uploads the best export (the upload itself is replaced: no network here).

One tiny training run on real Multi30k (``configs/tiny_test.yaml``, seconds) writes ``best/``, ``last/`` and
``averaged/``; a subprocess whose import system refuses ``fixup_transformer`` then loads them with
``trust_remote_code=True`` and its logits are compared with the package's.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from fixup_transformer import hub
from fixup_transformer.training import mt
from fixup_transformer.training.config import ConfigError, load_config
from fixup_transformer.training.hub_export import push_best_export
from fixup_transformer.training.mt_config import MTConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"
EXPORTS = ("best", "last", "averaged")
PUSH_REPO = "someone/fixup-multi30k-tiny"

# Runs first in the subprocess: any import of the package fails, as on a machine without it.
BLOCKER = """
import importlib.abc, sys

class _NoFixupTransformer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fixup_transformer" or name.startswith("fixup_transformer."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoFixupTransformer())
"""

# Loads every export with transformers alone and writes logits, class names and the card snippet's output.
LOADER = """
import contextlib, io, json, re, sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

try:
    import fixup_transformer  # noqa: F401
    sys.exit("fixup_transformer is importable: the blocker failed")
except ImportError:
    pass

args = json.loads(Path(sys.argv[1]).read_text())
out = Path(args["out"])
report = {}
for name, export in args["exports"].items():
    tokenizer = AutoTokenizer.from_pretrained(export)
    try:
        AutoModelForSeq2SeqLM.from_pretrained(export)
        refused = None
    except ValueError as err:
        refused = str(err)
    model = AutoModelForSeq2SeqLM.from_pretrained(export, trust_remote_code=True).eval()
    src = tokenizer(args["sources"], return_tensors="pt", padding=True)
    tgt = tokenizer(args["targets"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=src["input_ids"], attention_mask=src["attention_mask"],
                       decoder_input_ids=tgt).logits
    save_file({"logits": logits.contiguous()}, str(out / f"{name}.safetensors"))
    report[name] = {"module": type(model).__module__, "class": type(model).__name__, "refused": refused}

# A remote-code model saves again with its code (transformers' custom_object_save) and reloads.
model.save_pretrained(out / "resaved")
again = AutoModelForSeq2SeqLM.from_pretrained(out / "resaved", trust_remote_code=True).eval()
with torch.no_grad():
    resaved = again(input_ids=src["input_ids"], attention_mask=src["attention_mask"], decoder_input_ids=tgt).logits
report["resaved_equal"] = bool(torch.equal(resaved, logits))

# The model card's usage snippet, as a user would paste it (pointing at the local export).
card = Path(args["exports"]["best"], "README.md").read_text()
snippet = re.findall(r"```python\\n(.*?)```", card, flags=re.S)[0]
snippet = snippet.replace(args["model_id"], repr(args["exports"]["best"]))
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer):
    exec(compile(snippet, "model card snippet", "exec"), {})
report["snippet_output"] = buffer.getvalue().splitlines()

# A ResNet export: image processor and classifier from the copied code.
import numpy as np
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained(args["vision"], trust_remote_code=True)
classifier = AutoModelForImageClassification.from_pretrained(args["vision"], trust_remote_code=True).eval()
image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
pixels = processor(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    save_file({"pixels": pixels, "logits": classifier(pixel_values=pixels).logits}, str(out / "vision.safetensors"))
report["vision"] = {"model": type(classifier).__module__, "processor": type(processor).__module__}
(out / "report.json").write_text(json.dumps(report))
"""


@pytest.fixture(scope="module")
def run(multi30k, tmp_path_factory):
    """A finished tiny run with averaging and ``train.push_to_hub``; the Hub calls are recorded instead."""
    out = tmp_path_factory.mktemp("hub") / "run"
    cfg = load_config(
        MTConfig,
        TINY,
        {
            "data.data_dir": str(multi30k),
            "output_dir": str(out),
            "checkpoint.average_last": 2,
            "train.push_to_hub": PUSH_REPO,
        },
    )
    calls = []
    real = hub.create_repo, hub.upload_folder
    hub.create_repo = lambda *args, **kwargs: calls.append(("create_repo", args, kwargs))

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(p.name for p in folder.iterdir())
        calls.append(("upload_folder", kwargs, files, (folder / "README.md").read_text(encoding="utf-8")))
        return "https://huggingface.co/someone/fixup-multi30k-tiny/commit/0"

    hub.upload_folder = upload_folder
    try:
        summary = mt.train(cfg)
    finally:
        hub.create_repo, hub.upload_folder = real
    return {"dir": out, "summary": summary, "calls": calls, "cfg": cfg}


def _real_pairs(multi30k: Path, n: int = 3) -> tuple[list[str], list[str]]:
    import gzip

    def read(lang: str) -> list[str]:
        with gzip.open(multi30k / f"val.{lang}.gz", "rt", encoding="utf-8") as handle:
            return [next(handle).strip() for _ in range(n)]

    return read("de"), read("en")


# ----------------------------------------------------------------------------------------------------------
# Generated code


def test_generated_code_is_self_contained_and_keeps_line_numbers(tmp_path):
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    from fixup_transformer.text import FixupTransformerConfig

    files = hub.remote_code_sources(hub.spec_for(FixupTransformerConfig()).modules())
    assert set(files) == {
        "configuration_fixup_transformer.py",
        "modeling_fixup_transformer.py",
        "folding.py",
        "output_loss.py",  # the training loss without logits
        "dropout.py",  # CPU dropout with one-byte masks
        "fixup.py",
        "choices.py",  # the configs' "must be one of" check, shared with the ResNet
    }
    for name, source in files.items():
        (tmp_path / name).write_text(source, encoding="utf-8")
    for name in files:
        assert "fixup_transformer" not in get_imports(tmp_path / name)  # what transformers checks
    # What the dynamic-module loader copies next to the modeling file: exactly the generated files
    # (folding.py imports the modeling file back, lazily, hence the union).
    needed = {Path(p).name for p in get_relative_import_files(tmp_path / "modeling_fixup_transformer.py")}
    assert needed | {"modeling_fixup_transformer.py"} == set(files)
    # Same line numbers as the package (after the 2-line header), so tracebacks point to the same lines.
    original = (REPO / "fixup_transformer" / "text" / "folding.py").read_text(encoding="utf-8").splitlines()
    copied = files["folding.py"].splitlines()[2:]
    assert len(copied) == len(original)
    changed = [(a, b) for a, b in zip(original, copied, strict=True) if a != b]
    assert changed and all("from .." in a or "from ." in a for a, _ in changed)
    assert all(re.match(r"\s*from \.\w+ import ", b) for _, b in changed)


def test_rewrite_handles_multiline_and_rejects_what_cannot_be_flattened():
    source = 'x = "é"; from ..fixup import (\n    ScalarBias,\n    ScalarScale,\n)\ny = 1\n'
    rewritten, needed = hub._rewrite_module("fixup_transformer.text.example", source, {})
    assert needed == ["fixup_transformer.fixup"]
    assert rewritten.splitlines()[0] == 'x = "é"; from .fixup import ScalarBias, ScalarScale'
    assert len(rewritten.splitlines()) == len(source.splitlines()) and rewritten.splitlines()[-1] == "y = 1"
    ast.parse(rewritten)
    with pytest.raises(hub.RemoteCodeError, match="import fixup_transformer.fixup"):
        hub._rewrite_module("fixup_transformer.text.example", "import fixup_transformer.fixup\n", {})
    with pytest.raises(hub.RemoteCodeError, match="is a package"):
        hub._rewrite_module("fixup_transformer.text.example", "from ..text import X\n", {})
    with pytest.raises(hub.RemoteCodeError, match="is a package"):
        hub._rewrite_module("fixup_transformer.text.example", "from .. import fixup\n", {})


# ----------------------------------------------------------------------------------------------------------
# The exports of a training run


def _resnet_export(path: Path) -> Path:
    """A tiny Fixup ResNet exported as training does (weights perturbed: Fixup zeroes branch ends at init)."""
    from fixup_transformer.training.checkpoint import export_pretrained
    from fixup_transformer.vision import (
        FixupResNetConfig,
        FixupResNetForImageClassification,
        FixupResNetImageProcessor,
    )

    torch.manual_seed(0)
    model = FixupResNetForImageClassification(
        FixupResNetConfig(depth=8, width_multiplier=0.25, num_labels=10)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return export_pretrained(
        model,
        path,
        tokenizer=FixupResNetImageProcessor(),
        finalize=lambda tmp: hub.add_remote_code(tmp, model.config),
    )


@pytest.fixture(scope="module")
def remote(run, multi30k, tmp_path_factory):
    """One subprocess without the package loads every export (MT and ResNet) and reports what it got."""
    tmp_path = tmp_path_factory.mktemp("remote")
    sources, targets = _real_pairs(multi30k)
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "exports": {name: str(run["dir"] / name) for name in EXPORTS},
        "vision": str(_resnet_export(tmp_path / "resnet")),
        "sources": sources,
        "targets": targets,
        "out": str(out),
        "model_id": f"'{PUSH_REPO}'",  # the best card names the pushed repository
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "load.py").write_text(BLOCKER + textwrap.dedent(LOADER))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),  # not the user cache
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # tiny models: threads only contend on shared cores
    )
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(tmp_path / "args.json")],
        cwd=tmp_path,  # not the repository, whose source tree would be importable
        env=env,
        stdin=subprocess.DEVNULL,  # transformers' "run custom code?" prompt reads EOF and declines
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**args, "report": json.loads((out / "report.json").read_text()), "out": out}


@pytest.mark.slow
def test_every_mt_export_loads_without_the_package(run, remote):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from fixup_transformer import FixupTransformerForConditionalGeneration
    from fixup_transformer.evaluation import GenerationSettings, translate_corpus

    run_dir, report, out = run["dir"], remote["report"], remote["out"]
    sources, targets = remote["sources"], remote["targets"]
    for name in EXPORTS:
        assert report[name]["module"].startswith("transformers_modules.")  # the copied code, not the package
        assert report[name]["class"] == "FixupTransformerForConditionalGeneration"
        assert "trust_remote_code=True" in report[name]["refused"]  # no silent code execution without it
        tokenizer = AutoTokenizer.from_pretrained(run_dir / name)
        src = tokenizer(sources, return_tensors="pt", padding=True)
        tgt = tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]
        remote = load_file(str(out / f"{name}.safetensors"))["logits"]
        for trust in (False, True):  # installed package: its registered classes win either way
            model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / name, trust_remote_code=trust).eval()
            assert type(model) is FixupTransformerForConditionalGeneration
            with torch.no_grad():
                logits = model(**src, decoder_input_ids=tgt).logits
            torch.testing.assert_close(remote, logits, rtol=0, atol=0)
    assert not torch.equal(
        load_file(str(out / "best.safetensors"))["logits"],
        load_file(str(out / "averaged.safetensors"))["logits"],
    )  # the comparison above is not trivially between identical models
    assert report["resaved_equal"]

    # The card's snippet translates like the package's own corpus translation with the same settings.
    ev = run["cfg"].eval
    info = json.loads((run_dir / "best" / "export_info.json").read_text())
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "best")
    expected = translate_corpus(
        model,
        AutoTokenizer.from_pretrained(run_dir / "best"),
        [info["example_source"]],
        GenerationSettings(
            num_beams=ev.beam, length_penalty=ev.lenpen, max_len_a=ev.max_len_a, max_len_b=ev.max_len_b
        ),
        show_progress=False,
    )
    assert report["snippet_output"] == expected


@pytest.mark.slow
def test_resnet_export_loads_without_the_package(remote):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from fixup_transformer.vision import FixupResNetForImageClassification

    report, vision = remote["report"]["vision"], Path(remote["vision"])
    assert report["model"].startswith("transformers_modules.") and report["processor"].startswith(
        "transformers_modules."
    )
    remote_out = load_file(str(remote["out"] / "vision.safetensors"))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = AutoImageProcessor.from_pretrained(vision)(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(remote_out["pixels"], pixels, rtol=0, atol=0)
    model = AutoModelForImageClassification.from_pretrained(vision, trust_remote_code=True).eval()
    assert type(model) is FixupResNetForImageClassification  # the installed package's class wins
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert logits.std() > 0  # the perturbed branches are active: not a comparison of zeros
    torch.testing.assert_close(remote_out["logits"], logits, rtol=0, atol=0)


@pytest.mark.slow
def test_model_cards_carry_hub_metadata_scores_and_budget(run):
    run_dir, summary = run["dir"], run["summary"]
    training_config = yaml.safe_load((run_dir / "best" / "training_config.yaml").read_text())
    for name in EXPORTS:
        card = ModelCard.load(run_dir / name / "README.md")
        data = card.data
        assert data.language == ["de", "en"] and data.license == "apache-2.0"
        assert data.datasets == ["bentrevett/multi30k"] and data.pipeline_tag == "translation"
        assert {"translation", "fixup", "normalization-free"} <= set(data.tags)
        info = json.loads((run_dir / name / "export_info.json").read_text())
        assert info["export"] == name and info["budget"]["updates"] == info["step"]
        # A plain generate() decodes as the run's test did, not with transformers' 20-token default.
        generation = json.loads((run_dir / name / "generation_config.json").read_text())
        assert (generation["num_beams"], generation["length_penalty"]) == (
            training_config["eval"]["beam"],
            training_config["eval"]["lenpen"],
        )
        assert generation["max_length"] > 20
        assert f"{info['budget']['updates']} updates" in card.text and "minutes of training" in card.text
        config_block = re.search(r"```yaml\n(.*?)```", card.text, flags=re.S).group(1)
        assert yaml.safe_load(config_block) == training_config
        valid = [r for r in data.eval_results if r.dataset_split == "validation"]
        assert valid[0].metric_value == round(info["valid_bleu"], 2)
        assert valid[0].metric_args["signature"].startswith("nrefs:1|case:mixed")
    # The test scores appear on the card of the export that was tested, with their signatures.
    tested = ModelCard.load(run_dir / summary["test_model"] / "README.md").data.eval_results
    test_bleu = next(r for r in tested if r.dataset_split == "test" and r.metric_type == "bleu")
    assert test_bleu.metric_value == round(summary["test"]["bleu"]["score"], 2)
    if training_config["data"]["test_limit"] is not None:  # part of the split: the entry says so
        assert f"first {training_config['data']['test_limit']} sentences" in test_bleu.metric_name
    assert test_bleu.metric_args["signature"] == summary["test"]["bleu"]["signature"]
    assert (
        "averaged" in (run_dir / "averaged" / "README.md").read_text()
        and "checkpoint-8" in (run_dir / "averaged" / "README.md").read_text()
    )


@pytest.mark.slow
def test_push_to_hub_uploads_the_best_export_at_the_end(run):
    run_dir, calls = run["dir"], run["calls"]
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    _, args, kwargs = calls[0]
    assert args == (PUSH_REPO,) and kwargs["exist_ok"] is True and kwargs["repo_type"] == "model"
    _, kwargs, files, card = calls[1]
    assert kwargs["repo_id"] == PUSH_REPO and Path(kwargs["folder_path"]) == run_dir / "best"
    assert ".tmp-*" in kwargs["ignore_patterns"]
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "modeling_fixup_transformer.py",
    } <= set(files)
    assert (run_dir / "results.json").is_file()  # the upload came after everything was saved
    # The uploaded card names the repository in its snippet and model-index.
    assert f"model_id = '{PUSH_REPO}'" in card and "name: fixup-multi30k-tiny" in card


@pytest.mark.slow
def test_a_failed_push_at_the_end_is_one_line_with_the_retry_command(run, tmp_path, monkeypatch, capsys):
    import shutil

    from fixup_transformer.cli import train_mt

    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    results = (copy / "results.json").read_bytes()

    def refused(*args, **kwargs):
        raise OSError("401 Client Error: Unauthorized\n\nInvalid username or password.")

    monkeypatch.setattr(hub, "create_repo", refused)
    argv = ["--config", str(TINY), "--data.data_dir", run["cfg"].data.data_dir, "--output_dir", str(copy),
            "--checkpoint.average_last", "2", "--train.push_to_hub", "someone/elsewhere"]  # fmt: skip
    assert train_mt.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: training finished and everything is saved"), err
    assert "Unauthorized Invalid username" in err
    assert f"Retry with: python -m fixup_transformer.hub {copy / 'best'} someone/elsewhere" in err
    assert (copy / "results.json").read_bytes() == results  # not recorded as pushed: a rerun retries


def test_push_refuses_an_incomplete_export_before_any_network_call(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "create_repo", lambda *a, **k: pytest.fail("create_repo called"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing model.safetensors"):
        hub.push_export(tmp_path, "someone/model")
    (tmp_path / "model.safetensors").write_text("x")
    with pytest.raises(ValueError, match="no auto_map"):
        hub.push_export(tmp_path, "someone/model")
    # save_pretrained of a model loaded with the package keeps auto_map but writes no code files.
    auto_map = {"AutoConfig": "configuration_fixup_transformer.FixupTransformerConfig"}
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": auto_map}))
    with pytest.raises(
        FileNotFoundError, match=r"auto_map names code that is not there \(configuration_fixup"
    ):
        hub.push_export(tmp_path, "someone/model")
    with pytest.raises(FileNotFoundError):
        push_best_export(tmp_path / "no-run", "someone/model")
    # The command line says the same in one line, exit 2, before any network call.
    assert hub.main([str(tmp_path), "someone/model"]) == 2
    assert hub.main([str(tmp_path / "nothing"), "bad repo id"]) == 2


@pytest.mark.parametrize("repo_id", ["no-namespace", "two//slashes", "bad name/x"])
def test_push_to_hub_repo_id_is_checked_before_training(repo_id):
    with pytest.raises(ConfigError, match="train.push_to_hub"):
        load_config(MTConfig, TINY, {"train.push_to_hub": repo_id})


def test_push_command_uploads_any_complete_export(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kwargs: calls.append((repo_id, kwargs)))
    monkeypatch.setattr(hub, "upload_folder", lambda **kwargs: calls.append(kwargs) or "https://hub/commit/1")
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "c.C"}}))
    (tmp_path / "model.safetensors").write_text("x")
    (tmp_path / "c.py").write_text("class C: ...\n")
    assert hub.main([str(tmp_path), "someone/resnet", "--private"]) == 0
    assert calls[0] == ("someone/resnet", {"repo_type": "model", "private": True, "exist_ok": True})
    assert Path(calls[1]["folder_path"]) == tmp_path and calls[1]["repo_id"] == "someone/resnet"
    assert capsys.readouterr().out.strip() == "https://hub/commit/1"


def test_remote_code_is_written_when_the_package_is_reached_through_a_symlink(tmp_path):
    # macOS /tmp, cluster home directories, editable installs through a link: the package path is not resolved.
    link = tmp_path / "link"
    link.symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    script = textwrap.dedent(
        """
        import sys
        from fixup_transformer import FixupTransformerConfig, FixupTransformerForConditionalGeneration
        from fixup_transformer.hub import add_remote_code
        config = FixupTransformerConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                        encoder_ffn_dim=32, decoder_ffn_dim=32)
        FixupTransformerForConditionalGeneration(config).save_pretrained(sys.argv[1])
        import fixup_transformer
        assert fixup_transformer.__file__.startswith(sys.argv[2]), fixup_transformer.__file__
        print(sorted(add_remote_code(sys.argv[1], config)))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(link), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out"), str(link)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "modeling_fixup_transformer.py" in done.stdout


def test_a_t_fixup_model_card_names_and_cites_t_fixup(run, tmp_path):
    import shutil

    from fixup_transformer.training.hub_export import build_model_card

    card = build_model_card(run["dir"] / "best")
    assert "T-Fixup" not in card.text and "t-fixup" not in card.data.tags
    export = tmp_path / "best"
    shutil.copytree(run["dir"] / "best", export)
    config = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**config, "init": "t_fixup"}))
    card = build_model_card(export)
    assert "made trainable by the T-Fixup initialization" in card.text and "huang2020improving" in card.text
    assert "t-fixup" in card.data.tags and "zhang2019fixup" in card.text  # Fixup is still cited
