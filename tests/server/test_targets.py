"""The teachers' targets at scale (feds2r/server/targets.py, feds2r/server/stage.py): disk-backed
targets equal the in-memory ones, a batch reads only its rows, the file is written atomically and
reused only under the same key, a distillation trains the same student either way (also when it
stops and resumes), and the inconsistency stage holds no per-image state."""

from __future__ import annotations

import pickle
import sys
import weakref

import pytest
import torch

from feds2r.engine.data import ResizedCache, make_batch
from feds2r.errors import Feds2rError
from feds2r.models import create_model
from feds2r.server import targets as targets_mod
from feds2r.server.targets import (
    DiskTargets,
    DiskTargetsWriter,
    TargetsPlace,
    attach_targets,
    compute_targets,
)
from feds2r.server.teachers import TeacherEnsemble

AUG = dict(crop=(32, 64), scale=(0.75, 1.25), flip=True, jitter=0.0, blur_prob=0.0)


def tiny_cache(shapes: list[tuple[int, int]]) -> ResizedCache:
    cache = ResizedCache([], 64, progress=False)
    g = torch.Generator().manual_seed(0)
    cache.images = [
        torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes
    ]
    cache.labels = [None] * len(shapes)
    return cache


@pytest.fixture(scope="module")
def ensemble() -> TeacherEnsemble:
    torch.manual_seed(0)
    return TeacherEnsemble(
        [create_model("m2f-cpu"), create_model("m2f-cpu")], fusion=True, fallback=1
    )


def test_disk_targets_equal_the_in_memory_ones_bit_for_bit(ensemble, tmp_path):
    # two image shapes, more images than a batch of teacher targets (16)
    cache = tiny_cache([(32, 64)] * 11 + [(32, 96)] * 7)
    memory, channels = ensemble.cache_targets(cache, with_features=True, progress=False)
    assert isinstance(memory, list) and channels == 64

    def fn(images):
        return ensemble.batch_targets(images, with_features=True)

    place = TargetsPlace("disk", tmp_path / "t", {"run": 1})
    disk = compute_targets(cache, fn, place=place, progress=False)
    assert isinstance(disk, DiskTargets) and len(disk) == len(memory)
    for m, d in zip(memory, disk, strict=True):
        assert d.dtype == torch.float16 and torch.equal(m, d)  # float16 stored as float16
    # the batches of the training loop are the same, views and all
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = make_batch(cache.with_maps(memory), [0, 17, 5], g1, **AUG)
    b = make_batch(attach_targets(cache, disk), [0, 17, 5], g2, **AUG)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "t").glob("*.tmp")) and not list((tmp_path / "t").glob(".*.tmp"))


