"""The federation's plain functions: reply checks, privacy of the messages, failures, staging."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from feds2r.config import from_dict
from feds2r.data.labels import CLASS_NAMES
from feds2r.errors import Feds2rError
from feds2r.federation.protocol import (
    REPLY_METADATA,
    FederationConfig,
    FederationError,
    Reply,
    check_reply,
    client_round,
    in_process_send,
    run_federation,
    train_settings,
)
from feds2r.models import create_model
from tests.federation.conftest import tiny_config


def honest_meta(**changes):
    meta = {
        "client": "a",
        "preset": "m2f-cpu",
        "class-names": list(CLASS_NAMES),
        "steps": 2,
        "train-seconds": 1.0,
        "feds2r-version": "0.1.0",
    }
    meta.update(changes)
    return meta


def test_check_reply_accepts_a_fitting_model_and_names_each_defect():
    state = create_model("m2f-cpu").state_dict()
    assert check_reply(state, honest_meta(), "m2f-cpu").preset.name == "m2f-cpu"
    cases = [
        (state, honest_meta(preset="segformer-cpu"), "model preset is 'segformer-cpu'"),
        (state, honest_meta(**{"class-names": ["road"] * 19}), "classes differ"),
        (state, {**honest_meta(), "image-count": 5}, "undocumented metadata"),
        (state, {k: v for k, v in honest_meta().items() if k != "steps"}, "lacks 'steps'"),
        (create_model("segformer-cpu").state_dict(), honest_meta(), "does not fit"),
    ]
    bad_shape = dict(state)
    key = next(k for k, v in state.items() if v.ndim == 2)
    bad_shape[key] = torch.zeros(3, 3)
    cases.append((bad_shape, honest_meta(), f"tensor {key} has shape (3, 3)"))
    nan = dict(state)
    nan[key] = torch.full_like(state[key], float("nan"))
    cases.append((nan, honest_meta(), "NaN"))
    for st, meta, message in cases:
        with pytest.raises(FederationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_reply(st, meta, "m2f-cpu")


def test_client_reply_carries_model_tensors_and_documented_metadata_only(tiny_world, tmp_path):
    """Privacy: nothing but the model's own tensors and the small documented record."""
    torch.manual_seed(0)
    init = create_model("m2f-cpu").state_dict()
    config = tiny_config(tmp_path / "out", tiny_world)
    spec = tiny_world["clients"]["gta5"]
    state, meta = client_round(init, train_settings(config), spec, name="gta5")
    assert set(state) == set(init)
    assert all(state[k].shape == init[k].shape for k in init)
    assert set(meta) == set(REPLY_METADATA)
    text = json.dumps(meta)
    assert str(tiny_world["root"]) not in text and "gta5-like" not in text
    assert len(text) < 1000
    check_reply(state, meta, "m2f-cpu")


def test_flower_client_app_reply_holds_only_arrays_and_metadata(tiny_world, tmp_path, monkeypatch):
    flwr = pytest.importorskip("flwr")
    del flwr
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    # outside a SuperNode no run is set; Message() reads the run id from here
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)

    from feds2r.federation.client_app import train

    torch.manual_seed(0)
    init = create_model("m2f-cpu").state_dict()
    config = tiny_config(tmp_path / "out", tiny_world)
    msg = Message(
        content=RecordDict(
            {
                "arrays": ArrayRecord(torch_state_dict=init),
                "config": ConfigRecord(train_settings(config)),
            }
        ),
        dst_node_id=1,
        message_type="train",
    )
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"data": tiny_world["clients"]["synthia"], "name": "synthia"},
        state=RecordDict(),
        run_config={},
    )
    reply = train(msg, ctx)
    assert set(reply.content.keys()) == {"arrays", "meta"}
    arrays = reply.content["arrays"].to_torch_state_dict()
    assert set(arrays) == set(init)
    meta = dict(reply.content["meta"])
    assert set(meta) == set(REPLY_METADATA) and meta["client"] == "synthia"
    assert str(tiny_world["root"]) not in json.dumps({k: str(v) for k, v in meta.items()})


