"""The server stages streaming their images (feds2r/server/stage.py, feds2r/engine/loader.py):
with the recipe's loader "stream" no stage loads the server set into memory; distillation,
self-training and the lite route train the same weights bit for bit as with the "memory" loader
at one thread, whatever the number of workers and wherever the teachers' targets live; a bad
server image met in a worker is named, and skipped with on_error="skip"."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feds2r.data import open_dataset
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.loader import StreamBatches, StreamedImages, one_thread
from feds2r.engine.train import TrainConfig
from feds2r.errors import DataError, Feds2rError
from feds2r.models import create_model
from feds2r.server.distill import DistillConfig, run_distill
from feds2r.server.stage import ServerImages

RECIPE = TrainConfig(
    steps=3,
    batch_size=2,
    height=32,
    crop=(32, 64),
    warmup_steps=1,
    checkpoint_every=2,
    device="cpu",
    threads=1,  # streamed views are made with one thread: bit for bit at one thread
    loader="memory",
)


def write_folder(folder: Path, num: int, h: int = 48, w: int = 128) -> list[Path]:
    """``num`` random PNG images of ``h`` x ``w`` in ``folder`` (a "folder:" dataset): another
    shape than the real images' (32x85 once resized to 32, against 32x64)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(num)
    paths = [folder / f"gen_{i:03d}.png" for i in range(num)]
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return paths


def truncate(path: Path) -> None:
    """Cut an image file in half: its header still gives its size, its pixels fail to decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Four real cityscapes-like images, three generated ones of another shape, two random
    client models and a random global model (m2f-cpu)."""
    from feds2r.data.world import synth_domain

    root = tmp_path_factory.mktemp("world")
    synth_domain("cityscapes-like", root / "cs", split="train", num=4, size=(64, 128),
                 progress=False)  # fmt: skip
    write_folder(root / "gen", 3)
    torch.manual_seed(0)
    clients = []
    for k in range(2):
        save_checkpoint(create_model("m2f-cpu"), root / f"c{k}", meta={"role": "client"})
        clients.append(root / f"c{k}")
    save_checkpoint(create_model("m2f-cpu"), root / "global", meta={"route": "distill"})
    return {
        "root": root,
        "data": f"cityscapes:{root / 'cs'}?split=train",
        "generated": str(root / "gen"),
        "clients": clients,
        "global": root / "global",
    }


def no_loading(monkeypatch) -> None:
    """Make any load of the server set into memory fail the test."""

    def refuse(self, height, *, progress=True):
        raise AssertionError("a streamed stage loaded the server images into memory")

    monkeypatch.setattr(ServerImages, "load", refuse)


def assert_same_weights(a: Path, b: Path) -> None:
    ma, _ = load_checkpoint(a)
    mb, _ = load_checkpoint(b)
    for (name, p), q in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def distill(world: dict, out: Path, recipe: TrainConfig, targets: str, **options) -> dict:
    config = DistillConfig(init="fedavg", feature_fusion=True, targets=targets)
    with one_thread():  # the memory path reads and resizes with the process's threads
        return run_distill(
            world["clients"],
            world["data"],
            out,
            config,
            recipe,
            generated=world["generated"],
            progress=False,
            **options,
        )


@pytest.fixture(scope="module")
def distilled_in_memory(world) -> Path:
    out = world["root"] / "distill-memory"
    distill(world, out, RECIPE, "memory")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers, targets", [(0, "memory"), (2, "memory"), (2, "disk"),
                                              (0, "disk")])  # fmt: skip
def test_streamed_distillation_trains_the_memory_loaders_student(
    world, distilled_in_memory, tmp_path, monkeypatch, workers, targets
):
    no_loading(monkeypatch)
    recipe = dataclasses.replace(RECIPE, loader="stream", workers=workers)
    summary = distill(world, tmp_path / "out", recipe, targets)
    assert summary["steps"] == 3
    assert_same_weights(distilled_in_memory, tmp_path / "out")
    assert not (tmp_path / "out" / "teacher_targets").exists()  # removed once done


