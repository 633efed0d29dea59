"""Class-heterogeneous partitions of a labelled dataset: FedSeg's clients (Miao et al., CVPR 2023,
sec. 4.1; ``fedseg-paper.txt``).

FedSeg splits Cityscapes into K = 19 subsets: "each subset maintains one or two semantic classes
and sets other classes as background" (non-IID₁: one class per client, non-IID₂: two), and, for
its Table 2, splits the images at random (IID, every class annotated). :func:`make_partition`
writes that as a :class:`Partition`: a seeded, reproducible description of which images each
client holds (by sample name) and which classes it annotates. Nothing is copied: a client opens
its part of the original dataset with :func:`open_part`, which erases the other classes as it
reads (:func:`erase_labels`).

**Background in feds2r's label space.** Label maps hold the 19 Cityscapes train ids and 255
(void, ignored). FedSeg adds no output class: the model keeps its K = 19 logits, and a pixel of
a class the client does not annotate is *background*, whose target under BackCE (eq. 5) is the
summed probability of every class outside the client's set ``C_i``. An erased label map
therefore marks such a pixel with its own value, :data:`BACKGROUND_INDEX` (254), distinct from
void:

- plain CE (the paper's eq. 3, "the background pixels without annotation are ignored") ignores
  background and void alike (:func:`ignore_background`, then ``ignore_index=255``);
- BackCE (:func:`feds2r.losses.fedseg.back_cross_entropy`) gives a background pixel the merged
  probability of ``C \\ C_i`` and ignores void;
- FedSeg's pseudo-labels (sec. 3.3) give a background pixel the global model's confident class.

The public recipe (``lightas/FedSeg``) writes erased classes as 255, the value it also uses for
void, so its BackCE merges void into background too; here void stays void (feds2r's 255 is the
ego vehicle, unlabeled and out-of-roi pixels, not an un-annotated class). ``docs/fedseg.md``
lists this and the other differences.

**How images are assigned** (non-IID). The public recipe ships its Cityscapes split ready-made
(one folder per class of about N/19 images each; its ``datasplit.py`` only divides each folder
among clients); the procedure that built the folders is not published. Here: classes are visited
from the rarest (fewest images holding it) to the most common, and each takes up to ``N // 19``
of the images that hold it and no earlier class took, drawn at random; the images left over go
one by one to the smallest group among the classes they hold. Every image is in exactly one
group, every image of a group holds the group's class, and the rare classes get images that
show them. Non-IID₂: each client also annotates a second class, drawn as a permutation without
fixed point (so every class is annotated by exactly two clients); its images are those of its
first class. With ``num_clients`` a multiple of 19, each class's group is divided evenly among
``num_clients / 19`` clients (the recipe's 152 clients are 8 per class).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from feds2r.data.dataset import SegmentationDataset, open_dataset
from feds2r.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from feds2r.errors import DataError, Feds2rError
from feds2r.io import write_atomic

BACKGROUND_INDEX = 254
"""Label value of a pixel whose class the client does not annotate (FedSeg's background);
never a train id (0-18) and never void (255)."""

PARTITIONS = ("noniid1", "noniid2", "iid")
"""The partition kinds: one class per client, two classes per client, a random split."""

PART_PREFIX = "partition:"
"""A client's data named as its part of a partition: ``partition:/abs/partition.json#client-03``
(a node config's ``data``, or an entry of the Simulation Engine's ``client-data``)."""

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Part:
    """One client's share: its name, the train ids it annotates (``C_i``) and its images."""

    name: str
    classes: tuple[int, ...]
    """The train ids it annotates, sorted; every other class is background in its labels."""
    images: tuple[str, ...]
    """Sample names (``item["name"]``) of the source dataset, in the source's order."""

    def __post_init__(self) -> None:
        if not self.images:
            raise DataError(f"part {self.name!r} holds no image", kind="empty")
        bad = [c for c in self.classes if not 0 <= c < NUM_CLASSES]
        if bad or not self.classes or list(self.classes) != sorted(set(self.classes)):
            raise ValueError(f"part {self.name!r}: classes must be sorted distinct train ids")


@dataclass(frozen=True)
class Partition:
    """A seeded description of a class-heterogeneous split (:func:`make_partition`)."""

    kind: str
    """One of :data:`PARTITIONS`."""
    seed: int
    source: str
    """The dataset spec it was made from."""
    fingerprint: str
    """The source's :meth:`~feds2r.data.dataset.SegmentationDataset.fingerprint` (names and file
    sizes): :func:`open_part` refuses a dataset that is not the one the partition describes."""
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.kind not in PARTITIONS:
            raise Feds2rError(f"unknown partition {self.kind!r}; valid: {', '.join(PARTITIONS)}")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError("partition: part names must be distinct")
        images = [i for p in self.parts for i in p.images]
        if len(set(images)) != len(images):
            raise ValueError("partition: an image is in more than one part")

    def part(self, key: str | int) -> Part:
        """The part named ``key``, or the ``key``-th part (0-based; the Simulation Engine's
        ``partition-id``)."""
        if isinstance(key, int) or str(key).isdigit():
            k = int(key)
            if not 0 <= k < len(self.parts):
                raise Feds2rError(f"partition has parts 0..{len(self.parts) - 1}, not {k}")
            return self.parts[k]
        for p in self.parts:
            if p.name == key:
                return p
        names = ", ".join(p.name for p in self.parts)
        raise Feds2rError(f"partition has no part {key!r}; its parts: {names}")

    def summary(self) -> dict[str, dict[str, Any]]:
        """Each part's image count and class names (for results and reports)."""
        return {
            p.name: {"images": len(p.images), "classes": [CLASS_NAMES[c] for c in p.classes]}
            for p in self.parts
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "seed": self.seed,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "background_index": BACKGROUND_INDEX,
            "parts": [
                {"name": p.name, "classes": list(p.classes), "images": list(p.images)}
                for p in self.parts
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Partition:
        if data.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"partition format {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                "make it again with this feds2r",
                kind="bad_spec",
            )
        return cls(
            kind=str(data["kind"]),
            seed=int(data["seed"]),
            source=str(data["source"]),
            fingerprint=str(data["fingerprint"]),
            parts=tuple(
                Part(str(p["name"]), tuple(int(c) for c in p["classes"]), tuple(p["images"]))
                for p in data["parts"]
            ),
        )

    def save(self, path: str | Path) -> Path:
        """Write it as JSON (atomically); returns the path."""
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict(), indent=1).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        """Read a partition written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"no partition file {path}", kind="bad_spec", path=str(path)) from None
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read partition {path}: {exc}", kind="bad_spec") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"partition {path} is malformed ({exc!r})", kind="bad_spec") from None


# ----------------------------------------------------------------------------- labels


def erase_labels(label: Tensor, classes: Iterable[int]) -> Tensor:
    """``label`` (any shape, train ids and 255) with every class outside ``classes`` set to
    :data:`BACKGROUND_INDEX`; void (255) and the kept classes unchanged. Same dtype."""
    keep = torch.zeros(256, dtype=torch.bool)
    keep[list(classes)] = True
    keep[IGNORE_INDEX] = True
    kept = keep.to(label.device)[label.long()]
    return torch.where(kept, label, torch.full_like(label, BACKGROUND_INDEX))


def ignore_background(labels: Tensor) -> Tensor:
    """``labels`` with background set to 255: what plain CE trains on (the paper's eq. 3 ignores
    the pixels without annotation). Unchanged where there is no background."""
    return labels.masked_fill(labels == BACKGROUND_INDEX, IGNORE_INDEX)


# ----------------------------------------------------------------------------- making one


def class_pixels(dataset: SegmentationDataset) -> np.ndarray:
    """(N, K) int64: each image's pixel count per train id (labels read once, no image)."""
    if not dataset.with_labels:
        raise DataError(f"{dataset.spec} has no labels to partition by class", kind="bad_spec")
    counts = np.zeros((len(dataset), NUM_CLASSES), dtype=np.int64)
    for i in range(len(dataset)):
        label = dataset.read(i)["label"]
        counts[i] = np.bincount(label[label < NUM_CLASSES].ravel(), minlength=NUM_CLASSES)
    return counts


def _class_groups(present: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """One group of image indices per class (the module docstring's procedure)."""
    n, k = present.shape
    quota = n // k
    taken = np.zeros(n, dtype=bool)
    groups: list[list[int]] = [[] for _ in range(k)]
    for c in sorted(range(k), key=lambda c: (int(present[:, c].sum()), c)):
        free = np.flatnonzero(present[:, c] & ~taken)
        chosen = rng.permutation(free)[:quota]
        groups[c] = [int(i) for i in chosen]
        taken[chosen] = True
    for i in rng.permutation(np.flatnonzero(~taken)):
        holders = [c for c in range(k) if present[i, c]] or list(range(k))
        smallest = min(holders, key=lambda c: (len(groups[c]), c))
        groups[smallest].append(int(i))
    return [sorted(g) for g in groups]


def _derangement(k: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of 0..k-1 with no fixed point."""
    while True:
        perm = rng.permutation(k)
        if not np.any(perm == np.arange(k)):
            return perm


def make_partition(
    dataset: SegmentationDataset | str,
    kind: str,
    *,
    num_clients: int = NUM_CLASSES,
    seed: int = 0,
    counts: np.ndarray | None = None,
) -> Partition:
    """FedSeg's partition ``kind`` (:data:`PARTITIONS`) of a labelled dataset into
    ``num_clients`` parts (non-IID: a multiple of 19). Deterministic in (dataset, kind,
    num_clients, seed). ``counts``: :func:`class_pixels` of the dataset, if already computed.

    Raises :class:`~feds2r.errors.DataError` when a non-IID partition cannot give every client an
    image showing its class (a class no image holds) or a part would be empty.
    """
    if kind not in PARTITIONS:
        raise Feds2rError(f"unknown partition {kind!r}; valid: {', '.join(PARTITIONS)}")
    if isinstance(dataset, str):
        dataset = open_dataset(dataset)
    if num_clients < 1:
        raise Feds2rError(f"num_clients must be at least 1, got {num_clients}")
    names = [s.name for s in dataset.samples]
    rng = np.random.default_rng(seed)
    if kind == "iid":
        if num_clients > len(names):
            raise DataError(
                f"{num_clients} clients need at least as many images; {dataset.spec} has "
                f"{len(names)}",
                kind="empty",
            )
        split = np.array_split(rng.permutation(len(names)), num_clients)
        everything = tuple(range(NUM_CLASSES))
        parts = [Part(f"client-{j:02d}", everything, _names(names, s)) for j, s in enumerate(split)]
    else:
        if num_clients % NUM_CLASSES:
            raise Feds2rError(
                f"a {kind} partition gives each class the same number of clients: num_clients "
                f"must be a multiple of {NUM_CLASSES}, not {num_clients}"
            )
        present = (class_pixels(dataset) if counts is None else counts) > 0
        missing = [CLASS_NAMES[c] for c in range(NUM_CLASSES) if not present[:, c].any()]
        if missing:
            raise DataError(
                f"{dataset.spec}: no image holds {', '.join(missing)}, so a {kind} partition "
                "would leave those clients nothing to learn; use a larger split (more images) "
                "or the iid partition",
                kind="empty",
            )
        groups = _class_groups(present, rng)
        second = _derangement(NUM_CLASSES, rng) if kind == "noniid2" else None
        per_class = num_clients // NUM_CLASSES
        parts = []
        for c, group in enumerate(groups):
            classes = (c,) if second is None else tuple(sorted((c, int(second[c]))))
            shares = np.array_split(rng.permutation(group), per_class)
            for share in shares:
                name = f"client-{len(parts):02d}"
                if len(share) == 0:
                    raise DataError(
                        f"{name} ({CLASS_NAMES[c]}) would hold no image: {len(group)} images "
                        f"for {per_class} clients of that class; use fewer clients",
                        kind="empty",
                    )
                parts.append(Part(name, classes, _names(names, share)))
    return Partition(kind, seed, str(dataset.spec), dataset.fingerprint(), tuple(parts))


def _names(names: Sequence[str], indices: Iterable[int]) -> tuple[str, ...]:
    return tuple(names[i] for i in sorted(int(i) for i in indices))


# ----------------------------------------------------------------------------- reading one


class PartDataset(Dataset):
    """One part of a partition over its source dataset: the part's images, labels erased to its
    classes (:func:`erase_labels`). Items as :class:`~feds2r.data.dataset.SegmentationDataset`'s
    (``image``, ``name``, ``label``)."""

    def __init__(self, dataset: SegmentationDataset, part: Part) -> None:
        index = {s.name: i for i, s in enumerate(dataset.samples)}
        missing = [n for n in part.images if n not in index]
        if missing:
            raise DataError(
                f"{dataset.spec} lacks {len(missing)} image(s) of part {part.name!r} (first: "
                f"{missing[0]}); open the dataset the partition was made from",
                kind="bad_spec",
            )
        self.dataset = dataset
        self.part = part
        self.indices = [index[n] for n in part.images]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[self.indices[i]]
        item["label"] = erase_labels(item["label"], self.part.classes)
        return item


def part_spec(partition_file: str | Path, part: str) -> str:
    """The data spec of one part: ``partition:/abs/file.json#PART``."""
    return f"{PART_PREFIX}{Path(partition_file).resolve()}#{part}"


def is_part_spec(spec: str) -> bool:
    """Whether a client's data spec names a part of a partition (:func:`part_spec`)."""
    return spec.startswith(PART_PREFIX)


def open_part(spec: str, data: str | None = None) -> PartDataset:
    """The dataset of ``partition:/file.json#PART`` (``PART``: a part's name or 0-based index).

    The images come from the partition's source dataset, or from ``data`` (the same dataset
    elsewhere, e.g. on another machine); either way it must have the fingerprint recorded in the
    partition, else a :class:`~feds2r.errors.DataError` says so.
    """
    if not is_part_spec(spec):
        raise DataError(f"{spec!r} is not {PART_PREFIX}FILE#PART", kind="bad_spec")
    path, sep, key = spec[len(PART_PREFIX) :].rpartition("#")
    if not sep or not path or not key:
        raise DataError(
            f"{spec!r} names no part: write {PART_PREFIX}/path/partition.json#client-03",
            kind="bad_spec",
        )
    partition = Partition.load(path)
    part = partition.part(key)
    dataset = open_dataset(data or partition.source)
    if dataset.fingerprint() != partition.fingerprint:
        raise DataError(
            f"{dataset.spec} is not the dataset partition {path} was made from (its names or "
            "file sizes differ); make the partition again from this dataset",
            kind="bad_spec",
        )
    return PartDataset(dataset, part)


__all__ = [
    "BACKGROUND_INDEX",
    "PARTITIONS",
    "PART_PREFIX",
    "Part",
    "PartDataset",
    "Partition",
    "class_pixels",
    "erase_labels",
    "ignore_background",
    "is_part_spec",
    "make_partition",
    "open_part",
    "part_spec",
]