def test_server_sends_only_the_initial_model_and_scalar_settings(tiny_world, tmp_path):
    """The server's images never leave it: the one message holds the model and settings."""
    seen = {}

    def send(init_state, settings):
        seen["state"], seen["settings"] = init_state, settings
        return []

    config = tiny_config(tmp_path / "out", tiny_world, min_clients=1)
    with pytest.raises(FederationError, match="only 0 of 0 clients"):
        run_federation(send, config, progress=False, log=lambda _t: None)
    assert set(seen["state"]) == set(create_model("m2f-cpu").state_dict())
    assert all(isinstance(v, int | float | str) for v in seen["settings"].values())
    assert set(seen["settings"]) == {
        "preset", "steps", "batch-size", "height", "crop", "lr", "warmup-steps", "seed"
    }  # fmt: skip
    assert "cityscapes" not in json.dumps(seen["settings"])


def test_failed_and_rejected_clients_are_reported_and_the_run_goes_on(tiny_world, tmp_path):
    clients = dict(tiny_world["clients"])
    clients["broken"] = "cityscapes:/nonexistent/folder?split=train"
    client_log = []
    good = in_process_send(clients, client_log=client_log.append)

    def send(init_state, settings):
        replies = good(init_state, settings)
        replies.append(Reply("wrong", create_model("segformer-cpu").state_dict(), honest_meta()))
        return replies

    config = tiny_config(tmp_path / "out", tiny_world, min_clients=3)
    logged = []
    results = run_federation(send, config, progress=False, log=logged.append)
    assert results["accepted"] == ["gta5", "synscapes", "synthia"]
    assert results["clients"]["broken"]["status"] == "failed"
    # the server learns the category, the client's own log keeps the path
    reason = results["clients"]["broken"]["reason"]
    assert reason == "client failed: data error on the client; see the client's log"
    assert any("/nonexistent/folder" in line for line in client_log)
    assert "nonexistent" not in json.dumps(results) + "\n".join(logged)
    assert results["clients"]["wrong"]["reason"].startswith("rejected: the reply's model")
    assert any("client wrong: rejected" in line for line in logged)
    out = tmp_path / "out"
    assert (out / "global" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "clients").iterdir()) == results["accepted"]
    assert 0.0 <= results["miou"]["cs"] <= 100.0
    assert json.loads((out / "results.json").read_text())["accepted"] == results["accepted"]
    # no path points into the staging folder that was renamed to out
    for path in out.rglob("*.json"):
        assert ".partial-" not in path.read_text(), path
    assert str(out / "generated") in results["generated"]["spec"]
    sidecar = json.loads((out / "global" / "model.json").read_text())
    assert str(out / "clients" / "gta5") in json.dumps(sidecar)
    # the run's config.toml is the config it ran with, and loads back into it
    recorded = tomllib.loads((out / "config.toml").read_text())["federation"]
    assert from_dict(FederationConfig, recorded) == config


def test_too_few_clients_stop_the_run_and_leave_nothing_behind(tiny_world, tmp_path):
    clients = {"gta5": tiny_world["clients"]["gta5"], "broken": "gta5:/nonexistent?split=train"}
    config = tiny_config(tmp_path / "out", tiny_world, min_clients=2)
    with pytest.raises(FederationError, match="only 1 of 2 clients sent a valid model") as err:
        run_federation(in_process_send(clients), config, progress=False, log=lambda _t: None)
    assert "broken:" in str(err.value) and "min-clients=2" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no output folder, no staging folder