@pytest.mark.slow
def test_streamed_distillation_resumes_the_same(world, distilled_in_memory, tmp_path):
    """Stopped after its first checkpoint (step 2) and run again: the same student."""
    recipe = dataclasses.replace(RECIPE, loader="stream", workers=2)

    class Stop(Exception):
        pass

    def stop(model, step):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        distill(world, tmp_path / "out", recipe, "disk", on_step=stop)
    distill(world, tmp_path / "out", recipe, "disk")
    assert_same_weights(distilled_in_memory, tmp_path / "out")


@pytest.mark.slow
def test_distillation_without_cached_targets_streams_the_same(world, tmp_path, monkeypatch):
    """teacher_cache off: the teachers run on every streamed batch, no map is kept."""

    def run(out: Path, recipe: TrainConfig) -> None:
        config = DistillConfig(init="fedavg", teacher_cache=False)
        with one_thread():
            run_distill(world["clients"], world["data"], out, config, recipe,
                        generated=world["generated"], progress=False)  # fmt: skip

    run(tmp_path / "memory", RECIPE)
    no_loading(monkeypatch)
    run(tmp_path / "stream", dataclasses.replace(RECIPE, loader="stream", workers=2))
    assert_same_weights(tmp_path / "memory", tmp_path / "stream")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["self-train", "lite"])
def test_self_training_and_the_lite_route_stream_the_same(world, tmp_path, monkeypatch, stage):
    from feds2r.server.lite import LiteConfig, distill_lite
    from feds2r.server.selftrain import SelfTrainConfig, self_train

    if stage == "self-train":
        fn, config = self_train, SelfTrainConfig(threshold=0.05, teacher_steps=2)
    else:
        fn, config = distill_lite, LiteConfig()

    def run(out: Path, recipe: TrainConfig, targets: str) -> None:
        with one_thread():
            fn(
                world["global"],
                world["clients"],
                world["data"],
                out,
                config,
                DistillConfig(targets=targets),
                recipe,
                generated=world["generated"],
                progress=False,
            )

    run(tmp_path / "memory", RECIPE, "memory")
    no_loading(monkeypatch)
    run(tmp_path / "stream", dataclasses.replace(RECIPE, loader="stream", workers=2), "disk")
    assert_same_weights(tmp_path / "memory", tmp_path / "stream")


@pytest.fixture
def many(tmp_path) -> dict:
    """A server set of 4 real and 30 generated images: 34 in all, so that the 32 images the
    label-free choices are made on leave some out (image 16, the 13th generated one)."""
    from feds2r.data.world import synth_domain

    synth_domain("cityscapes-like", tmp_path / "cs", split="train", num=4, size=(64, 128),
                 progress=False)  # fmt: skip
    paths = write_folder(tmp_path / "gen", 30)
    torch.manual_seed(0)
    save_checkpoint(create_model("segformer-cpu"), tmp_path / "c0", meta={"role": "client"})
    return {
        "data": f"cityscapes:{tmp_path / 'cs'}?split=train",
        "generated": str(tmp_path / "gen"),
        "clients": [tmp_path / "c0"],
        "bad": paths[12],
    }


@pytest.mark.slow
def test_a_bad_generated_image_met_by_a_worker_is_named(many, tmp_path):
    truncate(many["bad"])
    recipe = dataclasses.replace(RECIPE, steps=1, loader="stream", workers=2)
    with pytest.raises(DataError, match=many["bad"].name) as info:
        run_distill(many["clients"], many["data"], tmp_path / "out", DistillConfig(
            student="segformer-cpu", kd="pixel"), recipe, generated=many["generated"],
            progress=False)  # fmt: skip
    assert info.value.path == str(many["bad"])
    assert "reading the server images in batches" in str(info.value)


