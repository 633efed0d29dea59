"""Self-training after distillation (feds2r/server/selftrain.py): the mean teacher, pseudo-labels,
ClassMix, the fading distillation term and the stage end to end on a tiny world."""

import json

import pytest
import torch

from feds2r.data.labels import IGNORE_INDEX
from feds2r.models import create_model
from feds2r.server.selftrain import (
    SelfTrainConfig,
    classmix_masks,
    ema_update,
    mix,
    pseudo_labels,
)


def test_ema_update_moves_the_teacher_towards_the_student():
    torch.manual_seed(0)
    student, teacher = create_model("segformer-cpu"), create_model("segformer-cpu")
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.75)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * s)
    ema_update(teacher, student, 0.0)  # momentum 0: the student's weights
    pairs = zip(teacher.parameters(), student.parameters(), strict=True)
    assert all(torch.equal(t, s) for t, s in pairs)


def test_pseudo_labels_ignore_unconfident_pixels_and_report_the_confident_share():
    probs = torch.tensor([[[[0.99, 0.5]], [[0.01, 0.5]]]])  # (1, 2 classes, 1, 2 pixels)
    labels, quality = pseudo_labels(probs, 0.968)
    assert labels.tolist() == [[[0, IGNORE_INDEX]]]
    assert quality.tolist() == [0.5]


def test_classmix_takes_half_of_the_classes_and_mix_pastes_them():
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, IGNORE_INDEX]]])  # 4 classes
    g = torch.Generator().manual_seed(0)
    masks = classmix_masks(labels, g)
    chosen = labels[masks].unique()
    assert len(chosen) == 2 and IGNORE_INDEX not in chosen.tolist()
    assert torch.equal(masks, torch.isin(labels, chosen))  # whole classes, nothing else
    a, b = torch.ones(1, 3, 2, 4), torch.zeros(1, 3, 2, 4)
    mixed = mix(masks, a, b)
    assert torch.equal(mixed[0, 0] == 1, masks[0])
    small = mix(masks, torch.ones(1, 5, 1, 2), torch.zeros(1, 5, 1, 2))  # maps at 1/2 size
    assert small.shape == (1, 5, 1, 2)


def test_the_distillation_term_fades_linearly():
    cfg = SelfTrainConfig(teacher_weight=2.0, teacher_steps=4)
    assert [cfg.teacher_factor(s) for s in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    assert SelfTrainConfig(teacher_steps=0).teacher_factor(100) == 1.0
    with pytest.raises(ValueError, match="ema"):
        SelfTrainConfig(ema=1.0)
    with pytest.raises(TypeError, match="threshold"):
        SelfTrainConfig(threshold="high")
    with pytest.raises(ValueError, match="refine must be one of none, builtin"):
        SelfTrainConfig(refine="magic")


@pytest.mark.slow
def test_self_train_end_to_end(tmp_path):
    from feds2r.data.world import synth_domain
    from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
    from feds2r.engine.train import TrainConfig
    from feds2r.server.distill import DistillConfig
    from feds2r.server.selftrain import self_train

    synth_domain("cityscapes-like", tmp_path / "cs", split="train", num=4, size=(64, 128),
                 progress=False)  # fmt: skip
    torch.manual_seed(0)
    clients = []
    for k in range(2):
        save_checkpoint(create_model("m2f-cpu"), tmp_path / f"c{k}", meta={"role": "client"})
        clients.append(tmp_path / f"c{k}")
    save_checkpoint(create_model("m2f-cpu"), tmp_path / "global", meta={"role": "server"})
    recipe = TrainConfig(steps=2, batch_size=2, height=32, crop=(32, 64), warmup_steps=1)
    # a low threshold so that the random models' pseudo-labels count
    cfg = SelfTrainConfig(threshold=0.05, teacher_steps=2, refine="builtin")
    seen = []
    self_train(
        tmp_path / "global",
        clients,
        f"cityscapes:{tmp_path / 'cs'}?split=train",
        tmp_path / "st",
        cfg,
        DistillConfig(),
        recipe,
        progress=False,
        on_step=lambda model, step: seen.append(step),
    )
    assert seen == [1, 2]
    model, meta = load_checkpoint(tmp_path / "st")
    assert meta["route"] == "distill+selftrain" and meta["selftrain_config"]["threshold"] == 0.05
    assert meta["selftrain_config"]["refine"] == "builtin"
    lines = (tmp_path / "st" / "train_log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert "loss_st" in log[-1] and "loss_kd" in log[0]
    assert (tmp_path / "st" / "config.toml").is_file()
    start = load_checkpoint(tmp_path / "global")[0]
    pairs = zip(model.parameters(), start.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)
