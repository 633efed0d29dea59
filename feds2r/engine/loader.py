"""Training batches for the one loop, from memory or streamed from disk by DataLoader workers.

The training loop asks a :class:`Batches` for one batch per step. Two kinds:

- :class:`MemoryBatches` over a :class:`~feds2r.engine.data.ResizedCache` (every sample decoded
  and resized before the first step): the batch is made in the main process.
- :class:`StreamBatches` over :class:`StreamingData` (only the file names are held): each sample
  is read from disk, resized and augmented in ``workers`` DataLoader processes.

Both draw every random number in the main process, from the run's one generator and in the same
order: a step's sample indices, then each view's numbers (:func:`~feds2r.engine.data.view_draws`).
A worker gets the indices and the numbers (a :class:`Job`) and only computes. So a batch does not
depend on the number of workers, the two kinds give the same batches, and the generator state to
save with a checkpoint is the one after the last batch the loop used (workers read ahead: the
state after each job is kept until the loop reaches it).

One difference, not of randomness: PyTorch splits interpolation and sums by thread, so a view's
last bits depend on the number of threads that compute it. Streamed views are computed with one
thread (in the workers, and in the main process with ``workers = 0``); the memory path computes
them with the run's threads, as it always did. The two give bit-identical batches when the run
uses one thread (``threads = 1``), and the same batches up to rounding otherwise.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from feds2r.data.dataset import DatasetSpec, SegmentationDataset
from feds2r.data.formats import Sample
from feds2r.engine.data import ResizedCache, random_view, resize_pair, stack_views, view_draws
from feds2r.errors import DataError, Feds2rError

LOADERS = ("stream", "memory")
"""The values of ``TrainConfig.loader``."""


def default_workers() -> int:
    """``min(4, CPU cores this process may use)``: the ``workers`` of ``workers = -1``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op thread (restored after): streamed views are computed with
    one thread wherever they are made, so that they do not depend on where."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


# ----------------------------------------------------------------------------- streamed data


class SampleFiles:
    """A labelled dataset's files, held compactly: per sample two byte strings in two numpy
    arrays (not a Python object per sample), cheap to copy into or pickle for every worker."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.spec: DatasetSpec = dataset.spec
        self.with_labels: bool = dataset.with_labels
        self.images = np.array([os.fsencode(s.image) for s in dataset.samples], dtype=np.bytes_)
        """(N,) image paths."""
        self.labels = (
            np.array([os.fsencode(s.label) for s in dataset.samples], dtype=np.bytes_)
            if dataset.with_labels
            else None
        )
        """(N,) label paths, or None for a dataset without labels."""

    def __len__(self) -> int:
        return len(self.images)

    def path(self, index: int) -> str:
        """The image file of sample ``index``."""
        return os.fsdecode(self.images[index])

    def read(self, index: int) -> dict[str, Tensor]:
        """Sample ``index`` as :class:`~feds2r.data.SegmentationDataset` serves it (``image``
        uint8 (3, H, W), ``label`` int64 (H, W)); raises :class:`DataError` naming a bad file."""
        image = Path(self.path(index))
        label = None if self.labels is None else Path(os.fsdecode(self.labels[index]))
        # the dataset's own reader, on a one-sample dataset: the same checks and conversions
        one = SegmentationDataset(
            spec=self.spec,
            samples=[Sample(image.name, image, label)],
            with_labels=self.with_labels,
            on_error="raise",
            defects=[],
        )
        return one[0]


class StreamingData:
    """A dataset to train from without holding it: :func:`~feds2r.engine.train.train` takes this
    in place of a :class:`~feds2r.engine.data.ResizedCache` and streams it (``config.workers``
    processes, images resized to ``config.height``).

    ``skip_bad``: a sample that cannot be read (image, label, sizes) is left out of its batch
    with a warning naming the file, and training goes on; a batch whose every sample is bad takes
    the next readable sample of the listing instead. Otherwise the first bad sample stops the run
    with a :class:`DataError` naming the file.
    """

    def __init__(self, dataset: SegmentationDataset, *, skip_bad: bool = False) -> None:
        self.files = SampleFiles(dataset)
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.files)


class Job(NamedTuple):
    """What a worker needs to make the batch of one step: nothing random is drawn there."""

    step: int
    """The step (0-based) the batch is for."""
    indices: tuple[int, ...]
    """The samples of the batch."""
    draws: tuple[tuple[float, ...], ...]
    """Per sample, the numbers of its view (:func:`~feds2r.engine.data.view_draws`)."""


Problem = tuple[str, str, str]
"""A bad sample met in a worker: (:class:`DataError` kind, path, message)."""


class _ViewMaker(Dataset):
    """The worker side: a :class:`Job` in, the step's batch and the bad samples met out."""

    def __init__(self, data: StreamingData, height: int, aug: dict[str, Any]) -> None:
        self.files = data.files
        self.skip_bad = data.skip_bad
        self.height = height
        self.aug = aug

    def __len__(self) -> int:
        return len(self.files)

    def _view(self, index: int, draws: tuple[float, ...], problems: list[Problem]):
        try:
            item = self.files.read(index)
        except DataError as exc:
            problems.append((exc.kind, exc.path or self.files.path(index), str(exc)))
            return None
        image, label = resize_pair(item["image"], item.get("label"), self.height)
        label = None if label is None else label.to(torch.uint8)  # as ResizedCache holds it
        return random_view(image, label, draws=draws, **self.aug)

    def __getitem__(self, job: Job) -> tuple[dict[str, Tensor] | None, list[Problem]]:
        views, problems = [], []
        with one_thread():
            for index, draws in zip(job.indices, job.draws, strict=True):
                view = self._view(index, draws, problems)
                if view is None and not self.skip_bad:
                    return None, problems
                if view is not None:
                    views.append(view)
            # every sample bad: the next readable one of the listing, with the first's numbers
            for k in range(1, len(self.files)):
                if views:
                    break
                index = (job.indices[0] + k) % len(self.files)
                view = self._view(index, job.draws[0], problems)
                if view is not None:
                    views.append(view)
        return (stack_views(views) if views else None), problems


