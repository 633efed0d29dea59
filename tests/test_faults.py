"""A small fault suite: fuzzed sidecars, checkpoints and config files end in feds2r's own error.

Each case is a random mutation of a valid input (seeded, so a failure is reproducible from its
number). The promise checked: a hostile or damaged input either still loads (the mutation left it
valid) or raises a :class:`Feds2rError` with a message, never another exception (a bare
traceback for the user), and never runs code. docs/reliability.md lists the other fault tests
(signals, kill -9 then resume, hostile endpoints).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from feds2r.client import ClientSettings
from feds2r.config import from_dict, load_tables
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.train import TrainConfig
from feds2r.errors import Feds2rError
from feds2r.models import create_model

CASES = 60
ODD_VALUES = [None, True, -1, 0, 2.5, 1e309, "", "abc", "m2f-cpu", [], [1, "x"], {}, {"a": {}}]


def _mutate_json(value, rng: random.Random):
    """One random change somewhere inside a JSON value."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        out = dict(value)
        action = rng.random()
        if action < 0.25:
            del out[key]
        elif action < 0.6:
            out[key] = rng.choice(ODD_VALUES)
        else:
            out[key] = _mutate_json(out[key], rng)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = rng.choice(ODD_VALUES) if rng.random() < 0.5 else _mutate_json(out[i], rng)
        return out
    return rng.choice(ODD_VALUES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(create_model("segformer-cpu"), path, meta={"role": "client"})
    return path


@pytest.mark.parametrize("case", range(CASES))
def test_fuzzed_sidecar_is_loaded_or_refused_with_a_message(case, checkpoint, tmp_path):
    rng = random.Random(case)
    meta = json.loads((checkpoint / "model.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    text = json.dumps(_mutate_json(meta, rng))
    if case % 5 == 0:  # also damaged text: cut short or with a stray byte
        cut = rng.randrange(len(text))
        text = text[:cut] if case % 10 == 0 else text[:cut] + "\x00" + text[cut:]
    (tmp_path / "model.json").write_text(text)
    try:
        load_checkpoint(tmp_path)
    except Feds2rError as exc:
        assert str(exc)


@pytest.mark.parametrize("case", range(CASES))
def test_fuzzed_weights_file_is_loaded_or_refused_with_a_message(case, checkpoint, tmp_path):
    rng = random.Random(1000 + case)
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    action = case % 3
    if action == 0:  # flip bytes in the header or the length
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(min(len(data), 600))] = rng.randrange(256)
    elif action == 1:  # cut short
        data = data[: rng.randrange(len(data))]
    else:  # random bytes after a plausible start
        data = data[:8] + bytearray(rng.randbytes(rng.randint(0, 2000)))
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    (tmp_path / "model.json").write_text((checkpoint / "model.json").read_text())
    try:
        load_checkpoint(tmp_path)
    except Feds2rError as exc:
        assert str(exc)


VALID_CONFIG = {
    "client": {"data": "gta5:/data/gta5", "preset": "m2f-cpu", "backbone_weights": "public"},
    "train": {"steps": 10, "batch_size": 2, "crop": [64, 128], "height": 64, "lr": 0.001},
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float) and v == float("inf"):
        return "inf"
    return repr(v)


@pytest.mark.parametrize("case", range(CASES))
def test_fuzzed_config_file_is_accepted_or_refused_with_a_message(case, tmp_path):
    rng = random.Random(2000 + case)
    config = _mutate_json(VALID_CONFIG, rng)
    if not isinstance(config, dict):
        config = {"value": config}
    lines = []
    for name, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        elif table is not None:
            lines.insert(0, f"{name} = {_toml_value(table)}")
    text = "\n".join(lines) + "\n"
    if case % 6 == 0:
        text = text[: rng.randrange(len(text) + 1)]
    path = tmp_path / "config.toml"
    path.write_text(text)
    try:
        tables = load_tables(
            path, {"client": ClientSettings, "train": TrainConfig}, top_level={"preset": "client"}
        )
        from_dict(ClientSettings, tables["client"])
        from_dict(TrainConfig, tables["train"])
    except Feds2rError as exc:
        assert str(exc)
