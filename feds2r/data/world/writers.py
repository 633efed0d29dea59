"""Write rendered scenes in each real dataset's on-disk layout and native label ids.

The scene labels (19 train ids plus ego vehicle, lane marking and other void) are turned into
each format's native ids through the inverse of the reader's table, so the same readers that load
the real datasets load the built-in world, and each id table is exercised.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from feds2r.data.formats import MAPILLARY_ID_TO_TRAIN, SYNTHIA_ID_TO_TRAIN
from feds2r.data.labels import CITYSCAPES_ID_TO_TRAIN, IGNORE_INDEX, PALETTE
from feds2r.data.world.styles import EGO, MARKING, NUM_SCENE_LABELS, VOID


def _table(inverse: dict[int, int], extra: dict[int, int], dtype=np.uint8) -> np.ndarray:
    """Scene label -> native id; ``inverse`` maps train id -> native id."""
    lut = np.zeros(NUM_SCENE_LABELS, dtype=dtype)
    for train, native in inverse.items():
        lut[train] = native
    for scene, native in extra.items():
        lut[scene] = native
    return lut


def _invert(mapping: dict[int, int]) -> dict[int, int]:
    inv: dict[int, int] = {}
    for native, train in mapping.items():
        inv.setdefault(train, native)  # first listed native id is the canonical one
    return inv


_CS = _table(_invert(CITYSCAPES_ID_TO_TRAIN), {EGO: 1, MARKING: 7, VOID: 6})
_TRAIN = _table({i: i for i in range(19)}, {EGO: IGNORE_INDEX, MARKING: 0, VOID: IGNORE_INDEX})
# SYNTHIA: no ego vehicle; lane markings keep their own id (22), which the 16-class protocol ignores
_SYNTHIA = _table(_invert(SYNTHIA_ID_TO_TRAIN), {EGO: 0, MARKING: 22, VOID: 0}, np.uint16)
_MAPILLARY = _table(_invert(MAPILLARY_ID_TO_TRAIN), {EGO: 64, MARKING: 24, VOID: 65})
# a "train" class only exists as on-rails (58); synthia lacks 14/16/9: those pixels never occur
# there because the domain does not render them.

_CITY_PALETTE = np.zeros((256, 3), np.uint8)
for _native, _train in CITYSCAPES_ID_TO_TRAIN.items():
    _CITY_PALETTE[_native] = PALETTE[_train]


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return buf.tobytes()


def _png_p(ids: np.ndarray, palette: np.ndarray) -> bytes:
    img = Image.fromarray(ids, mode="P")
    img.putpalette(palette.ravel().tolist())
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _jpg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _key(*parts: object, n: int = 16) -> str:
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=n).hexdigest()


_OFFSET = {"train": 0, "val": 50000, "dev": 60000, "test": 70000}
_CS_CITIES = {
    "train": (
        "aachen",
        "bochum",
        "bremen",
        "cologne",
        "darmstadt",
        "dusseldorf",
        "erfurt",
        "hamburg",
        "hanover",
        "jena",
        "krefeld",
        "monchengladbach",
        "strasbourg",
        "stuttgart",
        "tubingen",
        "ulm",
        "weimar",
        "zurich",
    ),
    "val": ("frankfurt", "lindau", "munster"),
    # feds2r's labelled dev split of the server's domain (model selection; never a test set):
    # cities of Cityscapes' train_extra set, which no other split uses
    "dev": ("augsburg", "bamberg", "konstanz"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}


@dataclass(frozen=True)
class Entry:
    """Where one sample goes, relative to the domain root, and its name."""

    image: str
    label: str
    list_name: str | None = None  # line for ROOT/<split>.txt (flat synthetic formats)


def entry(fmt: str, domain: str, split: str, index: int, condition: str | None) -> Entry:
    """Native path of sample ``index`` of ``split`` in format ``fmt``."""
    i = _OFFSET.get(split, 0) + index
    if fmt == "gta5":
        name = f"{i + 1:05d}.png"
        return Entry(f"images/{name}", f"labels/{name}", name)
    if fmt == "synthia":
        name = f"{i:07d}.png"
        return Entry(f"RGB/{name}", f"GT/LABELS/{name}", name)
    if fmt == "synscapes":
        name = f"{i + 1}.png"
        return Entry(f"img/rgb/{name}", f"img/class/{name}", name)
    if fmt == "cityscapes":
        cities = _CS_CITIES[split]
        city = cities[index % len(cities)]
        stem = f"{city}_{index // len(cities):06d}_000019"
        return Entry(
            f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
        )
    if fmt == "bdd":
        k = _key(domain, split, index)
        stem = f"{k[:8]}-{k[8:16]}"
        return Entry(f"images/10k/{split}/{stem}.jpg", f"labels/sem_seg/masks/{split}/{stem}.png")
    if fmt == "mapillary":
        digest = hashlib.blake2b(f"{domain}/{split}/{index}".encode(), digest_size=16).digest()
        stem = base64.urlsafe_b64encode(digest).decode()[:22]
        folder = {"train": "training", "val": "validation", "test": "testing"}[split]
        return Entry(f"{folder}/images/{stem}.jpg", f"{folder}/v1.2/labels/{stem}.png")
    if fmt == "idd":
        seq, frame = index // 40, (index % 40) * 3
        return Entry(
            f"leftImg8bit/{split}/{seq}/{frame:06d}_leftImg8bit.png",
            f"gtFine/{split}/{seq}/{frame:06d}_gtFine_labelcsTrainIds.png",
        )
    if fmt == "acdc":
        seq = f"GOPR{400 + index // 25:04d}"
        stem = f"{seq}_frame_{(index % 25) * 7:06d}"
        return Entry(
            f"rgb_anon/{condition}/{split}/{seq}/{stem}_rgb_anon.png",
            f"gt/{condition}/{split}/{seq}/{stem}_gt_labelTrainIds.png",
        )
    raise ValueError(f"the built-in world cannot write format {fmt!r}")


def encode(
    fmt: str, rgb: np.ndarray, scene_lbl: np.ndarray, jpeg_quality: int
) -> tuple[bytes, bytes]:
    """Encode an RGB image and a scene label map as the format's image and label files."""
    if fmt in ("bdd", "mapillary"):
        image = _jpg(rgb, jpeg_quality or 90)
    else:
        image = _png(rgb[..., ::-1])
    if fmt in ("gta5",):
        label = _png_p(_CS[scene_lbl], _CITY_PALETTE)
    elif fmt in ("cityscapes", "synscapes"):
        label = _png(_CS[scene_lbl])
    elif fmt == "synthia":
        ids = _SYNTHIA[scene_lbl]
        # 16-bit, class in the first PNG channel (R); OpenCV writes BGR, so R is the last channel
        label = _png(np.stack([np.zeros_like(ids), np.zeros_like(ids), ids], axis=-1))
    elif fmt == "mapillary":
        label = _png_p(_MAPILLARY[scene_lbl], np.tile(np.arange(256, dtype=np.uint8)[:, None], 3))
    else:  # bdd, idd, acdc: train ids
        label = _png(_TRAIN[scene_lbl])
    return image, label