class _JobSampler:
    """Draws the jobs of steps ``start``..``stop - 1`` from the run's generator ``g``, in the
    main process, in the order the memory path draws them; keeps ``g``'s state after each."""

    def __init__(
        self,
        g: torch.Generator,
        size: int,
        batch_size: int,
        start: int,
        stop: int,
        randomness: dict[str, Any],
        part: slice,
    ) -> None:
        self.g, self.size, self.batch_size = g, size, batch_size
        self.start, self.stop = start, stop
        self.randomness, self.part = randomness, part
        self.states: dict[int, Tensor] = {}
        """Generator state after the jobs of ``step`` steps were drawn, by ``step``."""

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Job]:
        for step in range(self.start, self.stop):
            indices = torch.randint(self.size, (self.batch_size,), generator=self.g).tolist()
            draws = tuple(tuple(view_draws(self.g, **self.randomness)) for _ in indices)
            self.states[step + 1] = self.g.get_state()
            # every position is drawn (the generator stays in step); only ``part`` is made
            yield Job(step, tuple(indices[self.part]), draws[self.part])


def _as_is(item: Any) -> Any:
    """The DataLoader's collate function: the worker already made the batch."""
    return item


def _init_worker(worker_id: int) -> None:
    """One thread per worker, for PyTorch and OpenCV (the workers are the parallelism)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(0)


# ----------------------------------------------------------------------------- batches


class Batches(Protocol):
    """One batch per training step, and the data generator to save with a checkpoint."""

    def next(self) -> dict[str, Tensor]:
        """The next step's batch (CPU tensors, pinned when streaming to a GPU)."""
        ...

    def generator(self, step: int) -> torch.Generator:
        """The data generator as it stood after the batches of ``step`` steps were drawn."""
        ...

    def close(self) -> None:
        """Stop any worker process."""
        ...


class MemoryBatches:
    """Batches made in the main process from samples held in memory: ``batch_fn(data, indices,
    g, **aug)`` after drawing the indices from ``g``."""

    def __init__(
        self,
        data: ResizedCache,
        g: torch.Generator,
        *,
        batch_size: int,
        aug: dict[str, Any],
        batch_fn: Callable[..., dict[str, Tensor]],
    ) -> None:
        self.data, self.g, self.batch_size = data, g, batch_size
        self.aug, self.batch_fn = aug, batch_fn

    def next(self) -> dict[str, Tensor]:
        idx = torch.randint(len(self.data), (self.batch_size,), generator=self.g).tolist()
        return self.batch_fn(self.data, idx, self.g, **self.aug)

    def generator(self, step: int) -> torch.Generator:
        return self.g

    def close(self) -> None:
        pass


