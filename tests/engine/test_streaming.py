"""Streamed training data (feds2r/engine/loader.py): the same batches as the in-memory cache
whatever the worker count, exact resume with workers, bad samples and dead workers."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from feds2r.client import train_client
from feds2r.data import open_dataset
from feds2r.data.dataset import list_dataset
from feds2r.data.world import synth_domain
from feds2r.engine.data import ResizedCache, make_batch, random_view, view_draws
from feds2r.engine.loader import MemoryBatches, StreamBatches, StreamingData
from feds2r.engine.train import TrainConfig
from feds2r.errors import DataError, Feds2rError

AUG = {"crop": (32, 64), "scale": (0.75, 1.5), "flip": True, "jitter": 0.25, "blur_prob": 0.5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gta")
    synth_domain("gta5-like", root, split="train", num=6, size=(64, 128), progress=False)
    return f"gta5:{root}?split=train"


@pytest.fixture
def one_thread():
    """Views are computed with one thread when streamed; the memory path uses the run's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg(**kw) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=2,
        height=32,
        crop=(32, 64),
        warmup_steps=2,
        checkpoint_every=3,
        log_every=1,
        lr=1e-3,
        device="cpu",
        threads=1,
        loader="stream",
        workers=2,
    )
    return TrainConfig(**{**base, **kw})


