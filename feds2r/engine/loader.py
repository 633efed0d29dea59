"""Training batches for the one loop, from memory or streamed from disk by DataLoader workers.

The training loop asks a :class:`Batches` for one batch per step. Two kinds:

- :class:`MemoryBatches` over a :class:`~feds2r.engine.data.ResizedCache` (every sample decoded
  and resized before the first step): the batch is made in the main process.
- :class:`StreamBatches` over :class:`StreamingData` (only the file names are held): each sample
  is read from disk, resized and augmented in ``workers`` DataLoader processes. Per-sample maps
  (the server stages' teacher targets: a list in memory or a memory-mapped file) go to the
  workers by index: a worker reads only its own samples' rows.

The server stages stream their unlabelled images as :class:`StreamedImages` (a
:class:`StreamingData` at one height that also reads images in batches for the teachers' pass,
:meth:`StreamedImages.read_chunks`, and serves single images on access).

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

import copy
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from feds2r.data.dataset import DatasetSpec, SegmentationDataset
from feds2r.data.formats import Sample
from feds2r.engine.data import (
    ResizedCache,
    random_view,
    resize_images,
    resize_pair,
    resized_width,
    stack_views,
    view_draws,
)
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

    @property
    def specs(self) -> tuple[DatasetSpec, ...]:
        """The dataset the files come from (one)."""
        return (self.spec,)

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


class ChainedFiles:
    """Several datasets' files one after the other (the server's real images, then its generated
    ones), read as :class:`SampleFiles` reads one dataset's: sample ``i`` of the chain is sample
    ``i - start`` of the part it falls in."""

    def __init__(self, parts: Sequence[SampleFiles]) -> None:
        if not parts:
            raise ValueError("ChainedFiles needs at least one dataset")
        if len({p.with_labels for p in parts}) > 1:
            raise ValueError("cannot chain labelled and unlabelled datasets")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        """(P + 1,) the first sample of each part, then the total."""

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def specs(self) -> tuple[DatasetSpec, ...]:
        """The datasets the files come from, in order."""
        return tuple(p.spec for p in self.parts)

    def _locate(self, index: int) -> tuple[SampleFiles, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part], index - int(self.starts[part])

    def path(self, index: int) -> str:
        """The image file of sample ``index``."""
        part, i = self._locate(index)
        return part.path(i)

    def read(self, index: int) -> dict[str, Tensor]:
        """Sample ``index`` as its dataset serves it (see :meth:`SampleFiles.read`)."""
        part, i = self._locate(index)
        return part.read(i)


class StreamingData:
    """A dataset to train from without holding it: :func:`~feds2r.engine.train.train` takes this
    in place of a :class:`~feds2r.engine.data.ResizedCache` and streams it (``config.workers``
    processes, images resized to ``config.height``). ``dataset`` may be several datasets, all
    labelled or all unlabelled, read one after the other (e.g. the server's real and generated
    images).

    ``skip_bad``: a sample that cannot be read (image, label, sizes) is left out of its batch
    with a warning naming the file, and training goes on; a batch whose every sample is bad takes
    the next readable sample of the listing instead. Otherwise the first bad sample stops the run
    with a :class:`DataError` naming the file.
    """

    def __init__(
        self,
        dataset: SegmentationDataset | Sequence[SegmentationDataset],
        *,
        skip_bad: bool = False,
    ) -> None:
        if isinstance(dataset, SegmentationDataset):
            self.files: SampleFiles | ChainedFiles = SampleFiles(dataset)
        else:
            self.files = ChainedFiles([SampleFiles(d) for d in dataset])
        self.skip_bad = skip_bad
        self.maps: Sequence[Tensor] | None = None
        """Optional per-sample maps (C, H/4, W/4) that follow each view's geometry (cached
        teacher targets: a list in memory or a :class:`~feds2r.server.targets.DiskTargets`); a
        worker reads ``maps[i]`` for its own samples only. Set by :meth:`with_maps`."""

    def __len__(self) -> int:
        return len(self.files)

    def with_maps(self, maps: Sequence[Tensor]) -> StreamingData:
        """The same samples whose batches also carry ``maps`` (``batch["maps"]``), one per
        sample, through each view's scale, crop and flip, as
        :meth:`~feds2r.engine.data.ResizedCache.with_maps` does; ``maps`` is kept as it is given
        (not copied), this object is left as it is."""
        if len(maps) != len(self):
            raise ValueError(f"{len(maps)} maps for {len(self)} samples")
        other = copy.copy(self)
        other.maps = maps
        return other

    def describe(self) -> str:
        """The dataset specs the samples come from, for messages."""
        return " and ".join(str(s) for s in self.files.specs)


class _LazyImages(Sequence):
    """The images of :class:`StreamedImages`, each read from disk and resized on access."""

    def __init__(self, owner: StreamedImages) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return self.owner.read_image(index)


class StreamedImages(StreamingData):
    """Unlabelled images (the server's: real, then generated) streamed at ``height``, held as
    file names only: the server stages' :class:`StreamingData` when their recipe's loader is
    "stream".

    Beside training, it serves what a stage reads outside the training loop, without holding the
    images: :meth:`read_chunks` (batches of images for the teachers' pass over the set, read in
    DataLoader workers), ``images[i]`` (one image read on access, as
    :attr:`ResizedCache.images <feds2r.engine.data.ResizedCache.images>` holds it) and
    :meth:`image_shape` (from the file's header: one width per image, 4 bytes each, is what is
    kept). Images are resized with one thread wherever they are read.
    """

    def __init__(
        self,
        datasets: Sequence[SegmentationDataset],
        height: int,
        *,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(list(datasets), skip_bad=skip_bad)
        self.height = height
        self.images = _LazyImages(self)
        self._widths: np.ndarray | None = None

    def read_image(self, index: int) -> Tensor:
        """Image ``index`` (3, height, W') uint8, read from disk and resized; raises
        :class:`DataError` naming a bad file."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        with one_thread():
            return resize_images(self.files.read(index % len(self))["image"], self.height)

    def _width(self, index: int) -> int:
        path = self.files.path(index)
        try:
            with Image.open(path) as img:
                w, h = img.size  # the header only: nothing is decoded
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            if self.skip_bad:  # its reads fail again and are skipped; any width will do
                warnings.warn(f"skipping bad sample: unreadable image {path}: {exc}", stacklevel=3)
                return self.height
            raise DataError(
                f"unreadable image {path}: {exc}. Re-extract or re-download this file, or open "
                "the dataset with on_error='skip' (CLI: --skip-bad) to leave it out",
                kind="unreadable_image",
                path=path,
            ) from None
        return resized_width(h, w, self.height)

    def image_shape(self, index: int) -> tuple[int, ...]:
        """The shape (3, height, W') of image ``index`` once resized, from its file's header
        (all widths are read at the first call and kept)."""
        if self._widths is None:
            self._widths = np.array([self._width(i) for i in range(len(self))], dtype=np.int32)
        return (3, self.height, int(self._widths[index]))

    def read_chunks(
        self, chunks: Sequence[Sequence[int]], *, workers: int = 0
    ) -> Iterator[tuple[list[int], list[Tensor]]]:
        """The images of each chunk of indices, in order, read and resized in ``workers``
        DataLoader processes (0: here; -1: min(4, cores)) a few chunks ahead: per chunk the
        indices read and their images. A bad image raises :class:`DataError` naming its file,
        or with ``skip_bad`` is left out of its chunk with a warning."""
        workers = default_workers() if workers < 0 else workers
        loader = DataLoader(
            _ImageReader(self),
            batch_size=None,  # a chunk is a whole batch
            sampler=[tuple(c) for c in chunks],
            num_workers=workers,
            collate_fn=_as_is,
            worker_init_fn=_init_worker if workers else None,
            generator=torch.Generator().manual_seed(0),  # nothing random: leave the global one
        )
        warned: set[str] = set()
        it = iter(loader)
        try:
            for indices, images, problems in it:
                for kind, path, message in problems:
                    if not self.skip_bad:
                        raise DataError(
                            f"{message} (met while reading the server images in batches)",
                            kind=kind,
                            path=path,
                        )
                    if path not in warned:
                        warned.add(path)
                        warnings.warn(f"skipping bad sample: {message}", stacklevel=2)
                yield indices, images
        except RuntimeError as exc:  # a worker that died is reported as a RuntimeError
            if "DataLoader worker" not in str(exc):
                raise
            raise Feds2rError(
                f"a process reading the server images died ({str(exc).rstrip('. ')}); most often "
                f"the system ran out of host memory and killed it. Use fewer workers (now "
                f"{workers}: `workers` in the [train] table), then run the same command again"
            ) from None
        finally:
            _shutdown(it)


class _ImageReader(Dataset):
    """The worker side of :meth:`StreamedImages.read_chunks`: a chunk of indices in, the indices
    read, their resized images and the bad samples met out."""

    def __init__(self, data: StreamedImages) -> None:
        self.files, self.height = data.files, data.height

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, chunk: tuple[int, ...]):
        read, images, problems = [], [], []
        with one_thread():
            for index in chunk:
                try:
                    item = self.files.read(index)
                except DataError as exc:
                    problems.append((exc.kind, exc.path or self.files.path(index), str(exc)))
                    continue
                read.append(index)
                images.append(resize_images(item["image"], self.height))
        return read, images, problems


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
        self.maps = data.maps
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
        maps = None if self.maps is None else self.maps[index]  # this sample's row only
        return random_view(image, label, draws=draws, maps=maps, **self.aug)

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
            specs = self.data.files.specs
            raise DataError(
                f"every sample of {self.data.describe()} tried is unreadable; run "
                + " and ".join(f"`feds2r data check {s}`" for s in specs)
                + " for the list",
                kind="empty",
                path=str(specs[0].path),
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
        _shutdown(it)


def _shutdown(it: Iterator | None) -> None:
    """Stop the worker processes of a DataLoader iterator ``it`` (if any)."""
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
