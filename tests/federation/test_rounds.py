"""Multi-round flows (feds2r/federation/rounds.py): FedAvg's aggregation, the round steps, the
proximal term, the byte counts, and FedAvg / FedProx / FedSeg in one process on a tiny world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common.serde import recorddict_to_proto  # noqa: E402

from feds2r.federation.round_client import proximal_term, round_steps  # noqa: E402
from feds2r.federation.rounds import (  # noqa: E402
    CountedFedAvg,
    InProcessGrid,
    _task_identity,
    content_bytes,
    run_rounds_in_process,
)
from tests.federation.conftest import tiny_config  # noqa: E402


def test_round_steps_cover_the_recipe_once():
    spans = [round_steps(300, 7, r) for r in range(1, 8)]
    assert spans[0][0] == 0 and spans[-1][1] == 300
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert round_steps(300, 5, 3) == (120, 180)
    with pytest.raises(ValueError, match="not one of"):
        round_steps(300, 5, 6)


def test_proximal_term_is_half_mu_times_the_squared_distance():
    model = torch.nn.Linear(2, 1)
    anchor = [p.detach().clone() for p in model.parameters()]
    assert proximal_term(model, anchor, 0.5).item() == 0.0
    with torch.no_grad():
        model.weight += torch.tensor([[1.0, 2.0]])
    term = proximal_term(model, anchor, 0.5)
    assert term.requires_grad and term.item() == pytest.approx(0.25 * (1 + 4))


def _reply(to: Message, weight: float, examples: int, client: str) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict={"w": torch.full((3,), weight)}),
            "metrics": MetricRecord({"num-examples": examples, "train-steps": 4}),
            "meta": ConfigRecord({"client": client}),
        }
    )
    return Message(content=content, reply_to=to)


def test_fedavg_is_the_parameter_mean_weighted_by_examples_and_bytes_are_counted():
    with _task_identity():
        strategy = CountedFedAvg(min_clients=2, log=lambda _t: None)

        def handler(msg, context):
            name = context.node_config["name"]
            if name == "bad":
                fail = ConfigRecord({"client": "bad", "reason": "data error"})
                return Message(content=RecordDict({"failure": fail}), reply_to=msg)
            weight, examples = {"a": (1.0, 1), "b": (4.0, 3)}[name]
            return _reply(msg, weight, examples, name)

        grid = InProcessGrid({"a": "x", "b": "y", "bad": "z"}, handler=handler)
        start = ArrayRecord(torch_state_dict={"w": torch.zeros(3)})
        config = ConfigRecord({"method": "fedavg"})
        messages = list(strategy.configure_train(1, start, config, grid))
        replies = grid.send_and_receive(messages)
        arrays, _ = strategy.aggregate_train(1, replies)
    mean = arrays.to_torch_state_dict()["w"]
    assert torch.allclose(mean, torch.full((3,), (1.0 * 1 + 4.0 * 3) / 4))  # weighted by examples
    comm = strategy.communication()
    sent = content_bytes(messages[0].content)
    assert sent == len(recorddict_to_proto(messages[0].content).SerializeToString())
    for name in ("a", "b", "bad"):
        assert comm["clients"][name]["download_bytes"] == sent
    got = {r.metadata.src_node_id: r for r in replies}
    assert comm["clients"]["a"]["upload_bytes"] == content_bytes(got[1].content)
    assert comm["clients"]["a"]["rounds"] == 1 and comm["clients"]["bad"]["rounds"] == 0
    assert strategy.history[0]["dropped"] == {"bad": "client failed: data error"}
    assert comm["total"]["train_steps"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fedseg"])
def test_multi_round_flows_in_one_process(tiny_world, tmp_path, method):
    from feds2r.engine.checkpoint import load_checkpoint

    config = tiny_config(
        tmp_path / "run", tiny_world, method=method, rounds=2, client_steps=4, num_clients=3
    )
    logs: list[str] = []
    results = run_rounds_in_process(tiny_world["clients"], config, log=logs.append)
    assert results["method"] == method and results["rounds"] == 2
    comm = results["communication"]
    assert comm["rounds"] == 2 and set(comm["clients"]) == set(tiny_world["clients"])
    for entry in comm["clients"].values():
        assert entry["rounds"] == 2 and entry["train_steps"] == 4  # 2 rounds x 2 steps
        assert entry["download_bytes"] > 2 * 4 * 1_000_000  # two m2f-cpu models (1.1M floats)
    assert comm["total"]["megabytes"] == pytest.approx(
        (comm["total"]["download_bytes"] + comm["total"]["upload_bytes"]) / 1e6, abs=1e-3
    )
    assert [p[0] for p in results["curve"]["cs"]] == [0, 1, 2]  # the start, then every round
    model, meta = load_checkpoint(tmp_path / "run" / "global")
    assert meta["route"] == method and model.preset.name == "m2f-cpu"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["communication"] == comm
    start, _ = load_checkpoint(tmp_path / "run" / "init")
    moved = [not np.allclose(a, b) for a, b in zip(model.state_dict().values(),
                                                    start.state_dict().values(), strict=True)
             if a.is_floating_point()]  # fmt: skip
    assert any(moved)