def test_output_folder_must_be_new_or_empty_and_absolute(tiny_world, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    config = tiny_config(tmp_path / "out", tiny_world)
    with pytest.raises(FederationError, match="not empty"):
        run_federation(lambda s, c: [], config, progress=False)
    with pytest.raises(FederationError, match="absolute"):
        tiny_config("relative/out", tiny_world)


def flower_flat(table: dict, prefix: str = "") -> dict:
    """A ``[tool.flwr.app.config]`` table flattened as Flower does (nested keys joined by dots)."""
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flower_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_pyproject_run_config_lists_every_federation_setting_with_its_default():
    import tomllib
    from pathlib import Path

    from feds2r.config import flat_keys
    from feds2r.federation.local import run_config_values
    from feds2r.federation.protocol import FederationConfig

    root = Path(__file__).parents[2]
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"]["serverapp"] == "feds2r.federation.server_app:app"
    config = flower_flat(app["config"])
    defaults = run_config_values(FederationConfig(out="/x", server_data="a:b"))
    assert set(config) == set(defaults)
    assert {k: v for k, v in config.items() if k not in ("out", "server-data")} == {
        k: v for k, v in defaults.items() if k not in ("out", "server-data")
    }
    parsed = FederationConfig.from_run_config({**config, "out": "/x", "server-data": "a:b"})
    assert parsed == FederationConfig(out="/x", server_data="a:b")
    # every field is listed but the one whose default is None (the server images' size)
    assert set(flat_keys(FederationConfig)) - set(defaults) == {"server.generation.size"}


def test_the_flat_run_config_of_earlier_versions_gives_the_same_federation():
    """An app written before the config tree (flat keys) runs as it did: each old key sets the
    clients' recipe and the distillation's, and the seed the generated images' too."""
    from feds2r.federation.protocol import FederationConfig

    old = {"out": "/x", "server-data": "a:b", "preset": "segformer-cpu", "client-steps": 300,
           "distill-steps": 200, "batch-size": 4, "height": 64, "crop": "64x128", "lr": 0.001,
           "warmup-steps": 20, "seed": 3, "generated-images": 10, "min-clients": 2}  # fmt: skip
    config = FederationConfig.from_run_config(old)
    assert (config.clients.steps, config.server.train.steps) == (300, 200)
    for recipe in (config.clients, config.server.train):
        assert (recipe.batch_size, recipe.height, recipe.crop) == (4, 64, (64, 128))
        assert (recipe.lr, recipe.warmup_steps, recipe.seed) == (0.001, 20, 3)
        assert recipe.checkpoint_every == 100  # the federation's recipe, not TrainConfig's
    assert config.server.generation.images == 10 and config.server.generation.seed == 3
    # the global model's preset: "" (the clients', the federation's); another one is refused
    assert config.server.distill.student == ""
    with pytest.raises(Feds2rError, match="differs from preset"):
        FederationConfig.from_run_config({**old, "server.distill.student": "m2f-cpu"})
    with pytest.raises(Feds2rError, match="clients.seed is given twice"):
        FederationConfig.from_run_config({**old, "clients.seed": 4})
    with pytest.raises(Feds2rError, match="did you mean 'clients.steps'"):
        FederationConfig.from_run_config({**old, "clients.step": 4})


def test_the_federation_config_toml_loads_back_into_the_same_config(tmp_path):
    import tomllib

    from feds2r.config import from_dict, write_run_config
    from feds2r.federation.protocol import FederationConfig

    config = FederationConfig.from_run_config(
        {"out": "/x", "server-data": "a:b", "seed": 5, "crop": "64x128", "evaluate": "cs=c:d",
         "server.rule.std-factor": 1.0, "server.generation.size": "32x64",
         "clients.scale": "1.0,1.25"}
    )  # fmt: skip
    path = write_run_config(tmp_path, {"federation": config})
    loaded = from_dict(FederationConfig, tomllib.loads(path.read_text())["federation"])
    assert loaded == config and loaded.server.generation.size == (32, 64)


def test_train_settings_carry_the_recipe_fields_that_differ_from_the_clients_default():
    import dataclasses

    from feds2r.federation.protocol import FederationConfig, client_recipe

    config = FederationConfig(out="/x", server_data="a:b")
    assert client_recipe(train_settings(config)) == config.clients  # nothing is lost
    changed = dataclasses.replace(
        config, clients=dataclasses.replace(config.clients, scale=(1.0, 1.25), flip=False)
    )
    settings = train_settings(changed)
    assert settings["scale"] == "1.0,1.25" and settings["flip"] is False
    assert client_recipe(settings) == changed.clients
    with pytest.raises(Feds2rError, match="unknown key 'stepz'"):
        client_recipe({**settings, "stepz": 3})
    with pytest.raises(FederationError, match="clients.device is each client machine's own"):
        dataclasses.replace(config, clients=dataclasses.replace(config.clients, device="cpu"))


class FakeGrid:
    """Stands in for Flower's Grid: fixed node ids, replies from a function."""

    def __init__(self, nodes, reply=lambda messages: []):
        self.nodes, self.reply, self.sent = nodes, reply, []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        self.sent = list(messages)
        self.timeout = timeout
        return self.reply(self.sent)


def test_server_app_names_clients_that_do_not_reply_in_time(tmp_path, monkeypatch, tiny_world):
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    from feds2r.federation.server_app import grid_send

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)
    config = tiny_config(tmp_path / "out", tiny_world, num_clients=2, client_timeout=5.0)
    grid = FakeGrid([11, 12])
    state = create_model("m2f-cpu").state_dict()
    replies = grid_send(grid, config)(state, train_settings(config))
    assert [m.metadata.dst_node_id for m in grid.sent] == [11, 12]
    assert all(m.metadata.message_type == "train" for m in grid.sent)
    assert grid.timeout == 5.0
    assert [r.client for r in replies] == ["node-11", "node-12"]
    assert all(r.error == "no reply within client-timeout=5 s" for r in replies)