class StreamBatches:
    """Batches of steps ``start``..``stop - 1`` streamed from disk by ``workers`` DataLoader
    processes (0: in the main process), each sample resized to ``height`` and augmented with
    ``aug``; ``pin`` pins them for a fast copy to a GPU. The workers start at the first
    :meth:`next`.

    ``part``: the positions of each batch this process makes (under torchrun, its share of the
    global batch: the same views as those positions of the whole batch); all by default.
    """

    def __init__(
        self,
        data: StreamingData,
        g: torch.Generator,
        *,
        start: int,
        stop: int,
        batch_size: int,
        height: int,
        aug: dict[str, Any],
        workers: int,
        pin: bool = False,
        part: slice = slice(None),
    ) -> None:
        self.data, self.g, self.workers, self.start = data, g, workers, start
        randomness = {k: aug[k] for k in ("flip", "jitter", "blur_prob")}
        self.sampler = _JobSampler(g, len(data), batch_size, start, stop, randomness, part)
        self.loader = DataLoader(
            _ViewMaker(data, height, aug),
            batch_size=None,  # a job is a whole batch
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=pin,
            worker_init_fn=_init_worker if workers else None,
            persistent_workers=workers > 0,
            # the DataLoader draws its workers' base seed from this generator, not from the
            # global one that the model's own randomness uses
            generator=torch.Generator().manual_seed(0),
        )
        self._it: Iterator | None = None
        self._warned: set[str] = set()

    def next(self) -> dict[str, Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        batch, problems = next(self._it)
        for kind, path, message in problems:
            if not self.data.skip_bad:
                self.close()
                raise DataError(
                    f"{message} (met while loading a training batch; the workers are stopped "
                    "and the last saved state is kept: run the same command again to resume)",
                    kind=kind,
                    path=path,
                )
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipping bad sample: {message}", stacklevel=2)
        if batch is None:  # skipping, and not one sample of the dataset is readable
            self.close()
            raise DataError(
                f"every sample of {self.data.files.spec} tried is unreadable; run "
                f"`feds2r data check {self.data.files.spec}` for the list",
                kind="empty",
                path=str(self.data.files.spec.path),
            )
        return batch

    def generator(self, step: int) -> torch.Generator:
        if step == self.start:
            return self.g
        snapshot = torch.Generator()
        snapshot.set_state(self.sampler.states[step])
        for old in [s for s in self.sampler.states if s < step]:
            del self.sampler.states[old]
        return snapshot

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is None:
            return
        try:
            shutdown()
        except RuntimeError as exc:
            # PyTorch's SIGCHLD handler raises again about a worker that died (the error being
            # reported) when the others exit; the workers are stopped all the same
            if "DataLoader worker" not in str(exc):
                raise


def worker_death(exc: BaseException, workers: int, batch_size: int) -> Feds2rError | None:
    """The one message for a DataLoader worker that died (PyTorch's RuntimeError about it), or
    None if ``exc`` is about something else."""
    if not isinstance(exc, RuntimeError) or "DataLoader worker" not in str(exc):
        return None
    return Feds2rError(
        f"a data-loading worker process died ({str(exc).rstrip('. ')}); most often the system "
        f"ran out of host memory and killed it. Use fewer workers (--workers, now {workers}) or "
        f"a smaller batch (--batch-size, now {batch_size}), then run the same command again to "
        "resume from the last saved state"
    )


def open_batches(
    data: ResizedCache | StreamingData,
    g: torch.Generator,
    *,
    start: int,
    stop: int,
    batch_size: int,
    height: int,
    aug: dict[str, Any],
    workers: int,
    pin: bool,
    batch_fn: Callable[..., dict[str, Tensor]],
    part: slice = slice(None),
) -> Batches:
    """The batches of steps ``start``..``stop - 1``: streamed for :class:`StreamingData`, made in
    memory (by ``batch_fn``) otherwise. Streamed batches hold only the positions ``part`` (this
    process's share under torchrun); batches made in memory hold every position."""
    if isinstance(data, StreamingData):
        return StreamBatches(
            data,
            g,
            start=start,
            stop=stop,
            batch_size=batch_size,
            height=height,
            aug=aug,
            workers=default_workers() if workers < 0 else workers,
            pin=pin,
            part=part,
        )
    return MemoryBatches(data, g, batch_size=batch_size, aug=aug, batch_fn=batch_fn)
