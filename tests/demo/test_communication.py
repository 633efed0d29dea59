"""What the demo's federated rows moved, measured on Flower's serialized messages (tiny models)."""

from __future__ import annotations

import pytest

from feds2r.demo.communication import communication
from feds2r.demo.rows import Row
from feds2r.engine.checkpoint import save_checkpoint
from feds2r.engine.train import TrainConfig
from feds2r.models import create_model


def test_a_one_shot_row_moves_the_initial_model_to_each_client_and_each_model_back(tmp_path):
    pytest.importorskip("flwr")
    init = create_model("segformer-cpu")
    save_checkpoint(init, tmp_path / "init")
    teachers = {"a": create_model("segformer-cpu"), "b": create_model("segformer-cpu")}
    rows = (Row("fedavg-oneshot", "fedavg"), Row("upper-bound", "supervised"))
    table = communication(
        rows, tmp_path, teachers, TrainConfig(steps=10, warmup_steps=1), "segformer-cpu"
    )
    tensors = sum(t.numel() * t.element_size() for t in init.state_dict().values())
    one = table["fedavg-oneshot"]
    assert table["measured"] and one["rounds"] == 1 and one["train_steps"] == 20
    for moved in (one["download_bytes"], one["upload_bytes"]):  # two clients, each way
        assert tensors < moved / 2 < tensors * 1.01 + 10_000  # the tensors and a little more
    assert one["megabytes"] == round((one["download_bytes"] + one["upload_bytes"]) / 1e6, 3)
    assert table["upper-bound"] == {"rounds": 0, "note": "centralised: the clients' data pooled"}
