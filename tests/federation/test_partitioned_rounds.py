"""Rounds on a class-heterogeneous partition: a seeded sample of clients per round, a client
training on its part with CE or BackCE, and the same flow on Flower's Simulation Engine."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from feds2r.data.partition import make_partition, part_spec  # noqa: E402
from feds2r.errors import Feds2rError  # noqa: E402
from feds2r.federation.round_client import client_update  # noqa: E402
from feds2r.federation.rounds import CountedFedAvg, InProcessGrid, _task_identity  # noqa: E402
from feds2r.models import create_model  # noqa: E402
from tests.federation.conftest import tiny_config  # noqa: E402


def _echo(msg: Message, context) -> Message:
    content = RecordDict(
        {
            "arrays": msg.content["arrays"],
            "metrics": MetricRecord({"num-examples": 1, "train-steps": 1}),
            "meta": ConfigRecord({"client": context.node_config["name"]}),
        }
    )
    return Message(content=content, reply_to=msg)


def _samples(seed: int) -> list[list[str]]:
    """The clients a strategy drawing 2 of 4 per round sends to in rounds 1-4."""
    with _task_identity():
        strategy = CountedFedAvg(
            min_clients=2, per_round=2, available=4, sample_seed=seed, log=lambda _t: None
        )
        grid = InProcessGrid({n: "-" for n in ("a", "b", "c", "d")}, handler=_echo)
        arrays = ArrayRecord(torch_state_dict={"w": torch.zeros(2)})
        drawn = []
        for r in range(1, 5):
            messages = list(strategy.configure_train(r, arrays, ConfigRecord({}), grid))
            strategy.aggregate_train(r, grid.send_and_receive(messages))
            drawn.append(strategy.history[-1]["clients"])
    return drawn


def test_clients_per_round_are_a_seeded_sample_and_leave_random_alone():
    random.seed(123)
    state = random.getstate()
    first = _samples(seed=0)
    assert random.getstate() == state  # Flower's sampling ran on its own seeded state
    assert all(len(clients) == 2 for clients in first)
    assert len({tuple(c) for c in first}) > 1  # not the same two every round
    assert _samples(seed=0) == first and _samples(seed=1) != first
    with pytest.raises(Feds2rError, match="below min-clients"):
        CountedFedAvg(min_clients=3, per_round=2, available=4)


@pytest.fixture(scope="module")
def parts(tiny_world, tmp_path_factory):
    """The tiny world's 6 cityscapes-like images split at random over 3 clients."""
    path = tmp_path_factory.mktemp("parts") / "partition.json"
    partition = make_partition(tiny_world["server"], "iid", num_clients=3, seed=0)
    partition.save(path)
    return {p.name: part_spec(path, p.name) for p in partition.parts}


def _settings(preset: str, loss: str) -> dict:
    return {"preset": preset, "steps": 2, "batch-size": 2, "height": 32, "crop": (32, 64),
            "lr": 1e-3, "warmup-steps": 1, "seed": 0, "method": "fedavg", "rounds": 2,
            "server-round": 1, "loss": loss}  # fmt: skip


@pytest.mark.parametrize("loss", ["ce", "backce"])
def test_a_client_trains_on_its_part(parts, loss):
    torch.manual_seed(0)
    start = create_model("segformer-cpu").state_dict()
    state, metrics = client_update(start, _settings("segformer-cpu", loss), parts["client-01"],
                                   name="client-01")  # fmt: skip
    assert metrics["num-examples"] == 2 and metrics["train-steps"] == 1
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(state[k], v) for k, v in start.items())


def test_backce_needs_a_per_pixel_preset_and_a_known_loss(parts):
    start = create_model("m2f-cpu").state_dict()
    with pytest.raises(Feds2rError, match="per-pixel"):
        client_update(start, _settings("m2f-cpu", "backce"), parts["client-00"], name="c")
    with pytest.raises(Feds2rError, match="unknown round loss"):
        client_update(start, _settings("m2f-cpu", "dice"), parts["client-00"], name="c")


@pytest.mark.slow
def test_fedseg_rounds_on_the_simulation_engine(parts, tiny_world, tmp_path):
    pytest.importorskip("ray")
    from feds2r.federation.simulation import run_rounds_simulation

    config = tiny_config(tmp_path / "sim", tiny_world, preset="segformer-cpu", method="fedseg",
                         rounds=2, client_steps=2, min_clients=2, evaluate="")  # fmt: skip
    results = run_rounds_simulation(
        parts, config, clients_per_round=2, loss="backce", log=lambda _t: None
    )
    assert results["method"] == "fedseg" and results["loss"] == "backce"
    assert [len(h["clients"]) for h in results["history"]] == [2, 2]
    assert {c for h in results["history"] for c in h["clients"]} <= set(parts)
    assert results["communication"]["total"]["train_steps"] == 2 * 2 * 1
    assert (tmp_path / "sim" / "global" / "model.safetensors").is_file()


def test_a_deployments_run_config_sets_the_loss_and_the_clients_per_round(parts, tiny_world,
                                                                           tmp_path):  # fmt: skip
    from feds2r.federation.rounds import run_rounds_in_process

    # what the ServerApp of a deployment has: the run config only, no keyword options
    config = tiny_config(tmp_path / "dep", tiny_world, preset="segformer-cpu", method="fedavg",
                         rounds=2, client_steps=2, min_clients=2, evaluate="",
                         clients_per_round=2, round_loss="backce")  # fmt: skip
    assert (config.multiround.clients_per_round, config.multiround.loss) == (2, "backce")
    results = run_rounds_in_process(parts, config, log=lambda _t: None)
    assert results["loss"] == "backce" and results["clients_per_round"] == 2
    assert [len(h["clients"]) for h in results["history"]] == [2, 2]
    with pytest.raises(Feds2rError, match="loss must be one of ce, backce"):
        tiny_config(tmp_path / "bad", tiny_world, method="fedavg", round_loss="dice")
