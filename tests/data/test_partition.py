"""Class-heterogeneous partitions (feds2r/data/partition.py): each client sees only its classes,
background where the paper puts it, the same partition from the same seed; BackCE on a
partitioned batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feds2r.data import IGNORE_INDEX, NUM_CLASSES, open_dataset
from feds2r.data.partition import (
    BACKGROUND_INDEX,
    Partition,
    class_pixels,
    erase_labels,
    ignore_background,
    make_partition,
    open_part,
    part_spec,
)
from feds2r.data.world import synth_domain
from feds2r.errors import DataError, Feds2rError
from feds2r.losses.fedseg import back_cross_entropy, pseudo_labels


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> dict:
    """48 cityscapes-like images at 64x128: every one of the 19 classes is in at least one."""
    root = tmp_path_factory.mktemp("partition") / "cs"
    synth_domain("cityscapes-like", root, split="train", num=48, size=(64, 128), seed=0,
                 progress=False)  # fmt: skip
    spec = f"cityscapes:{root}?split=train"
    dataset = open_dataset(spec)
    return {"spec": spec, "dataset": dataset, "counts": class_pixels(dataset)}


def _index(city) -> dict[str, int]:
    return {s.name: i for i, s in enumerate(city["dataset"].samples)}


def test_noniid1_gives_each_client_one_class_and_each_image_once(city):
    p = make_partition(city["spec"], "noniid1", seed=0)
    index, counts = _index(city), city["counts"]
    assert [part.classes for part in p.parts] == [(c,) for c in range(NUM_CLASSES)]
    images = [name for part in p.parts for name in part.images]
    assert sorted(images) == sorted(index)  # every image, each in exactly one part
    for part in p.parts:  # every image of a client shows the client's class
        (c,) = part.classes
        assert all(counts[index[name], c] > 0 for name in part.images), part.name


def test_noniid2_gives_two_classes_each_class_to_two_clients(city):
    p = make_partition(city["spec"], "noniid2", seed=3)
    assert all(len(part.classes) == 2 for part in p.parts)
    held = np.bincount([c for part in p.parts for c in part.classes], minlength=NUM_CLASSES)
    assert held.tolist() == [2] * NUM_CLASSES
    first = [part.classes for part in p.parts]
    assert all(c in classes for c, classes in enumerate(first))  # client c keeps class c


def test_iid_is_a_random_split_with_every_class_annotated(city):
    p = make_partition(city["spec"], "iid", num_clients=5, seed=0)
    assert [len(part.images) for part in p.parts] == [10, 10, 10, 9, 9]
    assert all(part.classes == tuple(range(NUM_CLASSES)) for part in p.parts)
    assert sorted(n for part in p.parts for n in part.images) == sorted(_index(city))


def test_the_same_seed_gives_the_same_partition_and_another_seed_another(city):
    a = make_partition(city["spec"], "noniid2", seed=7)
    b = make_partition(city["dataset"], "noniid2", seed=7, counts=city["counts"])
    assert a == b and a.to_dict() == b.to_dict()
    assert make_partition(city["spec"], "noniid2", seed=8) != a
    assert make_partition(city["spec"], "iid", seed=8) != make_partition(city["spec"], "iid")


def test_several_clients_per_class_share_its_images(city):
    p = make_partition(city["spec"], "noniid1", num_clients=2 * NUM_CLASSES, seed=0)
    assert len(p.parts) == 38 and [q.classes for q in p.parts[:4]] == [(0,), (0,), (1,), (1,)]
    with pytest.raises(Feds2rError, match="multiple of 19"):
        make_partition(city["spec"], "noniid1", num_clients=20)


def test_a_client_sees_only_its_classes_and_background_where_others_were(city, tmp_path):
    p = make_partition(city["spec"], "noniid2", seed=0)
    path = p.save(tmp_path / "partition.json")
    assert Partition.load(path) == p
    part = p.parts[5]
    ds = open_part(part_spec(path, part.name))
    assert len(ds) == len(part.images)
    full = city["dataset"]
    index = _index(city)
    for i in range(len(ds)):
        erased = ds[i]["label"]
        original = full[index[ds[i]["name"]]]["label"]
        kept = torch.isin(original, torch.tensor(part.classes))
        void = original == IGNORE_INDEX
        assert set(torch.unique(erased).tolist()) <= {*part.classes, BACKGROUND_INDEX, 255}
        assert torch.equal(erased[kept], original[kept])  # its classes as they were
        assert (erased[void] == IGNORE_INDEX).all()  # void stays void, not background
        assert (erased[~kept & ~void] == BACKGROUND_INDEX).all()  # other classes: background
    # a part by index (the Simulation Engine's partition-id) is the same part
    assert open_part(part_spec(path, "5")).part == part


def test_a_part_refuses_another_dataset_and_unknown_parts(city, tmp_path):
    p = make_partition(city["spec"], "iid", num_clients=3, seed=0)
    path = p.save(tmp_path / "p.json")
    other = tmp_path / "other"
    synth_domain("cityscapes-like", other, split="train", num=5, size=(64, 128), seed=1,
                 progress=False)  # fmt: skip
    with pytest.raises(DataError, match="not the dataset"):
        open_part(part_spec(path, "client-00"), data=f"cityscapes:{other}?split=train")
    with pytest.raises(Feds2rError, match="no part 'client-07'"):
        open_part(part_spec(path, "client-07"))
    with pytest.raises(DataError, match="names no part"):
        open_part(f"partition:{path}")
    data = json.loads(path.read_text())
    data["format_version"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="format"):
        Partition.load(tmp_path / "bad.json")


def test_a_class_no_image_holds_is_refused_for_noniid(tmp_path):
    root = tmp_path / "cs"
    synth_domain("cityscapes-like", root, split="train", num=2, size=(32, 64), seed=0,
                 progress=False)  # fmt: skip
    with pytest.raises(DataError, match="no image holds"):
        make_partition(f"cityscapes:{root}?split=train", "noniid1")
    with pytest.raises(DataError, match="at least as many images"):
        make_partition(f"cityscapes:{root}?split=train", "iid", num_clients=3)


# ----------------------------------------------------------------------------- the losses on it


def test_erase_labels_and_ignore_background():
    label = torch.tensor([[0, 1, 2, 255], [13, 13, 0, 5]])
    erased = erase_labels(label, (0, 13))
    assert erased.tolist() == [[0, 254, 254, 255], [13, 13, 0, 254]]
    assert ignore_background(erased).tolist() == [[0, 255, 255, 255], [13, 13, 0, 255]]
    assert torch.equal(erase_labels(label, range(NUM_CLASSES)), label)


def test_backce_on_a_partitioned_batch(city, tmp_path):
    p = make_partition(city["spec"], "noniid1", seed=0)
    path = p.save(tmp_path / "p.json")
    part = p.part("client-13")  # car
    ds = open_part(part_spec(path, part.name))
    labels = torch.stack([ds[i]["label"] for i in range(2)])  # (2, 64, 128)
    original = torch.stack(
        [city["dataset"][_index(city)[ds[i]["name"]]]["label"] for i in range(2)]
    )
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 64, 128, generator=g, requires_grad=True)
    loss = back_cross_entropy(logits, labels, part.classes)

    # by hand, eq. (4)-(5): car pixels -log q(car); background -log sum_{k != car} q(k); void out
    log_q = F.log_softmax(logits, 1)
    car, bg = labels == 13, labels == BACKGROUND_INDEX
    assert car.any() and bg.any() and (labels == IGNORE_INDEX).any()
    others = torch.logsumexp(log_q[:, [k for k in range(NUM_CLASSES) if k != 13]], 1)
    by_hand = -torch.cat([log_q[:, 13][car], others[bg]]).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # the same as full labels with every other class hidden from the client
    assert loss.item() == pytest.approx(
        back_cross_entropy(logits, original, (13,)).item(), rel=1e-5
    )

    # eq. (7): on background, BackCE pushes the other classes' logits up; CE ignores it
    loss.backward()
    grad_bg = logits.grad.permute(0, 2, 3, 1)[bg]  # (P, K)
    assert (grad_bg[:, 13] > 0).all() and (grad_bg[:, :13] < 0).all()
    ce = F.cross_entropy(logits, ignore_background(labels), ignore_index=IGNORE_INDEX)
    (ce_grad,) = torch.autograd.grad(ce, logits)
    assert ce_grad.permute(0, 2, 3, 1)[bg].abs().max() == 0
    with pytest.raises(ValueError, match="holds every class"):
        back_cross_entropy(logits, labels, range(NUM_CLASSES))

    # FedSeg's pseudo-labels fill background, never the pixels of the client's own classes
    confident = torch.full((2, NUM_CLASSES, 64, 128), -10.0)
    confident[:, 2] = 10.0  # the global model says "building" everywhere
    pseudo = pseudo_labels(labels, confident, part.classes)
    assert (pseudo[bg] == 2).all() and torch.equal(pseudo[car], labels[car])