@pytest.mark.slow
def test_a_bad_image_is_skipped_with_on_error_skip(many, tmp_path, monkeypatch):
    """The image turns bad after the stage opened (and checked) the set: the teachers' pass in a
    worker skips it (a zero map, no valid pixel) and the stage trains on."""
    opened = ServerImages.open.__func__

    def open_then_break(cls, data, generated, on_error="raise"):
        images = opened(cls, data, generated, on_error)
        truncate(many["bad"])
        return images

    monkeypatch.setattr(ServerImages, "open", classmethod(open_then_break))
    recipe = dataclasses.replace(RECIPE, steps=2, loader="stream", workers=2)
    config = DistillConfig(student="segformer-cpu", kd="pixel", targets="memory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_distill(many["clients"], many["data"], tmp_path / "out", config, recipe,
                    generated=many["generated"], on_error="skip", progress=False)  # fmt: skip
    skipped = [str(w.message) for w in caught if "skipping bad sample" in str(w.message)]
    assert skipped and all(many["bad"].name in m for m in skipped)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_streamed_views_carry_their_own_maps_and_skip_a_bad_image(tmp_path):
    """Per-sample maps reach the workers by index: each view's maps are its own sample's (a
    constant map of the sample's index); a bad image is left out of its batch, named."""
    paths = write_folder(tmp_path / "a", 2) + write_folder(tmp_path / "b", 2, 40, 80)
    truncate(paths[1])
    sets = [open_dataset(f"folder:{tmp_path / n}", labels=False) for n in ("a", "b")]
    data = StreamedImages(sets, 32, skip_bad=True)
    assert len(data) == 4 and data.image_shape(3) == (3, 32, 64) and data.image_shape(0)[2] == 85
    maps = [torch.full((1, 8, 21 if i < 2 else 16), float(i), dtype=torch.float16)
            for i in range(4)]  # fmt: skip
    aug = dict(crop=(32, 64), scale=(1.0, 1.0), flip=True, jitter=0.0, blur_prob=0.0)
    batches = StreamBatches(data.with_maps(maps), torch.Generator().manual_seed(0), start=0,
                            stop=4, batch_size=4, height=32, aug=aug, workers=2)  # fmt: skip
    seen = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(4):
                batch = batches.next()
                for m in batch["maps"]:
                    seen.add(float(m.float().max()))
                    assert float(m.float().min()) == float(m.float().max())  # one sample's map
        finally:
            batches.close()
    assert 1.0 not in seen and seen <= {0.0, 2.0, 3.0}
    assert any(paths[1].name in str(w.message) for w in caught)


def test_finetune_lr_scales_the_rate_only_for_a_student_started_from_the_clients(world, tmp_path):
    import json

    def rates(init: str, finetune_lr: float) -> list[float]:
        out = tmp_path / f"{init}-{finetune_lr}"
        config = DistillConfig(init=init, finetune_lr=finetune_lr)
        with one_thread():
            run_distill(world["clients"], world["data"], out, config, RECIPE, progress=False)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        return [row["lr"] for row in log if "lr" in row]

    full, tenth = rates("fedavg", 1.0), rates("fedavg", 0.1)
    assert len(full) == len(tenth) > 0
    assert all(t == pytest.approx(0.1 * f) for f, t in zip(full, tenth, strict=True))
    # run again into the same OUT (the demo's rerun with more rows): found finished, not refused
    # for its scaled rate, and left as it was
    out = tmp_path / "fedavg-0.1"
    before = (out / "model.safetensors").read_bytes()
    with one_thread():
        run_distill(world["clients"], world["data"], out, DistillConfig(init="fedavg",
                    finetune_lr=0.1), RECIPE, progress=False)  # fmt: skip
    assert (out / "model.safetensors").read_bytes() == before
    # a run at another rate is still another run
    with pytest.raises(Feds2rError, match="different config"), one_thread():
        run_distill(world["clients"], world["data"], out, DistillConfig(init="fedavg",
                    finetune_lr=0.5), RECIPE, progress=False)  # fmt: skip
    assert rates("scratch", 0.1) == full  # a student trained from scratch keeps the recipe's rate
    with pytest.raises(ValueError, match="finetune_lr"):
        DistillConfig(finetune_lr=0)
