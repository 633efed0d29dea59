"""`feds2r pretrain`: the public backbone from image-level labels, end to end on a tiny run."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from feds2r.cli import main
from feds2r.data.labels import NUM_CLASSES
from feds2r.models import create_model, load_backbone_weights
from feds2r.pretrain import BackboneClassifier, tag_loss


def test_pretrain_cli_writes_a_loadable_backbone_and_resumes(tmp_path, capsys):
    out, world = tmp_path / "pt", tmp_path / "public"
    args = ["pretrain", "--preset", "segformer-cpu", "--out", str(out), "--world", str(world),
            "--images", "6", "--steps", "3", "--warmup-steps", "1", "--batch-size", "2",
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "pretrained the segformer-cpu backbone for 3 steps" in capsys.readouterr().out
    weights = load_file(str(out / "backbone.safetensors"))
    model = create_model("segformer-cpu")
    load_backbone_weights(model, out / "backbone.safetensors")
    got = model.backbone().state_dict()
    assert set(weights) == set(got) and all(torch.equal(weights[k], got[k]) for k in weights)
    info = json.loads((out / "pretrain.json").read_text())
    assert info["preset"] == "segformer-cpu" and info["steps"] == 3
    assert "image-level" in info["task"] and (out / "config.toml").is_file()
    # the public images carry tags only: no label files next to them
    assert not [p for p in world.rglob("*") if "label" in p.name.lower() or "gt" in p.parts]
    # the same command again: the finished run is kept (no retraining, same weights). The file is
    # written again and safetensors orders its metadata map freely, so compare the tensors
    log = (out / "train_log.jsonl").read_bytes()
    assert main(args) == 0
    again = load_file(str(out / "backbone.safetensors"))
    assert set(again) == set(weights) and all(torch.equal(again[k], weights[k]) for k in weights)
    assert (out / "train_log.jsonl").read_bytes() == log
    # another recipe into the same folder is refused with one message
    assert main([*args, "--steps", "4"]) == 2
    assert "different config" in capsys.readouterr().err


def test_tag_loss_is_bce_on_tags_plus_kl_on_shares():
    torch.manual_seed(0)
    model = BackboneClassifier(create_model("segformer-cpu"))
    images = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    tags = torch.zeros(2, NUM_CLASSES)
    tags[:, [0, 2, 10]] = 1
    shares = torch.zeros(2, NUM_CLASSES)
    shares[:, 0], shares[:, 2], shares[:, 10] = 0.5, 0.2, 0.3
    parts = tag_loss(model, {"image": images, "tags": tags, "shares": shares})
    logits = model(images)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :NUM_CLASSES], tags)
    logp = logits[:, NUM_CLASSES:].log_softmax(1)
    kl = (shares * (shares.clamp_min(1e-12).log() - logp)).sum(1).mean()
    assert torch.allclose(parts["loss_tags"], bce, atol=1e-6)
    assert torch.allclose(parts["loss_shares"], kl, atol=1e-5)
    assert torch.allclose(parts["loss"], bce + kl, atol=1e-5)