def test_server_app_stops_when_too_few_supernodes_connect(tmp_path, tiny_world):
    pytest.importorskip("flwr")
    from feds2r.federation.server_app import grid_send

    config = tiny_config(
        tmp_path / "out", tiny_world, num_clients=0, min_clients=2, connect_timeout=0.5
    )
    send = grid_send(FakeGrid([7]), config)
    with pytest.raises(FederationError, match="only 1 SuperNodes connected within connect"):
        send({}, {})


def test_a_failed_flower_client_sends_its_name_and_a_category_not_its_paths(
    tmp_path, monkeypatch, tiny_world, capsys
):
    """The ClientApp's failure reply carries FAILURE_METADATA only; the server keys it by name."""
    pytest.importorskip("flwr")
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from feds2r.federation.client_app import train
    from feds2r.federation.protocol import FAILURE_METADATA
    from feds2r.federation.server_app import grid_send

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)
    secret = "gta5:/nonexistent/secret-folder?split=train"
    ctx = Context(
        run_id=1,
        node_id=11,
        node_config={"data": secret, "name": "gta5"},
        state=RecordDict(),
        run_config={},
    )
    replies = []

    def answer(messages):
        replies.extend(train(m, ctx) for m in messages)
        return replies

    config = tiny_config(tmp_path / "out", tiny_world, num_clients=1)
    state = create_model("m2f-cpu").state_dict()
    got = grid_send(FakeGrid([11], answer), config)(state, train_settings(config))
    assert set(replies[0].content.keys()) == {"failure"}
    failure = dict(replies[0].content["failure"])
    assert set(failure) == set(FAILURE_METADATA)
    assert failure == {"client": "gta5", "reason": "data error on the client; see the client's log"}
    assert [(r.client, r.node_id) for r in got] == [("gta5", 11)]
    assert got[0].error == "client failed: data error on the client; see the client's log"
    assert "secret-folder" in capsys.readouterr().err  # the detail stays in the client's log


def test_client_names_that_would_leave_the_clients_folder_are_refused():
    from pathlib import Path

    from feds2r.federation.protocol import check_client_name, folder_name

    for bad in (".", "..", "../x", "a/b", "a\\b", "", ".hidden", "x" * 65):
        with pytest.raises(FederationError, match="not allowed"):
            check_client_name(bad)
        # a name from a remote client is turned into one safe folder name instead
        folder = Path("/srv/clients") / folder_name(bad, {})
        assert folder.parent == Path("/srv/clients") and folder.name not in (".", "..")
    assert check_client_name("gta5.v2_a-1") == "gta5.v2_a-1"


def test_a_missing_server_dataset_is_found_before_any_client_trains(tiny_world, tmp_path):
    from feds2r.errors import DataError

    called = []
    config = tiny_config(
        tmp_path / "out", tiny_world, server_data="cityscapes:/nonexistent/cs?split=train"
    )
    with pytest.raises(DataError, match="--server-data cityscapes:/nonexistent/cs"):
        run_federation(lambda s, c: called.append(1) or [], config, progress=False)
    bad_eval = tiny_config(tmp_path / "out", tiny_world, evaluate="cs=cityscapes:/nonexistent")
    with pytest.raises(DataError, match="--evaluate cs="):
        run_federation(lambda s, c: called.append(1) or [], bad_eval, progress=False)
    assert called == [] and list(tmp_path.iterdir()) == []