def children() -> list[int]:
    """The live child processes of this one."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found += [int(x) for x in (task / "children").read_text().split()]
    return found


needs_proc = pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="needs Linux's /proc/PID/task/TID/children",
)


@pytest.mark.parametrize(
    "aug",
    [
        AUG,
        {**AUG, "flip": False, "jitter": 0.0, "blur_prob": 0.0},
        {**AUG, "blur_prob": 1.0},
    ],
)
def test_a_view_from_its_draws_equals_a_view_drawing_itself(aug):
    image = torch.randint(0, 256, (3, 40, 80), dtype=torch.uint8)
    label = torch.randint(0, 19, (40, 80), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(10):
        a = random_view(image, label, g=g1, **aug)
        draws = view_draws(g2, flip=aug["flip"], jitter=aug["jitter"], blur_prob=aug["blur_prob"])
        b = random_view(image, label, draws=draws, **aug)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(g1.get_state(), g2.get_state())  # the same numbers used up
    with pytest.raises(ValueError, match="fewer"):
        random_view(image, label, draws=draws[:2], **aug)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_memory_batches(tiny, one_thread, workers):
    cache = ResizedCache(open_dataset(tiny), 32, progress=False)
    memory = MemoryBatches(
        cache, torch.Generator().manual_seed(3), batch_size=3, aug=AUG, batch_fn=make_batch
    )
    stream = StreamBatches(
        StreamingData(list_dataset(tiny)),
        torch.Generator().manual_seed(3),
        start=0,
        stop=6,
        batch_size=3,
        height=32,
        aug=AUG,
        workers=workers,
    )
    try:
        for step in range(1, 7):
            a, b = memory.next(), stream.next()
            assert a.keys() == b.keys() == {"image", "label"}
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
            # the state a checkpoint saves: as if the workers had not read ahead
            assert torch.equal(
                memory.generator(step).get_state(), stream.generator(step).get_state()
            )
    finally:
        stream.close()


def test_per_sample_metadata_is_compact(tiny):
    data = StreamingData(list_dataset(tiny))
    assert isinstance(data.files.images, np.ndarray) and data.files.images.dtype.kind == "S"
    assert isinstance(data.files.labels, np.ndarray) and len(data.files.labels) == 6
    per_sample = len(pickle.dumps(data)) / len(data)
    longest = max(len(p) for p in data.files.images) + max(len(p) for p in data.files.labels)
    assert per_sample < longest + 200  # the two paths, not a Python object per sample


@needs_proc
def test_resume_with_workers_is_bit_exact_and_equals_the_memory_loader(tiny, tmp_path):
    train_client(tiny, "segformer-cpu", tmp_path / "a", cfg(), progress=False)
    assert not children()  # the workers stopped with the run

    class Killed(Exception):
        pass

    def crash(model, step: int) -> None:
        if step == 5:  # after the step-3 checkpoint, with the workers reading ahead
            raise Killed

    with pytest.raises(Killed):
        train_client(tiny, "segformer-cpu", tmp_path / "b", cfg(), progress=False, on_step=crash)
    assert not (tmp_path / "b/model.safetensors").exists() and not children()
    torch.manual_seed(12345)  # a fresh process has another global state: the saved one wins
    train_client(tiny, "segformer-cpu", tmp_path / "b", cfg(workers=1), progress=False)
    train_client(tiny, "segformer-cpu", tmp_path / "c", cfg(loader="memory"), progress=False)
    a = load_file(str(tmp_path / "a/model.safetensors"))
    for other in ("b", "c"):
        b = load_file(str(tmp_path / other / "model.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), other
    log = [json.loads(x) for x in (tmp_path / "a/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert all(0 <= r["data_s"] <= r["step_s"] for r in log)


@pytest.fixture
def broken(tiny, tmp_path) -> tuple[str, Path]:
    """A copy of the tiny set whose image drawn first (seed 0) is not an image."""
    spec = open_dataset(tiny).spec
    root = tmp_path / "broken"
    shutil.copytree(spec.path, root)
    first = torch.randint(6, (2,), generator=torch.Generator().manual_seed(0))[0].item()
    bad = root / list_dataset(f"gta5:{root}?split=train").samples[first].image.relative_to(root)
    bad.write_bytes(b"not a png")
    return f"gta5:{root}?split=train", bad


@needs_proc
def test_a_corrupt_sample_in_a_worker_stops_the_run_naming_the_file(broken, tmp_path):
    spec, bad = broken
    with pytest.raises(DataError, match=f"unreadable image {bad}.*--skip-bad") as caught:
        train_client(spec, "segformer-cpu", tmp_path / "out", cfg(), progress=False)
    assert caught.value.path == str(bad)
    assert not children()  # the workers are stopped
    assert not (tmp_path / "out/model.safetensors").exists()  # nothing half-written


@needs_proc
def test_a_corrupt_sample_is_left_out_with_skip_bad(broken, tmp_path):
    spec, bad = broken
    with pytest.warns(UserWarning, match=f"skipping bad sample: unreadable image {bad}"):
        summary = train_client(
            spec, "segformer-cpu", tmp_path / "out", cfg(), on_error="skip", progress=False
        )
    assert summary["steps"] == 8 and (tmp_path / "out/model.safetensors").is_file()
    assert not children()


def test_a_bad_sample_is_left_out_of_its_batch(broken, one_thread):
    spec, bad = broken
    data = StreamingData(list_dataset(spec), skip_bad=True)
    stream = StreamBatches(
        data,
        torch.Generator().manual_seed(0),
        start=0,
        stop=1,
        batch_size=2,
        height=32,
        aug=AUG,
        workers=0,
    )
    with pytest.warns(UserWarning, match="skipping bad sample"):
        assert len(stream.next()["image"]) == 1  # the bad one of the two drawn is left out


def test_a_batch_of_bad_samples_takes_the_next_readable_one(broken, one_thread):
    spec, bad = broken
    data = StreamingData(list_dataset(spec), skip_bad=True)
    stream = StreamBatches(
        data,
        torch.Generator().manual_seed(0),
        start=0,
        stop=40,
        batch_size=1,
        height=32,
        aug=AUG,
        workers=0,
    )
    with pytest.warns(UserWarning, match="skipping bad sample"):
        sizes = [len(stream.next()["image"]) for _ in range(40)]
    assert sizes == [1] * 40  # the bad sample was drawn (seed 0) and replaced; no step empty


@needs_proc
def test_a_killed_worker_gives_one_message_and_no_hang(tiny, tmp_path):
    def kill_a_worker(model, step: int) -> None:
        if step == 2:
            os.kill(children()[0], signal.SIGKILL)

    def too_long(signum, frame):
        raise TimeoutError("the run hung after its worker was killed")

    before = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(120)
    try:
        with pytest.raises(Feds2rError, match="worker process died.*fewer workers.*--batch-size"):
            train_client(
                tiny,
                "segformer-cpu",
                tmp_path / "out",
                cfg(),
                progress=False,
                on_step=kill_a_worker,
            )
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert not children()


def test_a_process_share_is_those_positions_of_the_whole_batch(tiny, one_thread):
    """Under torchrun each process streams only its positions of every batch (and draws all)."""

    def stream(part: slice) -> StreamBatches:
        data = StreamingData(list_dataset(tiny))
        generator = torch.Generator().manual_seed(5)
        return StreamBatches(
            data, generator, start=0, stop=3, batch_size=4, height=32, aug=AUG, workers=0, part=part
        )

    whole, first, second = stream(slice(None)), stream(slice(0, 2)), stream(slice(2, 4))
    for step in range(1, 4):
        a, b, c = whole.next(), first.next(), second.next()
        assert torch.equal(a["image"], torch.cat([b["image"], c["image"]]))
        assert torch.equal(a["label"], torch.cat([b["label"], c["label"]]))
        states = [s.generator(step).get_state() for s in (whole, first, second)]
        assert torch.equal(states[0], states[1]) and torch.equal(states[0], states[2])
