"""The teachers' targets on the server images, computed once, held in memory or on disk.

Every server training stage learns from targets made once per server image by frozen teachers
(the clients' combined probabilities, a feature target, the large student's probabilities) at a
quarter of the image's resolution, one (C, H/4, W/4) float16 map per image, that follow each
training view (:meth:`~feds2r.engine.data.ResizedCache.with_maps`,
:meth:`~feds2r.engine.loader.StreamingData.with_maps`). :func:`compute_targets` runs the teachers
batch by batch over images held in memory or read in batches from disk
(:class:`~feds2r.engine.loader.StreamedImages`) and puts each image's map either

- in memory (:class:`MemoryTargets`: a list of tensors; small sets), or
- on disk (:class:`DiskTargets`: one memory-mapped float16 file, written once through a
  temporary name and a rename, beside a JSON index of each image's offset and shape); a batch
  reads only its own images' rows, so host memory does not grow with the server set.

Both hold the same float16 values, so a run trains the same weights either way. ``"auto"``
chooses disk when the maps would take more than :data:`AUTO_DISK_BYTES`. A disk file is reused
only by a run with the same ``key`` (what the targets are made from).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from feds2r.engine.loader import StreamedImages
from feds2r.errors import DataError, Feds2rError
from feds2r.io import write_json

TARGETS = ("auto", "memory", "disk")
"""Where the targets live (``DistillConfig.targets``)."""
AUTO_DISK_BYTES = 1 << 30
"""With ``"auto"``: targets larger than this (1 GiB) go to disk."""
STRIDE = 4
"""Targets are made at 1/STRIDE of each server image's resolution."""
MAPS_NAME = "maps.f16"
INDEX_NAME = "index.json"


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists), for comparing keys."""
    return json.loads(json.dumps(value, sort_keys=True))


class MemoryTargets:
    """Targets gathered in memory: ``put`` each image's map, ``finish`` returns the list."""

    def __init__(self, num: int) -> None:
        self.maps: list[Tensor | None] = [None] * num

    def put(self, index: int, value: Tensor) -> None:
        self.maps[index] = value

    def finish(self) -> list[Tensor]:
        return self.maps  # type: ignore[return-value]

    def abort(self) -> None:
        self.maps = []


class DiskTargets:
    """Per-image float16 maps read from a memory-mapped file: ``targets[i]`` is image ``i``'s
    (C, h, w) tensor, read alone (no other row is touched). Picklable: a copy in another process
    (a DataLoader worker) maps the file again on first use."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX_NAME).read_text())
        self.key = index["key"]
        self.nbytes = int(index["bytes"])
        self.rows = np.asarray(index["rows"], dtype=np.int64).reshape(-1, 4)
        """(N, 4): each image's offset (in float16 elements), channels, height and width."""
        self._mm: np.memmap | None = None

    @classmethod
    def find(cls, folder: str | Path, key: dict[str, Any], num: int) -> DiskTargets | None:
        """The targets in ``folder`` if they were made from ``key`` for ``num`` images and are
        whole; None otherwise."""
        folder = Path(folder)
        try:
            found = cls(folder)
            size = (folder / MAPS_NAME).stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _plain(found.key) != _plain(key) or len(found) != num or size != found.nbytes:
            return None
        return found

    def __len__(self) -> int:
        return len(self.rows)

    def _map(self) -> np.memmap:
        if self._mm is None:
            if self.nbytes == 0:
                self._mm = np.zeros(0, dtype=np.float16)  # type: ignore[assignment]
            else:
                self._mm = np.memmap(self.folder / MAPS_NAME, dtype=np.float16, mode="r")
        return self._mm  # type: ignore[return-value]

    def __getitem__(self, index: int) -> Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        offset, c, h, w = (int(v) for v in self.rows[index])
        row = np.array(self._map()[offset : offset + c * h * w])  # a copy of this row only
        return torch.from_numpy(row.reshape(c, h, w))

    def close(self) -> None:
        """Unmap the file (it is mapped again on the next read)."""
        self._mm = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mm": None}


