"""engine/evaluate.py on tensors: the mIoU of known predictions, accumulated over the whole set,
per-image confusion matrices, size groups, sliding windows and the errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from feds2r.engine.evaluate import evaluate, predict_probs
from feds2r.errors import Feds2rError


class Oracle:
    """A model that reads the class of each pixel from the image's first channel: its
    ``predict(images (B, 3, H, W) uint8, size)`` is that class one-hot (B, K, *size)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def predict(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        self.calls.append(tuple(images.shape))
        ids = images[:, 0].long().clamp(max=NUM_CLASSES - 1)
        probs = F.one_hot(ids, NUM_CLASSES).permute(0, 3, 1, 2).float()
        return F.interpolate(probs, size=size, mode="nearest")


class Constant:
    """A model that predicts class ``k`` everywhere."""

    def __init__(self, k: int) -> None:
        self.k = k

    def predict(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        probs = torch.zeros(images.shape[0], NUM_CLASSES, *size)
        probs[:, self.k] = 1.0
        return probs


@dataclass
class Spec:
    format: str = "tensors"

    def __str__(self) -> str:
        return "tensors:memory"


@dataclass
class Tensors:
    """A labelled dataset in memory, as ``open_dataset`` gives one: ``image`` (3, H, W) uint8,
    ``label`` (H, W) train ids (255 ignored)."""

    items: list[dict[str, Tensor]]
    with_labels: bool = True
    spec: Spec = field(default_factory=Spec)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


def item(label: Tensor, image_ids: Tensor | None = None) -> dict[str, Tensor]:
    """An item whose image's first channel holds ``image_ids`` (default: the label itself)."""
    ids = label if image_ids is None else image_ids
    image = ids.clamp(max=255).to(torch.uint8)[None].repeat(3, 1, 1)
    return {"image": image, "label": label.long(), "name": "x"}


def test_a_perfect_model_scores_100_on_the_classes_present() -> None:
    label = torch.zeros(32, 48, dtype=torch.long)
    label[:, 16:] = 1
    label[20:, 30:] = 13
    data = Tensors([item(label), item(label.flip(1))])
    result = evaluate(Oracle(), data, height=32, progress=False)
    assert result["miou"] == pytest.approx(100.0)
    assert result["pixel_acc"] == pytest.approx(100.0)
    assert result["num_images"] == 2
    assert result["classes_present"] == 3
    assert result["pixels"] == 2 * 32 * 48
    per_class = result["per_class"]
    assert list(per_class) == list(CLASS_NAMES)
    assert {k for k, v in per_class.items() if v is not None} == {
        CLASS_NAMES[0],
        CLASS_NAMES[1],
        CLASS_NAMES[13],
    }


def test_iou_is_accumulated_over_the_set_not_averaged_over_images() -> None:
    """Image A: 30 pixels of class 0, 2 of class 1; B: 2 of class 0, 30 of class 1; C: 32 of
    class 0; the model says class 0 everywhere. Over the set IoU(0) = 64/96 and IoU(1) = 0, mIoU
    33.3 %, whatever the batch size; the mean of the images' own mIoUs would be 50 %."""
    a = torch.zeros(4, 8, dtype=torch.long)
    a[0, :2] = 1
    b = torch.ones(4, 8, dtype=torch.long)
    b[0, :2] = 0
    c = torch.zeros(4, 8, dtype=torch.long)
    data = Tensors([item(a), item(b), item(c)])
    result = evaluate(Constant(0), data, height=16, batch_size=1, progress=False)
    assert result["miou"] == pytest.approx(100 * (64 / 96 + 0.0) / 2)
    assert result["pixel_acc"] == pytest.approx(100 * 64 / 96)
    per_image = []
    for one in data.items:
        r = evaluate(Constant(0), Tensors([one]), height=16, progress=False)
        per_image.append(r["miou"])
    assert np.mean(per_image) == pytest.approx(100 * (30 / 32 / 2 + 2 / 32 / 2 + 1) / 3)


def test_ignored_pixels_count_nowhere() -> None:
    label = torch.ones(16, 16, dtype=torch.long)
    label[:, :8] = IGNORE_INDEX
    data = Tensors([item(label, image_ids=torch.zeros(16, 16, dtype=torch.long))])
    result = evaluate(Oracle(), data, height=16, progress=False)  # predicts 0, truth is 1
    assert result["pixels"] == 16 * 8
    assert result["pixel_acc"] == 0.0
    assert result["per_class"][CLASS_NAMES[1]] == 0.0


def test_per_image_confusion_sums_to_the_set() -> None:
    torch.manual_seed(0)
    labels = [torch.randint(0, 4, (8, 12)) for _ in range(3)]
    data = Tensors([item(lab, image_ids=torch.randint(0, 4, (8, 12))) for lab in labels])
    result = evaluate(Oracle(), data, height=16, batch_size=2, per_image=True, progress=False)
    cms = result["per_image_confusion"]
    assert cms.shape == (3, NUM_CLASSES, NUM_CLASSES) and cms.dtype == np.int64
    assert cms.sum() == result["pixels"] == 3 * 8 * 12
    assert [int(cm.sum()) for cm in cms] == [8 * 12] * 3
    correct = np.trace(cms.sum(0))
    assert result["pixel_acc"] == pytest.approx(100 * correct / cms.sum())


def test_images_of_different_sizes_go_in_separate_batches() -> None:
    small = torch.zeros(16, 16, dtype=torch.long)
    wide = torch.ones(16, 32, dtype=torch.long)
    model = Oracle()
    data = Tensors([item(small), item(small), item(wide), item(small)])
    result = evaluate(model, data, height=16, batch_size=8, progress=False)
    assert model.calls == [(2, 3, 16, 16), (1, 3, 16, 32), (1, 3, 16, 16)]
    assert result["miou"] == pytest.approx(100.0)


def test_predictions_are_made_at_the_height_and_resized_to_the_label() -> None:
    model = Oracle()
    images = torch.zeros(2, 3, 64, 96, dtype=torch.uint8)
    probs = predict_probs(model, images, height=32, out_size=(64, 96))
    assert model.calls == [(2, 3, 32, 48)]  # aspect ratio kept
    assert probs.shape == (2, NUM_CLASSES, 64, 96)


def test_sliding_windows_cover_the_image_and_agree_with_one_pass() -> None:
    ids = torch.arange(40 * 70).reshape(40, 70) % 5
    images = ids.to(torch.uint8)[None, None].repeat(1, 3, 1, 1)
    whole = predict_probs(Oracle(), images, height=40, out_size=(40, 70))
    model = Oracle()
    windows = predict_probs(model, images, height=40, out_size=(40, 70), sliding=(24, 32))
    assert len(model.calls) > 1 and {c[-2:] for c in model.calls} == {(24, 32)}
    assert torch.equal(windows.argmax(1), whole.argmax(1))
    assert torch.allclose(windows.sum(1), torch.ones(1, 40, 70))


def test_errors_name_the_cause() -> None:
    label = torch.zeros(16, 16, dtype=torch.long)
    with pytest.raises(Feds2rError, match="height must be >= 16"):
        evaluate(Oracle(), Tensors([item(label)]), height=8, progress=False)
    with pytest.raises(Feds2rError, match="has no labels"):
        evaluate(Oracle(), Tensors([item(label)], with_labels=False), progress=False)
