"""``open_dataset``: one entry point from a spec string to a map-style dataset.

A spec is ``FORMAT:PATH``, optionally followed by ``?key=value&...`` options, e.g.
``cityscapes:/data/cs?split=val`` or ``acdc:/data/acdc?split=val&condition=fog``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from feds2r.data.formats import Defect, Format, Sample, get_format
from feds2r.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``FORMAT:PATH[?split=..&option=..]`` string."""

    format: str
    path: Path
    split: str | None
    options: dict[str, str]

    def __str__(self) -> str:
        query = dict(self.options)
        if self.split is not None:
            query = {"split": self.split, **query}
        tail = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"{self.format}:{self.path}{tail}"


def parse_spec(spec: str) -> DatasetSpec:
    """Parse a dataset spec; raises :class:`DataError` naming the expected form."""
    fmt, sep, rest = spec.partition(":")
    if not sep or not fmt or not rest:
        raise DataError(
            f"bad dataset spec {spec!r}: expected FORMAT:PATH, e.g. cityscapes:/data/cityscapes "
            "(see `feds2r data formats`)",
            kind="bad_spec",
        )
    path, options = rest, {}
    if "?" in rest:
        head, _, query = rest.rpartition("?")
        pairs = [p for p in query.split("&") if p]
        if pairs and all("=" in p for p in pairs):
            path = head
            for pair in pairs:
                key, _, value = pair.partition("=")
                options[key.strip()] = value.strip()
    split = options.pop("split", None)
    return DatasetSpec(get_format(fmt).name, Path(path).expanduser(), split, options)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to a ``(H, W, 3)`` uint8 RGB array; raises DataError if unreadable."""
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file fails here, not later
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"unreadable image {path}: {exc}. Re-extract or re-download this file, or open the "
            "dataset with on_error='skip' (CLI: --skip-bad) to leave it out",
            kind="unreadable_image",
            path=str(path),
        ) from None


def read_label(path: Path, encoding: str) -> np.ndarray:
    """Decode a label file to a ``(H, W)`` array of native ids (uint8 or uint16)."""
    fix = (
        "Re-extract or re-download this file, or open the dataset with on_error='skip' "
        "(CLI: --skip-bad) to leave it out"
    )
    if encoding == "synthia16":
        # 16-bit, 3-channel PNG that Pillow cannot decode without losing bits; OpenCV returns the
        # channels in BGR order, so the first PNG channel (the class) is the last one here.
        data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if arr is None:
            raise DataError(
                f"unreadable label {path}. {fix}", kind="unreadable_label", path=str(path)
            )
        return arr[:, :, -1] if arr.ndim == 3 else arr
    try:
        with Image.open(path) as img:
            img.load()
            if encoding == "channel0" and img.mode in ("RGB", "RGBA"):
                return np.asarray(img)[:, :, 0]
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"label {path} is a {img.mode} image, expected single-channel ids "
                    "(is it a colour visualisation such as *_color.png?)",
                    kind="unreadable_label",
                    path=str(path),
                )
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"unreadable label {path}: {exc}. {fix}", kind="unreadable_label", path=str(path)
        ) from None


def _native_to_train(native: np.ndarray, fmt: Format, path: Path) -> np.ndarray:
    idx = native.astype(np.int64)
    outside = (idx < 0) | (idx >= fmt.valid_ids.size)
    bad = outside | ~fmt.valid_ids[np.clip(idx, 0, fmt.valid_ids.size - 1)]
    if bad.any():
        values = np.unique(native[bad])[:10].tolist()
        raise DataError(
            f"label {path} holds values {values} outside the {fmt.title} id table; is this the "
            f"right format (see `feds2r data formats`) and the right label file?",
            kind="bad_label_value",
            path=str(path),
        )
    return fmt.lut[np.clip(idx, 0, fmt.lut.size - 1)]


class SegmentationDataset(Dataset):
    """Map-style dataset over one split of one on-disk format.

    Items are dicts with ``image`` (uint8 tensor ``(3, H, W)``, RGB), ``name`` (str) and, when
    opened with labels, ``label`` (int64 tensor ``(H, W)`` of train ids, 255 = ignore).

    ``on_error="raise"`` stops at the first bad sample with a :class:`DataError` naming it.
    Opened with ``on_error="skip"`` by :func:`open_dataset`, every sample was read once and the
    unreadable ones were left out (``len`` counts only readable samples, each served once); a
    sample that still fails later raises.
    """

    def __init__(
        self,
        *,
        spec: DatasetSpec,
        samples: list[Sample],
        with_labels: bool,
        on_error: str,
        defects: list[Defect],
    ) -> None:
        self.spec = spec
        self.format = get_format(spec.format)
        self.samples = samples
        self.with_labels = with_labels
        self.on_error = on_error
        self.defects = defects

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        labels = "labelled" if self.with_labels else "images only"
        return f"SegmentationDataset({self.spec}, {len(self)} samples, {labels})"

    def fingerprint(self) -> str:
        """A short hash of what this dataset holds: spec, names and file sizes (no pixels read)."""
        import hashlib

        h = hashlib.sha256(f"{self.spec.format}|{self.spec.split}|{self.spec.options}".encode())
        for sample in self.samples:
            h.update(sample.name.encode())
            h.update(str(sample.image.stat().st_size).encode())
            if self.with_labels and sample.label is not None:
                h.update(str(sample.label.stat().st_size).encode())
        return h.hexdigest()[:16]

    def read(self, index: int) -> dict:
        """Read sample ``index`` as numpy arrays; raises :class:`DataError` if it is bad."""
        sample = self.samples[index]
        image = read_image(sample.image)
        item = {"image": image, "name": sample.name}
        if self.with_labels:
            native = read_label(sample.label, self.format.label_encoding)
            if native.shape != image.shape[:2]:
                raise DataError(
                    f"size mismatch: image {sample.image} is {image.shape[1]}x{image.shape[0]} "
                    f"but label {sample.label} is {native.shape[1]}x{native.shape[0]} (WxH)",
                    kind="size_mismatch",
                    path=str(sample.label),
                )
            item["label"] = _native_to_train(native, self.format, sample.label)
        return item

    def drop_unreadable(self) -> list[Defect]:
        """Read every sample once and leave out the bad ones (with a warning each).

        Returns the defects found (also appended to ``defects``); raises :class:`DataError` if
        no sample is readable. This is what ``on_error="skip"`` does on opening, so that a bad
        sample is left out rather than replaced by another (which would count that one twice).
        """
        kept, found = [], []
        for i, sample in enumerate(self.samples):
            try:
                self.read(i)
            except DataError as exc:
                warnings.warn(f"skipping bad sample: {exc}", stacklevel=3)
                found.append(Defect(exc.kind, exc.path or str(sample.image), str(exc)))
                continue
            kept.append(sample)
        self.samples = kept
        self.defects.extend(found)
        if not kept:
            raise DataError(
                f"every sample of {self.spec} is unreadable ({len(found)} bad); run "
                f"`feds2r data check {self.spec}` for the list",
                kind="empty",
                path=str(self.spec.path),
            )
        return found

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of a dataset of {len(self)}")
        item = self.read(index)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(item["image"].transpose(2, 0, 1))),
            "name": item["name"],
        }
        if "label" in item:
            out["label"] = torch.from_numpy(item["label"].astype(np.int64))
        return out


def open_dataset(
    spec: str | DatasetSpec,
    split: str | None = None,
    *,
    labels: bool = True,
    on_error: str = "raise",
    **options: str,
) -> SegmentationDataset:
    """Open ``FORMAT:PATH`` as a map-style dataset (see :class:`SegmentationDataset`).

    ``split`` (or ``?split=`` in the spec) defaults to the format's default split; format options
    such as ACDC's ``condition`` come as keywords or spec options. ``labels=False`` reads images
    only (the server's unlabelled data) and does not need the label folders. ``on_error`` is
    ``"raise"`` or ``"skip"``; with ``"skip"``, unpaired files are left out with a warning too.
    With ``"skip"`` every sample is also read once on opening (its image decoded, its label
    checked) and the bad ones are left out, so ``len`` is the number of samples really served.
    """
    ds = list_dataset(spec, split, labels=labels, on_error=on_error, **options)
    if on_error == "skip":
        ds.drop_unreadable()
    return ds


def list_dataset(
    spec: str | DatasetSpec,
    split: str | None = None,
    *,
    labels: bool = True,
    on_error: str = "raise",
    **options: str,
) -> SegmentationDataset:
    """Like :func:`open_dataset` but reads no file: pairs and lists the samples only.

    With ``on_error="skip"`` unpaired files are left out (as ``defects``) but unreadable files are
    not looked for; ``feds2r data check`` reads them itself.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    fmt = get_format(parsed.format)
    merged = {**parsed.options, **{k: v for k, v in options.items() if v is not None}}
    chosen = split or parsed.split or fmt.default_split
    parsed = DatasetSpec(fmt.name, parsed.path, chosen, merged)
    if labels and fmt.kind == "unlabelled":
        labels = False
    listing = fmt.list(parsed.path, chosen, merged, labels)
    if listing.defects:
        if on_error == "raise":
            first = listing.defects[0]
            more = f" (and {len(listing.defects) - 1} more)" if len(listing.defects) > 1 else ""
            raise DataError(
                f"{first.message}{more}. Run `feds2r data check {parsed}` for the full list, or "
                "open with on_error='skip' (CLI: --skip-bad) to leave unpaired files out",
                kind=first.kind,
                path=first.path,
            )
        for defect in listing.defects:
            warnings.warn(f"skipping: {defect.message}", stacklevel=2)
    if not listing.samples:
        raise DataError(
            f"no samples found for {parsed}; expected a {fmt.title} tree:\n{fmt.layout}",
            kind="empty",
            path=str(parsed.path),
        )
    return SegmentationDataset(
        spec=parsed,
        samples=listing.samples,
        with_labels=labels,
        on_error=on_error,
        defects=list(listing.defects),
    )
