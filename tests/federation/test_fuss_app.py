"""FUSS over Flower's messages, and the four methods end to end on a tiny world."""

from __future__ import annotations

import math

import pytest
import torch

from feds2r.fuss import (
    METHODS,
    ClientUpdate,
    FussConfig,
    RoundRequest,
    evaluate_model,
    in_process_send,
    initial_model,
    load_split,
    run_federation,
    run_method,
    split_clients,
)
from feds2r.models.pixel_features import FrozenFeatures, compute_features

pytest.importorskip("flwr")

TINY = FussConfig(height=32, rounds=2, local_steps=2, batch_size=2, code_dim=8, hidden=16,
                  num_clusters=4, knn=2, kmeans_iters=5)  # fmt: skip


@pytest.fixture(scope="module")
def world_features(tiny_world):
    extractor = FrozenFeatures(TINY.backbone)
    clients = {
        name: compute_features(extractor, load_split(spec, TINY.height, labels=False)[0])
        for name, spec in tiny_world["clients"].items()
    }
    images, labels = load_split(tiny_world["test"], TINY.height, labels=True)
    return clients, (compute_features(extractor, images), labels.long())


@pytest.fixture
def flower_ids(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    # outside a SuperNode no run is set; Message() reads the ids from here
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_messages_round_trip():
    from feds2r.federation.fuss_app import (
        decode_request,
        decode_update,
        encode_request,
        encode_update,
    )

    init = initial_model(TINY, 12)
    request = RoundRequest(3, init.head_state(), init.centroids.detach())
    got, method, config = decode_request(encode_request(request, "fuss", TINY))
    assert (got.round, method, config) == (3, "fuss", TINY)
    assert _equal(got.head, request.head) and torch.equal(got.centroids, request.centroids)
    keep_own = decode_request(encode_request(RoundRequest(1, request.head, None), "fedavg", TINY))
    assert keep_own[0].centroids is None
    update = ClientUpdate("gta5", init.head_state(), init.centroids.detach(),
                          torch.arange(4.0), 7, {"loss": -0.5})  # fmt: skip
    back = decode_update(encode_update(update))
    assert (back.client, back.images, back.losses) == ("gta5", 7, {"loss": -0.5})
    assert _equal(back.head, update.head)
    assert torch.equal(back.centroids, update.centroids) and torch.equal(back.counts, update.counts)


class FakeGrid:
    """Flower's Grid in one process: each node's ClientApp handler answers with its Context."""

    def __init__(self, contexts):
        self.contexts = contexts

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from feds2r.federation.fuss_app import client_train

        return [client_train(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


@pytest.mark.parametrize("method", ["fuss", "fedavg"])
def test_flower_apps_match_the_in_process_run_and_measure_their_messages(
    method, tiny_world, world_features, flower_ids, tmp_path
):
    from flwr.app import Context, RecordDict

    from feds2r.federation.fuss_app import encode_request, run_server
    from feds2r.federation.rounds import content_bytes

    contexts = {
        node: Context(
            run_id=1,
            node_id=node,
            node_config={"data": spec, "name": name},
            state=RecordDict(),
            run_config={},
        )  # fmt: skip
        for node, (name, spec) in enumerate(tiny_world["clients"].items(), start=11)
    }
    from feds2r.federation.fuss_app import config_to_json

    run_config = {"fuss-method": method, "num-clients": 3, "fuss-config": config_to_json(TINY),
                  "out": str(tmp_path / "out"), "connect-timeout": 1}  # fmt: skip
    record = run_server(FakeGrid(contexts), run_config, log=lambda _: None)
    assert [t["round"] for t in record["traffic"]] == [0, 1]
    assert all(t["failed_nodes"] == [] for t in record["traffic"])
    assert (tmp_path / "out" / "fuss_model.pt").is_file()
    # the features were computed once per node and kept in its state
    assert all("fuss-features" in c.state for c in contexts.values())

    # the same run in one process gives the same global head
    clients = split_clients(world_features[0], "domain", 3, TINY.knn)
    init = initial_model(TINY, clients[0].features.shape[1])
    local = run_federation(method, in_process_send(clients, TINY), init, TINY)
    saved = torch.load(tmp_path / "out" / "fuss_model.pt", weights_only=True)
    assert all(torch.allclose(saved["head"][k], local.head[k], atol=1e-5) for k in local.head)
    # measured from the messages: the first round's request is exactly what went down
    first = encode_request(RoundRequest(0, init.head_state(), init.centroids.detach()),
                           method, TINY)  # fmt: skip
    assert record["traffic"][0]["bytes_down"] == 3 * content_bytes(first)
    down = [t["bytes_down"] for t in record["traffic"]]
    assert (down[1] < down[0]) == (method == "fedavg")  # FedAvg stops sending centroids
    assert record["bytes"] >= local.bytes > 0


def test_the_four_methods_end_to_end_on_a_tiny_world(world_features):
    clients_features, test = world_features
    for partition in ("domain", "iid"):
        clients = split_clients(clients_features, partition, 3, TINY.knn)
        for method in METHODS:
            models, record = run_method(method, clients, TINY)
            assert len(models) == (3 if method in ("local-only", "fedavg") else 1)
            assert (record["bytes"] > 0) == (method in ("fedavg", "fuss"))
            for model in models.values():
                result = evaluate_model(model, test, {"val": test})
                assert set(result) == {"dev", "val"}
                assert 0 <= result["val"]["miou"] <= 100 and not math.isnan(result["val"]["miou"])
                # dev and val are the same images here: the fitted mapping scores the same
                assert result["val"]["miou"] == pytest.approx(result["dev"]["miou"])


@pytest.mark.slow
def test_fuss_on_flowers_simulation_engine_equals_the_in_process_run(
    tiny_world, world_features, tmp_path
):
    pytest.importorskip("ray")
    from feds2r.federation.simulation import run_fuss_simulation

    # reversed: the virtual nodes' order differs from the client-name order the server sorts by
    clients = dict(reversed(list(tiny_world["clients"].items())))
    record = run_fuss_simulation(clients, "fuss", TINY, tmp_path / "sim", log=lambda _t: None)
    assert record["clients"] == 3 and [t["round"] for t in record["traffic"]] == [0, 1]
    assert all(t["failed_nodes"] == [] and t["bytes_up"] > 0 for t in record["traffic"])
    saved = torch.load(tmp_path / "sim" / "fuss_model.pt", weights_only=True)

    local = run_federation("fuss", in_process_send(
        split_clients(world_features[0], "domain", 3, TINY.knn), TINY),
        initial_model(TINY, world_features[0]["gta5"].shape[1]), TINY)  # fmt: skip
    # each node computed its own features in a Ray worker: equal up to float rounding
    assert all(torch.allclose(saved["head"][k], local.head[k], atol=1e-5) for k in local.head)
    assert torch.allclose(saved["centroids"]["global"], local.centroids["global"], atol=1e-4)
    assert record["bytes"] >= local.bytes > 0
