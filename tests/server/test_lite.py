"""The lightweight route (feds2r/server/lite.py, DUDA): class-wise inconsistency and its weights,
the target of each phase, the weighted per-pixel KL, and the stage end to end on a tiny world."""

import json

import pytest
import torch

from feds2r.losses.distillation import pixel_kd_loss
from feds2r.server.lite import (
    LiteConfig,
    class_inconsistency,
    inconsistency_class_weights,
    lite_target,
)


def test_class_inconsistency_is_one_minus_the_iou_of_the_two_maps():
    large = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 2]]])
    small = torch.tensor([[[0, 1, 1, 1], [2, 2, 2, 0]]])
    inc = class_inconsistency(large, small, 4)
    # class 0: L {0,1}, S {0,7} -> 1/3 IoU; class 1: L {2,3}, S {1,2,3} -> 2/3;
    # class 2: L {4..7}, S {4,5,6} -> 3/4; class 3: predicted by neither -> 0
    assert torch.allclose(inc, torch.tensor([2 / 3, 1 / 3, 1 / 4, 0.0]))
    weights = inconsistency_class_weights(inc)
    assert torch.allclose(weights, torch.tensor([2.0, 1.5, 1.375, 1.0]))
    same = class_inconsistency(large, large, 4)
    assert torch.equal(inconsistency_class_weights(same), torch.ones(4))  # agreement: no emphasis


def test_the_target_is_the_large_student_then_a_mix_with_the_teachers():
    bridge = torch.tensor([1.0, 0.0])[None, :, None, None].expand(1, 2, 1, 2)
    teachers = torch.tensor([0.0, 1.0])[None, :, None, None].expand(1, 2, 1, 2)
    valid = torch.tensor([[[[1.0, 0.0]]]])  # the second pixel is padding
    maps = torch.cat([bridge, teachers, valid], dim=1)
    target, ok = lite_target(maps, 2, 0.75, pre=True)
    assert ok.tolist() == [[[True, False]]]
    assert target[0, :, 0, 0].tolist() == [1.0, 0.0] and target[0, :, 0, 1].tolist() == [0, 0]
    target, _ = lite_target(maps, 2, 0.75, pre=False)
    assert target[0, :, 0, 0].tolist() == [0.75, 0.25]


def test_pixel_weights_scale_each_pixels_kl():
    teacher = torch.tensor([[[[0.9, 0.5]], [[0.1, 0.5]]]])  # (1, 2, 1, 2)
    student = torch.full_like(teacher, 0.5)
    plain = pixel_kd_loss(student, teacher, 1.0)["loss"]
    per_pixel = (teacher * (teacher.log() - student.log())).sum(1)  # KL at each pixel
    assert torch.allclose(plain, per_pixel.mean())
    weighted = pixel_kd_loss(student, teacher, 1.0, weight=torch.tensor([[[2.0, 1.0]]]))["loss"]
    assert torch.allclose(weighted, (2 * per_pixel[0, 0, 0] + per_pixel[0, 0, 1]) / 2)


def test_lite_config_checks_its_values():
    assert LiteConfig().pre_steps(300) == 150
    with pytest.raises(ValueError, match="bridge_weight"):
        LiteConfig(bridge_weight=1.5)
    with pytest.raises(ValueError, match="pre_fraction"):
        LiteConfig(pre_fraction=1.0)
    with pytest.raises(TypeError, match="student"):
        LiteConfig(student=3)


@pytest.mark.slow
def test_lite_route_end_to_end(tmp_path):
    from feds2r.data.world import synth_domain
    from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
    from feds2r.engine.train import TrainConfig
    from feds2r.models import create_model
    from feds2r.server.distill import DistillConfig
    from feds2r.server.lite import distill_lite

    synth_domain("cityscapes-like", tmp_path / "cs", split="train", num=4, size=(64, 128),
                 progress=False)  # fmt: skip
    torch.manual_seed(0)
    clients = []
    for k in range(2):
        save_checkpoint(create_model("m2f-cpu"), tmp_path / f"c{k}", meta={"role": "client"})
        clients.append(tmp_path / f"c{k}")
    save_checkpoint(create_model("m2f-cpu"), tmp_path / "global", meta={"route": "distill"})
    recipe = TrainConfig(
        steps=4, batch_size=2, height=32, crop=(32, 64), warmup_steps=1, log_every=1
    )
    seen = []
    summary = distill_lite(
        tmp_path / "global",
        clients,
        f"cityscapes:{tmp_path / 'cs'}?split=train",
        tmp_path / "lite",
        LiteConfig(student="segformer-cpu"),
        DistillConfig(feature_fusion=True),
        recipe,
        progress=False,
        on_step=lambda model, step: seen.append(step),
    )
    assert seen == [1, 2, 3, 4]
    assert len(summary["class_weights"]) == 19
    assert all(1.0 <= w <= 2.0 for w in summary["class_weights"])
    model, meta = load_checkpoint(tmp_path / "lite")
    assert model.preset.name == "segformer-cpu"
    assert meta["route"] == "lite" and meta["bridge"] == str(tmp_path / "global")
    assert meta["bridge_route"] == "distill"
    assert meta["start"]["backbone"].endswith("segformer-cpu-public.safetensors")
    lines = (tmp_path / "lite" / "train_log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert [r["pre"] for r in log] == [1.0, 1.0, 0.0, 0.0]  # 2 of 4 steps of pre-adaptation
    assert (tmp_path / "lite" / "config.toml").is_file()
    # a resume into the same folder with another bridge is refused, nothing touched
    from feds2r.errors import Feds2rError

    with pytest.raises(Feds2rError, match="other inputs"):
        distill_lite(
            clients[0], clients, f"cityscapes:{tmp_path / 'cs'}?split=train", tmp_path / "lite",
            LiteConfig(student="segformer-cpu"), DistillConfig(feature_fusion=True), recipe,
            progress=False,
        )  # fmt: skip
