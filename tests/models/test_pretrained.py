"""Starting points: the shipped public backbones and Hugging Face model directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from feds2r.errors import Feds2rError
from feds2r.models import (
    IMAGENET,
    PRESETS,
    PUBLIC,
    create_model,
    is_hf_dir,
    load_backbone_weights,
    load_hf_model,
    shipped_weights,
)

CPU = [n for n, p in PRESETS.items() if p.scale == "cpu"]
SHIPPED = [n for n, p in PRESETS.items() if p.pretrained == PUBLIC]
HF = [n for n in CPU if PRESETS[n].backbone is None]  # presets that are transformers models


def test_every_cpu_preset_has_a_pretrained_start():
    assert {PRESETS[n].pretrained for n in CPU} == {PUBLIC, IMAGENET}
    assert set(SHIPPED) == {"m2f-cpu", "segformer-cpu"}


@pytest.mark.parametrize("preset", SHIPPED)
def test_shipped_public_backbone_loads_into_its_preset(preset):
    path = shipped_weights(preset)
    assert path.is_file() and path.stat().st_size < 8 * 2**20  # small files in the package
    model = create_model(preset, backbone_weights=PUBLIC)
    state = load_file(str(path))
    got = model.backbone().state_dict()
    assert set(state) == set(got)
    assert all(torch.equal(state[k], got[k]) for k in state)
    random = create_model(preset).backbone().state_dict()
    assert any(not torch.equal(random[k], got[k]) for k in got)  # the weights really changed


def test_no_shipped_backbone_is_a_clear_error():
    with pytest.raises(Feds2rError, match="ships no pretrained backbone for preset 'm2f-r50'"):
        shipped_weights("m2f-r50")
    with pytest.raises(Feds2rError, match="--backbone-weights imagenet"):
        create_model("m2f-effl0", backbone_weights=PUBLIC)


def _save_hf(model, path, **config_changes):
    """Write ``model.net`` as ``save_pretrained`` does (config.json + model.safetensors)."""
    model.net.save_pretrained(path)
    if config_changes:
        config = json.loads((path / "config.json").read_text())
        config.update(config_changes)
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("preset", HF)
def test_hugging_face_directory_as_the_starting_model(preset, tmp_path):
    torch.manual_seed(1)
    source = create_model(preset)
    hf = _save_hf(source, tmp_path / "hf")
    assert is_hf_dir(hf)
    torch.manual_seed(2)
    model = create_model(preset)
    load_hf_model(model, hf)
    want, got = source.state_dict(), model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the backbone alone, from the same directory
    other = create_model(preset)
    load_backbone_weights(other, hf)
    b_want, b_got = source.backbone().state_dict(), other.backbone().state_dict()
    assert all(torch.equal(b_want[k], b_got[k]) for k in b_want)


def test_hugging_face_directory_that_does_not_fit(tmp_path):
    m2f = create_model("m2f-cpu")
    with pytest.raises(Feds2rError, match="predicts 5 classes.*--backbone-weights"):
        load_hf_model(m2f, _save_hf(create_model("m2f-cpu", num_classes=5), tmp_path / "five"))
    with pytest.raises(Feds2rError, match="holds a 'segformer' model.*mask2former"):
        load_hf_model(m2f, _save_hf(create_model("segformer-cpu"), tmp_path / "seg"))
    with pytest.raises(Feds2rError, match="does not fit preset 'm2f-cpu'"):
        big = create_model("m2f-swin-t")
        load_hf_model(m2f, _save_hf(big, tmp_path / "big"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "mask2former"}')
    with pytest.raises(Feds2rError, match="no .safetensors weights"):
        load_hf_model(m2f, tmp_path / "empty")


def test_a_feds2r_backbone_refuses_hugging_face_directories(tmp_path):
    hf = _save_hf(create_model("m2f-cpu"), tmp_path / "hf")
    for preset in ("m2f-effl0", "seg-effl0"):
        model = create_model(preset)
        with pytest.raises(Feds2rError, match="backbone written in feds2r.*imagenet"):
            load_hf_model(model, hf)
        with pytest.raises(Feds2rError, match="backbone written in feds2r.*imagenet"):
            load_backbone_weights(model, hf)


def test_client_train_starts_from_a_hugging_face_directory(tmp_path):
    from feds2r.client import train_client
    from feds2r.data.world import synth_domain
    from feds2r.engine.train import TrainConfig

    synth_domain("gta5-like", tmp_path / "g", split="train", num=4, size=(64, 128),
                 progress=False)  # fmt: skip
    source = create_model("segformer-cpu")
    hf = _save_hf(source, tmp_path / "hf")
    seen = {}

    def first(model, step):
        seen.setdefault("step", step)

    cfg = TrainConfig(steps=1, batch_size=2, height=64, crop=(64, 128), warmup_steps=0)
    out = tmp_path / "run"
    train_client(f"gta5:{tmp_path / 'g'}?split=train", "segformer-cpu", out, cfg, init=hf,
                 progress=False, on_step=first)  # fmt: skip
    assert seen == {"step": 1} and (out / "model.safetensors").is_file()


def test_pretrained_is_each_presets_own_start():
    """``backbone_weights="pretrained"`` (every command's default) is the shipped `public`
    backbone for the CPU presets that have one and ImageNet weights for the EfficientNet ones."""
    import torch

    from feds2r.models import PRETRAINED, create_model, pretrained_start, start_source

    for preset, own in (("segformer-cpu", "public"), ("seg-effl0", "imagenet")):
        assert pretrained_start(preset) == own
        a = create_model(preset, backbone_weights=PRETRAINED).state_dict()
        b = create_model(preset, backbone_weights=own).state_dict()
        backbone = [k for k in a if k.startswith(("net.segformer.", "net.backbone."))]
        assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
        random = create_model(preset).state_dict()
        assert not all(torch.equal(a[k], random[k]) for k in backbone)  # weights were loaded
    assert start_source("seg-effl0").startswith("imagenet")
    assert start_source("segformer-cpu").endswith("segformer-cpu-public.safetensors")


def test_a_preset_without_a_pretrained_start_says_what_to_pass():
    from feds2r.errors import Feds2rError
    from feds2r.models import PRETRAINED, create_model

    with pytest.raises(Feds2rError, match="--backbone-weights FILE_OR_HF_DIR"):
        create_model("segformer-b0", backbone_weights=PRETRAINED)
