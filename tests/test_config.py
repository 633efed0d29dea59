"""One config loader: unknown tables and keys, wrong types and unreadable files are one message;
the tool's own config.toml loads back and trains the run it records."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from feds2r.cli import main
from feds2r.client import ClientSettings
from feds2r.config import format_size, from_dict, load_tables, parse_size
from feds2r.data.world import synth_domain
from feds2r.engine.train import TrainConfig
from feds2r.errors import Feds2rError
from tests.conftest import TINY_RECIPE

TABLES = {"client": ClientSettings, "train": TrainConfig}


@pytest.fixture(scope="module")
def gta(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gta")
    synth_domain("gta5-like", root, split="train", num=4, size=(64, 128), progress=False)
    return f"gta5:{root}?split=train"


@pytest.mark.parametrize(
    "text, message",
    [
        ('presett = "m2f-cpu"\n[train]\nsteps = 3\n', "unknown key(s) or table(s) presett"),
        ("[distil]\nkd = 'mask'\n", "unknown key(s) or table(s) distil"),
        ("[client]\npresett = 'm2f-cpu'\n", "unknown key(s) presett in [client]"),
        ("[train]\nstepz = 3\n", "unknown key(s) stepz in [train]"),
        ("steps = 3\n", "unknown key(s) or table(s) steps"),
        ("train = 3\n", "train must be a table"),
        ('preset = "a"\n[client]\npreset = "b"\n', "preset is given twice"),
    ],
)
def test_unknown_tables_and_keys_are_one_message(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(Feds2rError) as err:
        load_tables(path, TABLES, top_level={"preset": "client"})
    assert message in str(err.value)
    assert "unknown" not in message or "valid" in str(err.value)  # and lists the valid keys


def test_top_level_preset_goes_to_its_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "segformer-cpu"\n[train]\nsteps = 3\n')
    tables = load_tables(path, TABLES, top_level={"preset": "client"})
    assert tables == {"client": {"preset": "segformer-cpu"}, "train": {"steps": 3}}


@pytest.mark.parametrize(
    "value, message",
    [
        ("2.5", "steps must be an integer, got 2.5"),
        ("true", "steps must be an integer, got True"),
        ('"3"', "steps must be an integer, got '3'"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(tmp_path, value, message):
    path = tmp_path / "c.toml"
    path.write_text(f"[train]\nsteps = {value}\nwarmup_steps = 1\n")
    data = load_tables(path, TABLES)["train"]
    with pytest.raises(Feds2rError, match=message):
        from_dict(TrainConfig, data, source=str(path))


def test_types_are_checked_and_normalised_in_python_too():
    with pytest.raises(TypeError, match="flip must be true or false"):
        TrainConfig(flip=1)
    with pytest.raises(TypeError, match="crop must be a list of 2 integers"):
        TrainConfig(crop=(32.5, 64))
    config = TrainConfig(lr=1, crop=[64, 128], steps=np.int64(200))
    assert isinstance(config.lr, float) and config.crop == (64, 128)
    assert type(config.steps) is int and config.steps == 200


def test_height_below_the_minimum_names_the_height_not_the_crop():
    with pytest.raises(ValueError, match="height must be >= 16 pixels, got 7"):
        TrainConfig(height=7)
    with pytest.raises(ValueError, match="crop sides must be >= 16 pixels, got 8x64"):
        TrainConfig(crop=(8, 64))


@pytest.mark.parametrize("kind", ["directory", "binary", "missing", "bad toml"])
def test_unreadable_config_files_are_one_message(tmp_path, gta, capsys, kind):
    path = tmp_path / "c.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    elif kind == "bad toml":
        path.write_text("[train\n")
    code = main(["client", "train", "--data", gta, "--config", str(path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: config file") and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_runs_own_config_toml_trains_the_same_run(gta, tmp_path, capsys):
    flags = ["--steps", "2", "--warmup-steps", "1", *TINY_RECIPE, "--no-pretrained"]
    first = ["client", "train", "--data", gta, "--preset", "segformer-cpu", *flags]
    assert main([*first, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    recorded = tomllib.loads((tmp_path / "a/config.toml").read_text())
    assert recorded["client"]["preset"] == "segformer-cpu"  # not the default m2f-cpu
    args = ["client", "train", "--config", str(tmp_path / "a/config.toml"), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # no --data, --preset: the file's
    meta_a = json.loads((tmp_path / "a/model.json").read_text())
    meta_b = json.loads((tmp_path / "b/model.json").read_text())
    assert meta_b["preset"] == "segformer-cpu" and meta_b["data"] == meta_a["data"]
    assert meta_b["train_config"] == meta_a["train_config"]
    assert (tmp_path / "b/config.toml").read_text() == (tmp_path / "a/config.toml").read_text()
    a = load_file(str(tmp_path / "a/model.safetensors"))
    b = load_file(str(tmp_path / "b/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_server_distill_config_toml_loads_back(tmp_path):
    from feds2r.config import to_toml
    from feds2r.server.distill import DistillConfig, DistillInputs

    server = {"clients": ["runs/a", "runs/b"], "data": "cityscapes:x", "generated": ""}
    path = tmp_path / "config.toml"
    path.write_text(
        to_toml({"server": server, "distill": DistillConfig(), "train": TrainConfig(steps=700)})
    )
    tables = load_tables(
        path, {"server": DistillInputs, "distill": DistillConfig, "train": TrainConfig}
    )
    assert from_dict(DistillInputs, tables["server"]).clients == ("runs/a", "runs/b")
    assert from_dict(DistillConfig, tables["distill"]) == DistillConfig()
    assert from_dict(TrainConfig, tables["train"]) == TrainConfig(steps=700)


def test_sizes_parse_and_format_as_hxw():
    assert parse_size("256x512") == (256, 512) and parse_size("64X128") == (64, 128)
    assert format_size((128, 256)) == "128x256" and parse_size(format_size((7, 9))) == (7, 9)
    for bad in ("256", "256x", "x512", "axb", "1x2x3", "0x512", "256x-4", ""):
        with pytest.raises(ValueError, match=f"expected HxW .*got {bad!r}"):
            parse_size(bad)


def test_nested_configs_round_trip_through_toml_and_the_flat_run_config():
    from feds2r.config import flatten, to_toml, unflatten
    from feds2r.pretrain import PretrainConfig
    from feds2r.server.distill import DistillInputs
    from feds2r.server.pipeline import GenerationConfig, ServerConfig

    server = ServerConfig(generation=GenerationConfig(size=(64, 128)), train=TrainConfig(steps=900))
    for config in (TrainConfig(scale=(1.0, 1.25)), PretrainConfig(), server,
                   DistillInputs(clients=("runs/a", "runs/b"))):  # fmt: skip
        flat = flatten(config)
        assert all(isinstance(v, bool | int | float | str) for v in flat.values())
        assert unflatten(type(config), flat) == config
        table = tomllib.loads(to_toml({"c": config}))["c"]
        assert from_dict(type(config), table) == config
    assert flatten(server)["train.crop"] == "128x256" and "generation.size" in flatten(server)
    assert "size" not in flatten(GenerationConfig())  # None: left out, the default


def test_a_partial_nested_table_keeps_the_rest_of_the_fields_default():
    from feds2r.pretrain import PretrainConfig

    config = from_dict(PretrainConfig, {"train": {"steps": 5, "warmup_steps": 1}})
    assert config.train == dataclasses.replace(PretrainConfig().train, steps=5, warmup_steps=1)
    with pytest.raises(Feds2rError, match=r"\[train\]: unknown key\(s\) stepz"):
        from_dict(PretrainConfig, {"train": {"stepz": 5}})


def test_flat_values_are_type_checked_and_unknown_keys_suggest_the_closest():
    from feds2r.config import unflatten

    assert unflatten(TrainConfig, {"crop": "64x128", "lr": 1}).crop == (64, 128)
    with pytest.raises(Feds2rError, match="crop: expected HxW"):
        unflatten(TrainConfig, {"crop": "64"})
    with pytest.raises(Feds2rError, match="steps must be an integer"):
        unflatten(TrainConfig, {"steps": "many"})
    with pytest.raises(Feds2rError, match="did you mean 'batch-size'"):
        unflatten(TrainConfig, {"batch-sise": 4})
    base = TrainConfig(steps=7, warmup_steps=2)
    assert unflatten(TrainConfig, {"lr": 0.1}, base=base) == dataclasses.replace(base, lr=0.1)


def test_field_docs_are_the_strings_under_the_fields():
    from feds2r.config import field_docs

    docs = field_docs(TrainConfig)
    assert docs["steps"] == "Optimizer steps."
    assert docs["threads"].startswith("Intra-op CPU threads") and "\n" in docs["threads"]

    @dataclasses.dataclass(frozen=True)
    class Partly:
        documented: int = 1
        """Has a docstring."""
        bare: int = 2

    assert field_docs(Partly) == {"documented": "Has a docstring."}  # no docstring, no entry


def test_docs_config_md_is_the_generated_field_table():
    """docs/config.md cannot drift from the code: regenerate it with
    `python scripts/config_docs.py docs/config.md`."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).parents[1]
    script = root / "scripts" / "config_docs.py"
    spec = importlib.util.spec_from_file_location("config_docs", script)
    config_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_docs)
    text = (root / "docs" / "config.md").read_text()
    assert config_docs.with_reference(text) == text, "run: python scripts/config_docs.py"
    for cls in config_docs.reference_classes():
        assert f"### {cls.__name__}\n" in text
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text
