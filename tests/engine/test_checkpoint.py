"""Checkpoints: round trip; foreign, corrupt and pickled files get one clear message."""

import json
import os
import pickle

import pytest
import torch

from feds2r.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from feds2r.models import create_model


@pytest.fixture
def ckpt(tmp_path):
    model = create_model("segformer-cpu")
    save_checkpoint(model, tmp_path / "ck", meta={"steps": 3})
    return model, tmp_path / "ck"


def test_round_trip(ckpt):
    model, path = ckpt
    loaded, meta = load_checkpoint(path)
    assert (
        meta["preset"] == "segformer-cpu" and meta["steps"] == 3 and len(meta["class_names"]) == 19
    )
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert not loaded.training
    assert sorted(os.listdir(path)) == ["model.json", "model.safetensors"]  # no temp files left


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['FEDS2R_PWNED']}",))


def test_pickle_is_refused_and_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("FEDS2R_PWNED", str(marker))
    for name in ("model.pt", "model.safetensors"):  # a pickle under either name
        path = tmp_path / name
        path.write_bytes(pickle.dumps(_Evil()))
        (tmp_path / "model.json").write_text("{}")
        with pytest.raises(CheckpointError, match="refusing to load .* pickle"):
            load_checkpoint(path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "zip.safetensors")  # torch.save's zip format
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "zip.safetensors")
    assert not marker.exists()


def test_truncated_weights(ckpt):
    _, path = ckpt
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_wrong_preset(ckpt, tmp_path):
    _, path = ckpt
    meta = json.loads((path / "model.json").read_text())
    meta["preset"] = "m2f-cpu"
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit preset 'm2f-cpu'"):
        load_checkpoint(path)
    meta["preset"] = "unet"
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown preset 'unet'"):
        load_checkpoint(path)


def test_wrong_classes(ckpt):
    _, path = ckpt
    meta = json.loads((path / "model.json").read_text())
    meta["class_names"] = meta["class_names"][:16]
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="mismatched class sets"):
        load_checkpoint(path)


def test_missing_or_foreign_sidecar(ckpt):
    _, path = ckpt
    (path / "model.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a feds2r checkpoint"):
        load_checkpoint(path)
    (path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint weights"):
        load_checkpoint(path.parent / "nothing")
