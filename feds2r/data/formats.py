"""The on-disk formats feds2r reads, each with its native layout and label-id table.

Every format lists ``(name, image, label)`` triples for a split and says how to turn its native
label ids into the 19 train ids of :mod:`feds2r.data.labels`. Layouts and id tables were checked
against each dataset's own documentation or official tooling; the source is cited per format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feds2r.data.labels import CITYSCAPES_ID_TO_TRAIN, CITYSCAPES_NUM_IDS, lookup_table
from feds2r.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and, where the split has labels, its label file."""

    name: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class Defect:
    """A problem found while listing or reading a dataset (see :class:`DataError` kinds)."""

    kind: str
    path: str
    message: str


@dataclass(frozen=True)
class Listing:
    """What a format found under a root: paired samples and any unpaired files."""

    samples: list[Sample]
    defects: list[Defect] = field(default_factory=list)


@dataclass(frozen=True)
class Format:
    """A dataset's on-disk format.

    ``valid_ids`` marks the native label values the format defines (anything else in a label file
    is a defect); ``lut`` maps each native value to a train id or 255.
    """

    name: str
    kind: str  # "synthetic", "real" or "unlabelled"
    title: str
    layout: str
    splits: tuple[str, ...]
    default_split: str
    valid_ids: np.ndarray  # (n,) bool
    lut: np.ndarray  # (n,) uint8
    lister: Callable[[Path, str, dict[str, str], bool], Listing]
    # "8bit" (L or P PNG), "synthia16" (16-bit, class in channel 0) or "channel0" (8-bit, single
    # channel or RGB with the class in the first channel)
    label_encoding: str = "8bit"
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""

    def list(self, root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
        if split not in self.splits:
            raise DataError(
                f"format {self.name!r} has no split {split!r}; "
                f"valid splits: {', '.join(self.splits)}",
                kind="bad_spec",
            )
        for key, value in options.items():
            if key not in self.options:
                valid = ", ".join(("split", *self.options))  # the split is an option too
                raise DataError(
                    f"format {self.name!r} has no option {key!r} (valid options: {valid})",
                    kind="bad_spec",
                )
            if value not in self.options[key]:
                raise DataError(
                    f"format {self.name!r}: {key}={value!r} is not one of "
                    f"{', '.join(self.options[key])}",
                    kind="bad_spec",
                )
        if not root.is_dir():
            raise DataError(
                f"dataset root {root} does not exist or is not a folder; "
                f"expected a {self.title} tree:\n{self.layout}",
                kind="missing_folder",
                path=str(root),
            )
        return self.lister(root, split, options, with_labels)


# ----------------------------------------------------------------------------- helpers


def _require_dir(path: Path, fmt: str, what: str) -> Path:
    if not path.is_dir():
        raise DataError(
            f"{fmt}: missing folder {path} ({what}); see `feds2r data formats` for the layout",
            kind="missing_folder",
            path=str(path),
        )
    return path


def _files(folder: Path, suffixes: tuple[str, ...], recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes)


def _pair(
    images: dict[str, Path], labels: dict[str, Path] | None, names: dict[str, str] | None = None
) -> Listing:
    """Pair images and labels by key; anything without a partner becomes a defect."""
    names = names or {}
    if labels is None:
        return Listing([Sample(names.get(k, k), p, None) for k, p in images.items()])
    samples, defects = [], []
    for key, image in images.items():
        label = labels.get(key)
        if label is None:
            defects.append(Defect("unpaired_image", str(image), f"no label file for image {image}"))
        else:
            samples.append(Sample(names.get(key, key), image, label))
    for key, label in labels.items():
        if key not in images:
            defects.append(Defect("unpaired_label", str(label), f"no image for label file {label}"))
    return Listing(samples, defects)


def _strip(path: Path, base: Path, suffix: str) -> str | None:
    """Key of a file: its path under ``base`` without ``suffix``; None if it lacks the suffix."""
    rel = path.relative_to(base).as_posix()
    return rel[: -len(suffix)] if rel.endswith(suffix) else None


def _split_names(root: Path, split: str, fmt: str) -> set[str] | None:
    """Stems of a split of a flat synthetic dataset, or None for ``all``.

    These datasets ship no split folders. A split is read from ``ROOT/<split>.txt`` (one file name
    per line, the convention of domain-adaptation code bases) or, for GTA5, from the official
    ``split.mat`` (``trainIds``/``valIds``/``testIds``).
    """
    if split == "all":
        return None
    listing = root / f"{split}.txt"
    if listing.is_file():
        lines = listing.read_text().split()
        return {Path(line).stem for line in lines}
    mat = root / "split.mat"
    if mat.is_file():
        try:
            from scipy.io import loadmat
        except ImportError:
            raise DataError(
                f"{fmt}: reading {mat} needs scipy (pip install scipy), or write {listing}",
                kind="bad_spec",
            ) from None
        ids = loadmat(str(mat)).get(f"{split}Ids")
        if ids is not None:
            return {f"{int(i):05d}" for i in np.ravel(ids)}
    raise DataError(
        f"{fmt}: split {split!r} needs {listing} (one image file name per line); "
        "use split 'all' for every image",
        kind="missing_folder",
        path=str(listing),
    )


def _flat_lister(fmt: str, image_dir: str, label_dir: str) -> Callable:
    """Lister for synthetic datasets stored as two flat folders of same-named PNGs."""

    def lister(root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
        img_root = _require_dir(root / image_dir, fmt, "images")
        keep = _split_names(root, split, fmt)
        images = {p.stem: p for p in _files(img_root, (".png", ".jpg"), recursive=False)}
        if keep is not None:
            images = {k: p for k, p in images.items() if k in keep}
        labels = None
        if with_labels:
            lbl_root = _require_dir(root / label_dir, fmt, "labels")
            labels = {p.stem: p for p in _files(lbl_root, (".png",), recursive=False)}
            if keep is not None:
                labels = {k: p for k, p in labels.items() if k in keep}
        return _pair(images, labels)

    return lister


def _urbansyn_lister(root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
    """UrbanSyn: ``ROOT/rgb/rgb_<n>.png`` paired with ``ROOT/ss/ss_<n>.png`` by the number."""
    img_root = _require_dir(root / "rgb", "urbansyn", "images")
    keep = _split_names(root, split, "urbansyn")

    def by_number(folder: Path, prefix: str) -> dict[str, Path]:
        files = _files(folder, (".png",), recursive=False)
        return {p.stem[len(prefix) :]: p for p in files if p.stem.startswith(prefix)}

    images = by_number(img_root, "rgb_")
    if keep is not None:  # split files name the images (rgb_0001.png) or their stems
        images = {k: p for k, p in images.items() if p.stem in keep}
    labels = None
    if with_labels:
        labels = by_number(_require_dir(root / "ss", "urbansyn", "labels"), "ss_")
        if keep is not None:
            labels = {k: p for k, p in labels.items() if k in images}
    return _pair(images, labels, {k: p.stem for k, p in images.items()})


def _cityscapes_like_lister(fmt: str, label_suffix: str, image_suffixes: tuple[str, ...]):
    """Lister for ``leftImg8bit/<split>/<group>/<stem>_leftImg8bit.*`` + ``gtFine`` trees."""

    def lister(root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
        img_root = _require_dir(root / "leftImg8bit" / split, fmt, "images")
        images, names = {}, {}
        for path in _files(img_root, image_suffixes, recursive=True):
            key = _strip(path, img_root, "_leftImg8bit" + path.suffix)
            if key is not None:
                images[key] = path
                names[key] = Path(key).name
        labels = None
        if with_labels:
            lbl_root = _require_dir(root / "gtFine" / split, fmt, "labels")
            labels = {}
            for path in _files(lbl_root, (".png",), recursive=True):
                key = _strip(path, lbl_root, label_suffix)
                if key is not None:
                    labels[key] = path
        return _pair(images, labels, names)

    return lister


# ----------------------------------------------------------------------------- per format


def _bdd_lister(root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
    img_root = _require_dir(root / "images" / "10k" / split, "bdd", "images")
    images = {p.stem: p for p in _files(img_root, (".jpg", ".png"), recursive=False)}
    labels = None
    if with_labels:
        lbl_root = _require_dir(root / "labels" / "sem_seg" / "masks" / split, "bdd", "labels")
        labels = {p.stem: p for p in _files(lbl_root, (".png",), recursive=False)}
    return _pair(images, labels)


_MAPILLARY_SPLITS = {"train": "training", "val": "validation", "test": "testing"}


def _mapillary_lister(
    root: Path, split: str, options: dict[str, str], with_labels: bool
) -> Listing:
    base = root / _MAPILLARY_SPLITS[split]
    img_root = _require_dir(base / "images", "mapillary", "images")
    images = {p.stem: p for p in _files(img_root, (".jpg", ".png"), recursive=False)}
    labels = None
    if with_labels:
        # The v1.2+v2.0 release keeps v1.2 labels in <split>/v1.2/labels; the v1.x-only release
        # in <split>/labels.
        lbl_root = base / "v1.2" / "labels"
        if not lbl_root.is_dir():
            lbl_root = _require_dir(base / "labels", "mapillary", "v1.2 labels")
        labels = {p.stem: p for p in _files(lbl_root, (".png",), recursive=False)}
    return _pair(images, labels)


ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


def _acdc_lister(root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
    condition = options.get("condition", "all")
    conditions = ACDC_CONDITIONS if condition == "all" else (condition,)
    images, labels, names = {}, ({} if with_labels else None), {}
    for cond in conditions:
        img_root = _require_dir(root / "rgb_anon" / cond / split, "acdc", f"{cond} images")
        for path in _files(img_root, (".png",), recursive=True):
            key = _strip(path, img_root, "_rgb_anon.png")
            if key is not None:
                images[f"{cond}/{key}"] = path
                names[f"{cond}/{key}"] = Path(key).name
        if with_labels:
            lbl_root = _require_dir(root / "gt" / cond / split, "acdc", f"{cond} labels")
            for path in _files(lbl_root, (".png",), recursive=True):
                key = _strip(path, lbl_root, "_gt_labelTrainIds.png")
                if key is not None:
                    labels[f"{cond}/{key}"] = path
    return _pair(images, labels, names)


def _folder_lister(root: Path, split: str, options: dict[str, str], with_labels: bool) -> Listing:
    if with_labels:
        raise DataError(
            "format 'folder' holds images only; open it without labels (labels=False)",
            kind="bad_spec",
        )
    # key: the path under the root with its suffix, so that a.png and a.jpg are two samples
    files = _files(root, IMAGE_SUFFIXES, recursive=True)
    images = {path.relative_to(root).as_posix(): path for path in files}
    return _pair(images, None, _folder_names(images))


def _folder_names(images: dict[str, Path]) -> dict[str, str]:
    """Flat, distinct sample names for a folder tree (they become output file names).

    A file's name is its path without the suffix, ``/`` replaced by ``_`` (``sub/x.png`` ->
    ``sub_x``). Where several files would get one name (``sub/x.png`` and ``sub_x.png``, or
    ``x.png`` and ``x.jpg``), each of them gets a short hash of its path appended instead
    (``sub_x-1f0c3a9e``), so no sample is dropped and no output overwrites another.
    """
    import hashlib

    plain = {k: k.rsplit(".", 1)[0].replace("/", "_") for k in images}
    taken: dict[str, int] = {}
    for name in plain.values():
        taken[name] = taken.get(name, 0) + 1
    names = {}
    for key, name in plain.items():
        if taken[name] > 1:
            name = f"{name}-{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}"
        names[key] = name
    if len(set(names.values())) != len(names):  # a hashed name equal to a real file's name
        raise DataError(
            f"folder {next(iter(images.values())).parent}: sample names collide even after "
            "disambiguation; rename the image files so that their names differ",
            kind="bad_spec",
        )
    return names


def _ids(n: int, extra: tuple[int, ...] = ()) -> np.ndarray:
    size = 65536 if n > 256 else 256
    valid = np.zeros(size, dtype=bool)
    valid[:n] = True
    valid[list(extra)] = True
    return valid


def _train_ids() -> tuple[np.ndarray, np.ndarray]:
    """Valid values and identity table for labels already stored as train ids (+255)."""
    return _ids(19, (255,)), lookup_table({i: i for i in range(19)})


# SYNTHIA ids (SYNTHIA-RAND-CITYSCAPES README.txt): 0 void, 1 sky, 2 building, 3 road, 4 sidewalk,
# 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle,
# 13 parking-slot, 14 road-work, 15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus, 20 train,
# 21 wall, 22 lanemarking. The usual 16-class protocol maps 16 of these to train ids; terrain,
# truck and train (16, 18, 20) have no pixels in SYNTHIA-RAND-CITYSCAPES and are ignored, as are
# void, parking-slot, road-work and lanemarking.
SYNTHIA_ID_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8,
    1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}  # fmt: skip
SYNTHIA_NUM_IDS = 23

# Mapillary Vistas v1.2 (66 classes, ids 0-65 in label PNGs) -> Cityscapes train ids, the mapping
# used by domain-generalisation benchmarks (e.g. tue-mps/benchmark-vfm-ss, datasets/mappings.py):
# road <- road, marking--general, manhole; sidewalk <- curb, sidewalk; pole <- pole, utility-pole;
# traffic sign <- traffic-sign--front; rider <- bicyclist, motorcyclist, other-rider;
# train <- on-rails. Everything else (bike lane, crosswalk, sign backs, caravan, ...) is ignored.
MAPILLARY_ID_TO_TRAIN: dict[int, int] = {
    13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7,
    30: 8, 29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16,
    57: 17, 52: 18,
}  # fmt: skip
MAPILLARY_NUM_IDS = 66

_CS_VALID = _ids(CITYSCAPES_NUM_IDS)
_CS_LUT = lookup_table(CITYSCAPES_ID_TO_TRAIN)
_TRAIN_VALID, _TRAIN_LUT = _train_ids()

FORMATS: dict[str, Format] = {
    "gta5": Format(
        name="gta5",
        kind="synthetic",
        title="GTA5 (Playing for Data)",
        layout="ROOT/images/00001.png\nROOT/labels/00001.png      (Cityscapes label ids 0-33, "
        "8-bit palette PNG)\nsplits: all, or ROOT/<split>.txt / ROOT/split.mat",
        splits=("all", "train", "val", "test"),
        default_split="all",
        valid_ids=_CS_VALID,
        lut=_CS_LUT,
        lister=_flat_lister("gta5", "images", "labels"),
        source="Richter et al., ECCV 2016; labels use the Cityscapes label ids (cityscapesScripts)",
    ),
    "synthia": Format(
        name="synthia",
        kind="synthetic",
        title="SYNTHIA-RAND-CITYSCAPES",
        layout="ROOT/RGB/0000000.png\nROOT/GT/LABELS/0000000.png (16-bit 3-channel PNG, SYNTHIA "
        "class id 0-22 in the first channel)\nsplits: all, or ROOT/<split>.txt",
        splits=("all", "train", "val", "test"),
        default_split="all",
        valid_ids=_ids(SYNTHIA_NUM_IDS),
        lut=lookup_table(SYNTHIA_ID_TO_TRAIN, size=65536),
        lister=_flat_lister("synthia", "RGB", "GT/LABELS"),
        label_encoding="synthia16",
        source="Ros et al., CVPR 2016; SYNTHIA-RAND-CITYSCAPES README.txt class list",
    ),
    "synscapes": Format(
        name="synscapes",
        kind="synthetic",
        title="Synscapes",
        layout="ROOT/img/rgb/1.png\nROOT/img/class/1.png       (Cityscapes label ids 0-33, "
        "8-bit PNG)\nsplits: all, or ROOT/<split>.txt",
        splits=("all", "train", "val", "test"),
        default_split="all",
        valid_ids=_CS_VALID,
        lut=_CS_LUT,
        lister=_flat_lister("synscapes", "img/rgb", "img/class"),
        source="Wrenninge & Unger, arXiv 1810.08705; class images use Cityscapes label ids",
    ),
    "urbansyn": Format(
        name="urbansyn",
        kind="synthetic",
        title="UrbanSyn",
        layout="ROOT/rgb/rgb_0001.png\nROOT/ss/ss_0001.png         (Cityscapes train ids 0-18, "
        "19 unlabelled; the id in the first channel)\nsplits: all, or ROOT/<split>.txt",
        splits=("all", "train", "val", "test"),
        default_split="all",
        valid_ids=_ids(20, (255,)),
        lut=lookup_table({i: i for i in range(19)}),
        lister=_urbansyn_lister,
        label_encoding="channel0",
        source="Gomez et al., arXiv 2312.12176 (urbansyn.org); the public release's rgb/ and ss/ "
        "folders",
    ),
    "cityscapes": Format(
        name="cityscapes",
        kind="real",
        title="Cityscapes",
        layout="ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (label ids 0-33)",
        # "dev": feds2r's labelled model-selection split of the server's domain (docs/data.md)
        splits=("train", "val", "test", "dev"),
        default_split="train",
        valid_ids=_CS_VALID,
        lut=_CS_LUT,
        lister=_cityscapes_like_lister("cityscapes", "_gtFine_labelIds.png", (".png",)),
        source="Cordts et al., CVPR 2016; cityscapesScripts helpers/labels.py",
    ),
    "bdd": Format(
        name="bdd",
        kind="real",
        title="BDD100K semantic segmentation (10K images)",
        layout="ROOT/images/10k/<split>/<name>.jpg\n"
        "ROOT/labels/sem_seg/masks/<split>/<name>.png (train ids 0-18, 255 ignore)",
        splits=("train", "val", "test"),
        default_split="train",
        valid_ids=_TRAIN_VALID,
        lut=_TRAIN_LUT,
        lister=_bdd_lister,
        source="Yu et al., CVPR 2020; BDD100K documentation, semantic segmentation format",
    ),
    "mapillary": Format(
        name="mapillary",
        kind="real",
        title="Mapillary Vistas v1.2",
        layout="ROOT/{training,validation,testing}/images/<key>.jpg\n"
        "ROOT/{training,validation}/v1.2/labels/<key>.png (or <split>/labels/; ids 0-65)",
        splits=("train", "val", "test"),
        default_split="train",
        valid_ids=_ids(MAPILLARY_NUM_IDS),
        lut=lookup_table(MAPILLARY_ID_TO_TRAIN),
        lister=_mapillary_lister,
        source="Neuhold et al., ICCV 2017; 66->19 mapping as in DG benchmarks",
    ),
    "idd": Format(
        name="idd",
        kind="real",
        title="IDD (India Driving Dataset), segmentation",
        layout="ROOT/leftImg8bit/<split>/<seq>/<frame>_leftImg8bit.png\n"
        "ROOT/gtFine/<split>/<seq>/<frame>_gtFine_labelcsTrainIds.png (Cityscapes train ids, "
        "written by IDD's createLabels.py --id-type csTrainId)",
        splits=("train", "val", "test"),
        default_split="train",
        valid_ids=_TRAIN_VALID,
        lut=_TRAIN_LUT,
        lister=_cityscapes_like_lister("idd", "_gtFine_labelcsTrainIds.png", (".png", ".jpg")),
        source="Varma et al., WACV 2019; IDD/AutoNUE helpers/anue_labels.py (csTrainId) and "
        "preperation/createLabels.py",
    ),
    "acdc": Format(
        name="acdc",
        kind="real",
        title="ACDC (Adverse Conditions Dataset with Correspondences)",
        layout="ROOT/rgb_anon/<condition>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png\n"
        "ROOT/gt/<condition>/<split>/<seq>/<seq>_frame_<n>_gt_labelTrainIds.png\n"
        "condition: fog, night, rain, snow or all (spec option ?condition=fog)",
        splits=("train", "val", "test"),
        default_split="train",
        valid_ids=_TRAIN_VALID,
        lut=_TRAIN_LUT,
        lister=_acdc_lister,
        options={"condition": (*ACDC_CONDITIONS, "all")},
        source="Sakaridis et al., ICCV 2021; ACDC download layout, as read by public DG code "
        "(e.g. w1oves/Rein configs/_base_/datasets/*-acdc_*.py)",
    ),
    "folder": Format(
        name="folder",
        kind="unlabelled",
        title="a folder of images, no labels",
        layout="ROOT/**/*.{png,jpg,jpeg}   (any depth; names are the relative paths)",
        splits=("all",),
        default_split="all",
        valid_ids=_ids(0),
        lut=lookup_table({}),
        lister=_folder_lister,
    ),
}

ALIASES = {"gtav": "gta5", "gta": "gta5", "bdd100k": "bdd", "vistas": "mapillary"}


def get_format(name: str) -> Format:
    """The format called ``name`` (case-insensitive, with aliases); lists valid names if unknown."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        raise DataError(
            f"unknown dataset format {name!r}; valid formats: {', '.join(FORMATS)}",
            kind="bad_spec",
        )
    return FORMATS[key]
