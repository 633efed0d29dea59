"""Readers on small trees in each dataset's exact native layout, id tables class by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feds2r.data import open_dataset, parse_spec
from feds2r.data.labels import IGNORE_INDEX, class_index
from feds2r.errors import DataError
from tests.conftest import write_ids, write_rgb, write_synthia_label

# Native id -> class name, written out from each dataset's documentation (independently of the
# tables in feds2r.data.formats). Ids not listed must become 255.
CITYSCAPES_IDS = {7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole",
                  19: "traffic light", 20: "traffic sign", 21: "vegetation", 22: "terrain",
                  23: "sky", 24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus",
                  31: "train", 32: "motorcycle", 33: "bicycle"}  # fmt: skip
SYNTHIA_IDS = {1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation",
               7: "pole", 8: "car", 9: "traffic sign", 10: "person", 11: "bicycle",
               12: "motorcycle", 15: "traffic light", 17: "rider", 19: "bus",
               21: "wall"}  # fmt: skip
MAPILLARY_IDS = {13: "road", 24: "road", 41: "road", 2: "sidewalk", 15: "sidewalk",
                 17: "building", 6: "wall", 3: "fence", 45: "pole", 47: "pole",
                 48: "traffic light", 50: "traffic sign", 30: "vegetation", 29: "terrain",
                 27: "sky", 19: "person", 20: "rider", 21: "rider", 22: "rider", 55: "car",
                 61: "truck", 54: "bus", 58: "train", 57: "motorcycle", 52: "bicycle"}  # fmt: skip
TRAIN_IDS = {i: name for i, name in enumerate(
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
     "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
     "motorcycle", "bicycle"))}  # fmt: skip


def expected(values: list[int], table: dict[int, str]) -> np.ndarray:
    return np.array([class_index(table[v]) if v in table else IGNORE_INDEX for v in values])


def strip(values: list[int], h: int = 4) -> np.ndarray:
    return np.tile(np.array(values), (h, 1))


CS_VALUES = list(range(34))
SYN_VALUES = list(range(23))
MAP_VALUES = list(range(66))
TRAIN_VALUES = list(range(19)) + [255]
URBANSYN_VALUES = list(range(20))  # 19: unlabelled


def build(fmt: str, root: Path) -> tuple[str, list[int], dict[int, str]]:
    """Write one labelled sample (plus the distractor files real trees hold); return spec."""
    if fmt == "gta5":
        write_rgb(root / "images/00001.png", 4, len(CS_VALUES))
        write_ids(root / "labels/00001.png", strip(CS_VALUES), mode="P")
        return f"gta5:{root}", CS_VALUES, CITYSCAPES_IDS
    if fmt == "synthia":
        write_rgb(root / "RGB/0000001.png", 4, len(SYN_VALUES))
        write_synthia_label(root / "GT/LABELS/0000001.png", strip(SYN_VALUES))
        write_rgb(root / "GT/COLOR/0000001.png", 4, len(SYN_VALUES))
        return f"synthia:{root}", SYN_VALUES, SYNTHIA_IDS
    if fmt == "synscapes":
        write_rgb(root / "img/rgb/1.png", 4, len(CS_VALUES))
        write_ids(root / "img/class/1.png", strip(CS_VALUES))
        (root / "meta").mkdir(parents=True)
        (root / "meta/1.json").write_text("{}")
        return f"synscapes:{root}", CS_VALUES, CITYSCAPES_IDS
    if fmt == "urbansyn":
        write_rgb(root / "rgb/rgb_0001.png", 4, len(URBANSYN_VALUES))
        # the release's ss PNGs carry the train id in the first channel of an RGB image
        ids = strip(URBANSYN_VALUES).astype(np.uint8)
        (root / "ss").mkdir(parents=True)
        Image.fromarray(np.stack([ids, ids // 2, ids * 3], axis=-1), mode="RGB").save(
            root / "ss/ss_0001.png"
        )
        write_rgb(root / "ss_colour/ss_colour_0001.png", 4, len(URBANSYN_VALUES))
        (root / "depth").mkdir()
        (root / "depth/depth_0001.exr").write_bytes(b"not read")
        return f"urbansyn:{root}", URBANSYN_VALUES, TRAIN_IDS
    if fmt == "cityscapes":
        stem = "frankfurt_000000_000294"
        write_rgb(root / f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png", 4, len(CS_VALUES))
        gt = root / "gtFine/val/frankfurt"
        write_ids(gt / f"{stem}_gtFine_labelIds.png", strip(CS_VALUES))
        write_ids(gt / f"{stem}_gtFine_instanceIds.png", strip([0] * len(CS_VALUES)))
        write_rgb(gt / f"{stem}_gtFine_color.png", 4, len(CS_VALUES))
        (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
        return f"cityscapes:{root}?split=val", CS_VALUES, CITYSCAPES_IDS
    if fmt == "bdd":
        write_rgb(root / "images/10k/val/7d2f7975-e0c1c5a7.jpg", 4, len(TRAIN_VALUES), "JPEG")
        write_ids(root / "labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png", strip(TRAIN_VALUES))
        return f"bdd:{root}?split=val", TRAIN_VALUES, TRAIN_IDS
    if fmt == "mapillary":
        key = "-0A7lQ6mXK7iD7rPg0ZxLw"
        write_rgb(root / f"validation/images/{key}.jpg", 4, len(MAP_VALUES), "JPEG")
        write_ids(root / f"validation/v1.2/labels/{key}.png", strip(MAP_VALUES), mode="P")
        write_ids(root / f"validation/v2.0/labels/{key}.png", strip([200] * len(MAP_VALUES)))
        return f"mapillary:{root}?split=val", MAP_VALUES, MAPILLARY_IDS
    if fmt == "idd":
        write_rgb(root / "leftImg8bit/val/119/073404_leftImg8bit.png", 4, len(TRAIN_VALUES))
        write_ids(root / "gtFine/val/119/073404_gtFine_labelcsTrainIds.png", strip(TRAIN_VALUES))
        (root / "gtFine/val/119/073404_gtFine_polygons.json").write_text("{}")
        return f"idd:{root}?split=val", TRAIN_VALUES, TRAIN_IDS
    if fmt == "acdc":
        stem = "GOPR0476_frame_000123"
        write_rgb(root / f"rgb_anon/fog/val/GOPR0476/{stem}_rgb_anon.png", 4, len(TRAIN_VALUES))
        gt = root / "gt/fog/val/GOPR0476"
        write_ids(gt / f"{stem}_gt_labelTrainIds.png", strip(TRAIN_VALUES))
        write_ids(gt / f"{stem}_gt_labelIds.png", strip([7] * len(TRAIN_VALUES)))
        write_rgb(gt / f"{stem}_gt_labelColor.png", 4, len(TRAIN_VALUES))
        return f"acdc:{root}?split=val&condition=fog", TRAIN_VALUES, TRAIN_IDS
    raise AssertionError(fmt)


FORMATS = [
    "gta5", "synthia", "synscapes", "urbansyn", "cityscapes", "bdd", "mapillary", "idd", "acdc"
]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_maps_every_native_id(fmt, tmp_path):
    spec, values, table = build(fmt, tmp_path / fmt)
    ds = open_dataset(spec)
    assert len(ds) == 1
    item = ds[0]
    assert item["image"].dtype.is_floating_point is False and item["image"].shape == (
        3,
        4,
        len(values),
    )
    assert str(item["image"].dtype) == "torch.uint8"
    assert str(item["label"].dtype) == "torch.int64"
    assert isinstance(item["name"], str) and item["name"]
    for col, native in enumerate(values):
        got = int(item["label"][0, col])
        want = int(expected([native], table)[0])
        assert got == want, f"{fmt}: native id {native} -> {got}, expected {want}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_works_without_labels(fmt, tmp_path):
    spec, values, _ = build(fmt, tmp_path / fmt)
    ds = open_dataset(spec, labels=False)
    item = ds[0]
    assert "label" not in item and item["image"].shape == (3, 4, len(values))


def test_images_only_need_no_label_folder(tmp_path):
    root = tmp_path / "cs"
    write_rgb(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    ds = open_dataset(f"cityscapes:{root}", labels=False)
    assert ds[0]["name"] == "aachen_000000_000019"
    with pytest.raises(DataError, match="missing folder .*gtFine"):
        open_dataset(f"cityscapes:{root}")


def test_names_follow_the_dataset(tmp_path):
    spec, _, _ = build("cityscapes", tmp_path / "cs")
    assert open_dataset(spec)[0]["name"] == "frankfurt_000000_000294"
    spec, _, _ = build("acdc", tmp_path / "acdc")
    assert open_dataset(spec)[0]["name"] == "GOPR0476_frame_000123"


def test_acdc_condition_selects_folders(tmp_path):
    root = tmp_path / "acdc"
    for cond in ("fog", "night", "rain", "snow"):
        stem = f"GOPR0{cond}_frame_000001"
        write_rgb(root / f"rgb_anon/{cond}/val/GOPR0{cond}/{stem}_rgb_anon.png")
        write_ids(root / f"gt/{cond}/val/GOPR0{cond}/{stem}_gt_labelTrainIds.png",
                  np.zeros((8, 20)))  # fmt: skip
    assert len(open_dataset(f"acdc:{root}", split="val")) == 4
    assert len(open_dataset(f"acdc:{root}", split="val", condition="night")) == 1
    assert len(open_dataset(f"acdc:{root}?split=val&condition=all")) == 4
    with pytest.raises(DataError, match="condition='dusk' is not one of fog, night"):
        open_dataset(f"acdc:{root}?split=val&condition=dusk")


def test_mapillary_legacy_label_folder(tmp_path):
    root = tmp_path / "vistas"
    write_rgb(root / "training/images/abc.jpg", fmt="JPEG")
    write_ids(root / "training/labels/abc.png", np.full((8, 20), 55))
    assert int(open_dataset(f"mapillary:{root}")[0]["label"][0, 0]) == class_index("car")


def test_flat_synthetic_split_lists(tmp_path):
    root = tmp_path / "gta"
    for i in (1, 2, 3):
        write_rgb(root / f"images/{i:05d}.png")
        write_ids(root / f"labels/{i:05d}.png", np.full((8, 20), 7), mode="P")
    (root / "train.txt").write_text("00001.png\n00002.png\n")
    assert len(open_dataset(f"gta5:{root}")) == 3
    assert [s.name for s in open_dataset(f"gta5:{root}?split=train").samples] == ["00001", "00002"]
    with pytest.raises(DataError, match="val.txt"):
        open_dataset(f"gta5:{root}?split=val")


def test_folder_format_reads_any_images(tmp_path):
    write_rgb(tmp_path / "gen/a/x.png")
    write_rgb(tmp_path / "gen/y.jpg", fmt="JPEG")
    ds = open_dataset(f"folder:{tmp_path / 'gen'}")
    assert sorted(ds[i]["name"] for i in range(2)) == ["a_x", "y"]


# ----------------------------------------------------------------------------- specs


def test_spec_parsing():
    spec = parse_spec("ACDC:/d/acdc?split=val&condition=fog")
    assert (spec.format, spec.path.as_posix(), spec.split) == ("acdc", "/d/acdc", "val")
    assert spec.options == {"condition": "fog"}
    assert parse_spec("gtav:/d/g").format == "gta5"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("/data/cityscapes", "expected FORMAT:PATH"),
        ("kitti:/data", "unknown dataset format 'kitti'; valid formats: gta5, synthia"),
        ("cityscapes:/nonexistent/cs", "does not exist"),
    ],
)
def test_bad_specs_are_explained(spec, match):
    with pytest.raises(DataError, match=match):
        open_dataset(spec)


def test_bad_split_and_option(tmp_path):
    spec, _, _ = build("cityscapes", tmp_path / "cs")
    with pytest.raises(DataError, match="no split 'extra'; valid splits: train, val, test, dev"):
        open_dataset(spec, split="extra")
    with pytest.raises(DataError, match="has no option 'condition'"):
        open_dataset(spec, condition="fog")


def test_folder_names_never_collide_and_no_image_is_dropped(tmp_path):
    root = tmp_path / "imgs"
    write_rgb(root / "sub" / "x.png")
    write_rgb(root / "sub_x.png")
    write_rgb(root / "sub_x.jpg", fmt="JPEG")
    write_rgb(root / "other.png")
    ds = open_dataset(f"folder:{root}")
    names = [ds[i]["name"] for i in range(len(ds))]
    assert len(ds) == 4 and len(set(names)) == 4
    assert "other" in names  # a name without a clash keeps its plain form
    by_file = {s.image.relative_to(root).as_posix(): s.name for s in ds.samples}
    assert set(by_file) == {"sub/x.png", "sub_x.png", "sub_x.jpg", "other.png"}
    assert all(by_file[k].startswith("sub_x-") for k in ("sub/x.png", "sub_x.png", "sub_x.jpg"))


def test_skip_bad_leaves_a_bad_sample_out_instead_of_serving_another_twice(tmp_path):
    from feds2r.data.world import synth_domain

    root = tmp_path / "cs"
    synth_domain("cityscapes-like", root, split="val", num=8, size=(32, 64), progress=False)
    ds = open_dataset(f"cityscapes:{root}?split=val")
    bad = ds.samples[3]
    bad.image.write_bytes(bad.image.read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning, match="skipping bad sample"):
        ds = open_dataset(f"cityscapes:{root}?split=val", on_error="skip")
    names = [ds[i]["name"] for i in range(len(ds))]
    assert len(ds) == 7 and len(set(names)) == 7 and bad.name not in names
    assert [d.kind for d in ds.defects] == ["unreadable_image"]
    with pytest.raises(IndexError):
        ds[7]


def test_urbansyn_pairs_by_number_and_reads_single_channel_labels(tmp_path):
    root = tmp_path / "urbansyn"
    for n in (1, 2, 10):
        write_rgb(root / f"rgb/rgb_{n:04d}.png", 4, 6)
        write_ids(root / f"ss/ss_{n:04d}.png", strip([0, 13, 19, 2, 2, 10]))
    write_rgb(root / "rgb/rgb_0011.png", 4, 6)  # no label
    (root / "train.txt").write_text("rgb_0001.png\nrgb_0010.png\n")
    with pytest.warns(UserWarning, match="rgb_0011"):
        everything = open_dataset(f"urbansyn:{root}", on_error="skip")
    assert [s.name for s in everything.samples] == ["rgb_0001", "rgb_0002", "rgb_0010"]
    train = open_dataset(f"urbansyn:{root}?split=train")
    assert [s.name for s in train.samples] == ["rgb_0001", "rgb_0010"]
    label = train[0]["label"][0].tolist()
    assert label == [0, 13, IGNORE_INDEX, 2, 2, 10]