def test_the_file_is_reused_only_under_the_same_key_and_never_half_written(ensemble, tmp_path):
    cache = tiny_cache([(32, 64)] * 5)
    calls = []

    def fn(images):
        calls.append(len(images))
        return ensemble.batch_targets(images)

    first = compute_targets(
        cache, fn, place=TargetsPlace("disk", tmp_path, {"k": 1}), progress=False
    )
    assert sum(calls) == 5
    again = compute_targets(
        cache, fn, place=TargetsPlace("disk", tmp_path, {"k": 1}), progress=False
    )
    assert sum(calls) == 5 and torch.equal(again[4], first[4])  # reused: no teacher ran
    compute_targets(cache, fn, place=TargetsPlace("disk", tmp_path, {"k": 2}), progress=False)
    assert sum(calls) == 10  # another key: made again

    def failing(images):  # dies after the first batch was written
        if calls:
            raise RuntimeError("teacher died")
        calls.append(len(images))
        return ensemble.batch_targets(images)

    calls.clear()
    two = tiny_cache([(32, 64)] * 3 + [(32, 96)] * 2)  # two batches
    with pytest.raises(RuntimeError, match="teacher died"):
        compute_targets(
            two, failing, place=TargetsPlace("disk", tmp_path, {"k": 3}), progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.f16"]  # no index, no temp file
    assert DiskTargets.find(tmp_path, {"k": 2}, 5) is None  # the index went before the rewrite


def test_auto_goes_to_disk_above_the_threshold(ensemble, tmp_path, monkeypatch):
    cache = tiny_cache([(32, 64)] * 3)
    place = TargetsPlace("auto", tmp_path / "t", {})
    small = compute_targets(cache, ensemble.batch_targets, place=place, progress=False)
    assert isinstance(small, list) and not (tmp_path / "t").exists()
    monkeypatch.setattr(targets_mod, "AUTO_DISK_BYTES", 0)
    big = compute_targets(cache, ensemble.batch_targets, place=place, progress=False)
    assert isinstance(big, DiskTargets)
    assert all(torch.equal(s, b) for s, b in zip(small, big, strict=True))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_batch_reads_only_its_rows_of_the_file(tmp_path):
    rows, shape = 48, (8, 256, 256)  # 1 MiB per image, 48 MiB in all
    writer = DiskTargetsWriter(tmp_path, rows, {})
    for i in range(rows):
        writer.put(i, torch.full(shape, float(i), dtype=torch.float16))
    targets = writer.finish()
    targets.close()
    cache = attach_targets(tiny_cache([(8, 16)] * rows), targets)
    assert cache.maps is targets  # kept as it is, not copied into a list of tensors
    before = _rss()
    got = [cache.maps[i] for i in (3, 40)]
    grown = _rss() - before
    assert [float(t[0, 0, 0]) for t in got] == [3.0, 40.0] and got[0].shape == shape
    assert grown < 12 * 2**20, f"reading 2 of {rows} rows grew memory by {grown / 2**20:.0f} MiB"
    # a copy in another process (a DataLoader worker) maps the file again
    clone = pickle.loads(pickle.dumps(targets))
    assert clone._mm is None and torch.equal(clone[7], targets[7])


def test_a_full_disk_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    writer = DiskTargetsWriter(tmp_path, 1, {})

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(writer, "_file", Full())
    with pytest.raises(Feds2rError, match="No space left on device.*--targets memory"):
        writer.put(0, torch.zeros(2, 2, 2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_distillation_trains_the_same_student_with_disk_targets(tmp_path):
    """Memory targets, uninterrupted, against disk targets in a run stopped after its first
    checkpoint and resumed: the same weights, and OUT keeps no targets once done."""
    from feds2r.data.world import synth_domain
    from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
    from feds2r.engine.train import TrainConfig
    from feds2r.server.distill import DistillConfig, run_distill

    synth_domain("cityscapes-like", tmp_path / "cs", split="train", num=4, size=(64, 128),
                 progress=False)  # fmt: skip
    torch.manual_seed(0)
    clients = []
    for k in range(2):
        save_checkpoint(create_model("m2f-cpu"), tmp_path / f"c{k}", meta={"role": "client"})
        clients.append(tmp_path / f"c{k}")
    recipe = TrainConfig(
        steps=3, batch_size=2, height=32, crop=(32, 64), warmup_steps=1, checkpoint_every=1
    )
    data = f"cityscapes:{tmp_path / 'cs'}?split=train"

    def run(out, targets, on_step=None):
        cfg = DistillConfig(init="fedavg", feature_fusion=True, targets=targets)
        return run_distill(clients, data, out, cfg, recipe, progress=False, on_step=on_step)

    run(tmp_path / "mem", "memory")

    class Stop(Exception):
        pass

    def stop(model, step):
        if step == 1:
            assert (tmp_path / "disk" / "teacher_targets" / "maps.f16").is_file()
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "disk", "disk", stop)
    assert (tmp_path / "disk" / "teacher_targets" / "index.json").is_file()  # kept to resume
    run(tmp_path / "disk", "disk")
    assert not (tmp_path / "disk" / "teacher_targets").exists()
    a, meta = load_checkpoint(tmp_path / "mem")
    b, _ = load_checkpoint(tmp_path / "disk")
    assert "targets" not in meta["distill_config"]  # where targets live shapes no weight
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_inconsistency_holds_no_image_beyond_its_batch():
    from feds2r.server.inconsistency import measure_inconsistency

    live = [0, 0]  # images alive now, most alive at once

    class Stream:
        spec = "stream"

        def __len__(self):
            return 12

        def __getitem__(self, i):
            image = torch.randint(0, 255, (3, 32, 64), dtype=torch.uint8)
            live[0] += 1
            live[1] = max(live)
            weakref.finalize(image, lambda: live.__setitem__(0, live[0] - 1))
            return {"image": image}

    torch.manual_seed(0)
    clients = [create_model("segformer-cpu").eval() for _ in range(2)]
    result = measure_inconsistency(clients, Stream(), height=32, batch_size=2, progress=False)
    # at most the batch in use, the one being gathered and the next image: never the set
    assert result.num_images == 12 and live[1] <= 2 * 2 + 1


def test_the_targets_setting_is_checked():
    from feds2r.server.distill import DistillConfig

    with pytest.raises(ValueError, match="targets must be one of auto, memory, disk"):
        DistillConfig(targets="ssd")
    assert DistillConfig().targets == "auto"
