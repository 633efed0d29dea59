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


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_a_pickle(ckpt):
    from safetensors.torch import load_file, save_file

    model, path = ckpt
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    for pad in range(300):  # pad the metadata until the header length's low byte is 0x80
        save_file(state, str(weights), metadata={"format": "feds2r-checkpoint", "pad": "x" * pad})
        if weights.read_bytes()[0] == 0x80:
            break
    head = weights.read_bytes()[:9]
    assert head[0] == 0x80 and head[8:9] == b"{", "could not make the test file"
    loaded, _ = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_a_pickle_with_a_header_like_start_is_still_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80" + b"\x00" * 7 + b"{" + pickle.dumps([1]))  # length 128 > file size
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("format_version", "abc", "format_version must be an integer, got 'abc'"),
        ("format_version", True, "format_version must be an integer"),
        ("preset", ["segformer-cpu"], "unknown preset \\['segformer-cpu'\\]"),
        ("preset", {"a": 1}, "unknown preset"),
        ("class_names", None, "mismatched class sets"),
        ("class_names", 19, "mismatched class sets"),
    ],
)
def test_sidecar_fields_of_the_wrong_type_are_one_message(ckpt, field, value, message):
    _, path = ckpt
    meta = json.loads((path / "model.json").read_text())
    meta[field] = value
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_deeply_nested_sidecar_is_one_message(ckpt):
    _, path = ckpt
    (path / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(ckpt, bad):
    from safetensors.torch import load_file, save_file

    _, path = ckpt
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = bad
    save_file(state, str(weights), metadata={"format": "feds2r-checkpoint"})
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensor"):
        load_checkpoint(path)