@dataclass
class DiskTargetsWriter:
    """Writes per-image maps in any order to ``folder/maps.f16`` through a temporary file;
    :meth:`finish` renames it into place and writes the index (with ``key``) last."""

    folder: Path
    num: int
    key: dict[str, Any]
    rows: np.ndarray = field(init=False)
    _tmp: Path = field(init=False)
    _file: Any = field(init=False)
    _pos: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.rows = np.full((self.num, 4), -1, dtype=np.int64)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (self.folder / INDEX_NAME).unlink()  # the old index never names the new file
            self._tmp = self.folder / f".{MAPS_NAME}.{secrets.token_hex(4)}.tmp"
            self._file = open(self._tmp, "xb")  # noqa: SIM115 (closed by finish or abort)
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> Feds2rError:
        return Feds2rError(
            f"cannot write the teachers' targets to {self.folder}: {exc.strerror or exc}; free "
            "space there (or use another --out), or hold them in memory with --targets memory"
        )

    def put(self, index: int, value: Tensor) -> None:
        data = value.detach().to(torch.float16).contiguous().numpy()
        self.rows[index] = (self._pos // 2, *data.shape)
        try:
            self._file.write(data.tobytes())
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        self._pos += data.nbytes

    def finish(self) -> DiskTargets:
        missing = np.flatnonzero(self.rows[:, 0] < 0)
        if len(missing):
            self.abort()
            raise ValueError(f"no targets were written for images {missing[:5].tolist()}")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.folder / MAPS_NAME)
            write_json(
                self.folder / INDEX_NAME,
                {
                    "key": self.key,
                    "dtype": "float16",
                    "bytes": self._pos,
                    "rows": self.rows.tolist(),
                },
            )
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        return DiskTargets(self.folder)

    def abort(self) -> None:
        """Close and remove the temporary file (nothing half-written stays)."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


@dataclass(frozen=True)
class TargetsPlace:
    """Where :func:`compute_targets` keeps the maps: ``mode`` ("auto", "memory" or "disk"),
    the ``folder`` of a disk file and the ``key`` that names what the maps are made from."""

    mode: str = "memory"
    folder: Path | None = None
    key: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, not {self.mode!r}")
        if self.mode != "memory" and self.folder is None:
            raise ValueError(f"targets {self.mode!r} need a folder for the file")


def estimated_bytes(data, channels: int, stride: int = STRIDE) -> int:
    """Bytes of float16 maps of ``channels`` at 1/``stride`` for every image of ``data`` (a
    :class:`~feds2r.engine.data.ResizedCache` or :class:`~feds2r.engine.loader.StreamedImages`),
    from the images' shapes alone (``data.image_shape``)."""
    shapes = (data.image_shape(i) for i in range(len(data)))
    return 2 * channels * sum((s[-2] // stride) * (s[-1] // stride) for s in shapes)


def shape_groups(data, indices: list[int]) -> list[list[int]]:
    """``indices`` split into runs of images of one shape (``data.image_shape``, so that they
    stack into a batch)."""
    shapes: dict[tuple, list[int]] = {}
    for i in indices:
        shapes.setdefault(tuple(data.image_shape(i)), []).append(i)
    return list(shapes.values())


def _image_chunks(data, chunks: list[list[int]], workers: int):
    """Per chunk of indices, the indices read and their images: from memory, or read from disk
    in batches (:meth:`~feds2r.engine.loader.StreamedImages.read_chunks`)."""
    if isinstance(data, StreamedImages):
        yield from data.read_chunks(chunks, workers=workers)
        return
    for chunk in chunks:
        yield chunk, [data.images[i] for i in chunk]


@torch.no_grad()
def compute_targets(
    data,
    fn: Callable[[Tensor], Tensor],
    *,
    place: TargetsPlace | None = None,
    batch_size: int = 16,
    device="cpu",
    progress: bool = True,
    workers: int = 0,
) -> Sequence[Tensor]:
    """Each image's map: ``fn(images)`` on batches of images of one shape (images (B, 3, H, W)
    uint8 on ``device`` -> maps (B, C, H/4, W/4) float16 on the CPU), images taken in order of
    shape. Returns a list (in memory) or a :class:`DiskTargets`, as ``place`` says; a disk file
    of the same key is reused without running ``fn``.

    ``data``: a :class:`~feds2r.engine.data.ResizedCache` (images in memory) or a
    :class:`~feds2r.engine.loader.StreamedImages`, whose images are read ``batch_size`` at a
    time in ``workers`` DataLoader processes (the batches are the same either way, so are the
    maps); an image it skips as unreadable (``skip_bad``) gets an all-zero map (no valid pixel).
    """
    from tqdm import tqdm

    place = place or TargetsPlace()
    num = len(data)
    if place.mode != "memory":
        found = DiskTargets.find(place.folder, place.key, num)  # type: ignore[arg-type]
        if found is not None:
            return found
    order = sorted(range(num), key=lambda i: tuple(data.image_shape(i)))
    chunks = [order[start : start + batch_size] for start in range(0, num, batch_size)]
    sink: MemoryTargets | DiskTargetsWriter | None = None if num else MemoryTargets(0)
    skipped: list[int] = []  # unreadable images, given a zero map once the channels are known
    bar = tqdm(total=num, desc="teacher targets", unit="img", disable=not progress)
    reads = _image_chunks(data, chunks, workers)
    try:
        for chunk, (idx, read) in zip(chunks, reads, strict=True):
            held = dict(zip(idx, read, strict=True))
            skipped += [i for i in chunk if i not in held]
            for group in shape_groups(data, idx):
                images = torch.stack([held[i] for i in group]).to(device)
                maps = fn(images)
                if sink is None:  # the first batch tells how many channels each map has
                    to_disk = place.mode == "disk" or (
                        place.mode == "auto"
                        and estimated_bytes(data, maps.shape[1]) > AUTO_DISK_BYTES
                    )
                    if to_disk:
                        sink = DiskTargetsWriter(place.folder, num, place.key)  # type: ignore[arg-type]
                    else:
                        sink = MemoryTargets(num)
                for j, i in enumerate(group):
                    sink.put(i, maps[j])
            bar.update(len(chunk))
        if sink is None:
            raise DataError(
                f"not one of the {num} server images is readable; run `feds2r data check` on "
                "the server data for the list",
                kind="empty",
            )
        for i in skipped:  # all zero: the validity channel too, so no pixel of it is learnt
            sink.put(i, torch.zeros(maps.shape[1], 1, 1, dtype=torch.float16))
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        reads.close()  # stops the reading workers now, also when a batch failed
        bar.close()
    return sink.finish()  # type: ignore[union-attr]


def remove_targets(folder: str | Path) -> None:
    """Remove a targets folder written by :func:`compute_targets` (once its stage is done)."""
    folder = Path(folder)
    for name in (INDEX_NAME, MAPS_NAME):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    for tmp in folder.glob(f".{MAPS_NAME}.*.tmp") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def attach_targets(cache, maps: Sequence[Tensor]):
    """``cache``'s samples (a :class:`~feds2r.engine.data.ResizedCache` or a
    :class:`~feds2r.engine.loader.StreamingData`) whose batches carry ``maps``; a
    :class:`DiskTargets` is kept as it is (each batch, or each worker, reads only its own
    rows)."""
    return cache.with_maps(maps)


__all__ = [
    "AUTO_DISK_BYTES",
    "TARGETS",
    "DiskTargets",
    "MemoryTargets",
    "TargetsPlace",
    "attach_targets",
    "compute_targets",
    "estimated_bytes",
    "remove_targets",
]
