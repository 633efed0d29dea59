"""The built-in world: determinism, the synth -> reader round trip, scene specs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from feds2r.data import check_dataset, open_dataset
from feds2r.data.labels import CLASS_NAMES, RARE_CLASSES, class_index
from feds2r.data.world import DOMAINS, STYLES, SceneSpec, render_scene, synth_all, synth_domain

SIZE = (64, 128)


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_same_seed_same_bytes(domain, tmp_path):
    for run in ("a", "b"):
        synth_domain(domain, tmp_path / run, split="val", num=4, size=SIZE, seed=3,
                     progress=False)  # fmt: skip
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    # public: images, tags.json and the manifest (no labels); the others: images and labels
    assert len(a) >= (5 if DOMAINS[domain].kind == "public" else 9) and a == b
    synth_domain(domain, tmp_path / "c", split="val", num=4, size=SIZE, seed=4, progress=False)
    images = [k for k in a if "label" not in k.lower() and "gt" not in k.lower()]
    assert any(a[k] != digest(tmp_path / "c").get(k) for k in images)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("world")
    return root, synth_all(root, size=SIZE, seed=0, scale=0.02, progress=False)


def test_synth_all_writes_every_domain_in_its_format(tiny_world):
    root, summaries = tiny_world
    assert {s["domain"] for s in summaries} == set(DOMAINS)
    assert (root / "world.json").is_file()
    for s in summaries:
        public = s["kind"] == "public"
        ds = open_dataset(s["spec"], labels=not public)
        assert len(ds) == s["count"], s
        item = ds[0]
        assert item["image"].shape == (3, *SIZE)
        if public:  # image-level labels only
            assert "label" not in item
            continue
        labels = set(np.unique(item["label"].numpy()).tolist())
        assert labels <= set(range(19)) | {255}
        report = check_dataset(s["spec"], progress=False)
        assert report.ok, report.to_text()


def test_world_uses_native_layouts(tiny_world):
    root, _ = tiny_world
    assert any((root / "gta5-like/images").glob("*.png"))
    assert any((root / "synthia-like/GT/LABELS").glob("*.png"))
    assert any((root / "cityscapes-like/gtFine/val").rglob("*_gtFine_labelIds.png"))
    assert any((root / "bdd-like/images/10k/val").glob("*.jpg"))
    assert any((root / "mapillary-like/validation/v1.2/labels").glob("*.png"))
    assert any((root / "idd-like/gtFine/val").rglob("*_gtFine_labelcsTrainIds.png"))
    for cond in ("fog", "night", "rain", "snow"):
        assert any((root / f"acdc-like/gt/{cond}/val").rglob("*_gt_labelTrainIds.png"))


def test_synthia_like_lacks_truck_train_terrain(tmp_path):
    synth_domain("synthia-like", tmp_path, split="train", num=30, size=SIZE, progress=False)
    ds = open_dataset(f"synthia:{tmp_path}?split=train")
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds[i]["label"].numpy()).tolist())
    for name in ("truck", "train", "terrain"):
        assert class_index(name) not in seen
    assert {class_index("road"), class_index("person"), class_index("car")} <= seen


@pytest.mark.parametrize("name", RARE_CLASSES)
def test_scene_spec_classes_are_visible(name):
    image, label = render_scene(SceneSpec(classes=(name,), weather="rain"), "generated",
                                size=SIZE, seed=1)  # fmt: skip
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    assert (label == class_index(name)).sum() >= 10


def test_render_scene_is_deterministic_and_style_dependent():
    spec = SceneSpec(classes=("bus",), time="dusk")
    a, la = render_scene(spec, "generated", size=SIZE, seed=5)
    b, lb = render_scene(spec, "generated", size=SIZE, seed=5)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    c, lc = render_scene(spec, "cityscapes-like", size=SIZE, seed=5)
    assert np.array_equal(la, lc)  # same scene, drawn in another style
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


def test_generated_style_is_none_of_the_domains():
    assert "generated" in STYLES and "generated" not in DOMAINS
    gen = STYLES["generated"]
    assert all(STYLES[d] != gen for d in DOMAINS)


def test_scene_spec_validates():
    with pytest.raises(KeyError, match="valid classes"):
        SceneSpec(classes=("tractor",))
    with pytest.raises(ValueError, match="weather"):
        SceneSpec(weather="hail")


def test_rare_classes_are_rare_in_cityscapes_like(tmp_path):
    synth_domain("cityscapes-like", tmp_path, split="val", num=40, size=SIZE, progress=False)
    report = check_dataset(f"cityscapes:{tmp_path}?split=val", progress=False).to_dict()
    frac = report["class_fraction"]
    assert frac["road"] > 0.15 and frac["building"] > 0.1
    for name in RARE_CLASSES:
        assert frac[name] < 0.02, name
    assert set(frac) == set(CLASS_NAMES)


# ----------------------------------------------------------------------------- output policy


def manifest(root: Path) -> dict:
    return json.loads((root / "feds2r_world.json").read_text())


def test_synth_never_mixes_sets(tmp_path):
    from feds2r.errors import Feds2rError

    root = tmp_path / "gta"
    synth_domain("gta5-like", root, split="train", num=6, size=SIZE, progress=False)
    before = sorted(p.name for p in (root / "images").iterdir())
    # another domain, or the same split at another size or count: refused, nothing touched
    with pytest.raises(Feds2rError, match="holds the world domain gta5-like .*--force"):
        synth_domain("synthia-like", root, split="train", num=2, size=SIZE, progress=False)
    with pytest.raises(Feds2rError, match="already holds gta5-like/train with 6 images"):
        synth_domain("gta5-like", root, split="train", num=3, size=(64, 128), progress=False)
    assert sorted(p.name for p in (root / "images").iterdir()) == before
    assert manifest(root)["domain"] == "gta5-like"
    # the same settings rewrite it; another split is added beside it
    synth_domain("gta5-like", root, split="train", num=6, size=SIZE, progress=False)
    synth_domain("gta5-like", root, split="val", num=2, size=SIZE, progress=False)
    assert set(manifest(root)["splits"]) == {"train", "val"}
    # --force replaces: a split with fewer images leaves none of the old ones behind
    synth_domain("gta5-like", root, split="train", num=2, size=SIZE, progress=False, force=True)
    assert len(open_dataset(f"gta5:{root}?split=train")) == 2
    assert len(list((root / "images").iterdir())) == 2 + 2  # 2 train + 2 val
    # --force with another domain replaces the whole set
    synth_domain("synthia-like", root, split="train", num=2, size=SIZE, progress=False, force=True)
    assert manifest(root)["domain"] == "synthia-like" and not (root / "images").exists()
    assert check_dataset(f"synthia:{root}?split=train", progress=False).ok


def test_synth_refuses_a_folder_of_other_files(tmp_path):
    from feds2r.errors import Feds2rError

    (tmp_path / "mine.txt").write_text("keep")
    for force in (False, True):
        with pytest.raises(Feds2rError, match="already holds other files .*mine.txt"):
            synth_domain("gta5-like", tmp_path, split="train", num=1, size=SIZE,
                         progress=False, force=force)  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--split", "../../x"], "invalid choice|not one of|plain name"),
        (["--split", "sub/train"], "plain name"),
        (["--num", "-3"], "must be at least 1"),
        (["--num", "0"], "must be at least 1"),
        (["--scale", "-1", "--all"], "positive"),
    ],
)
def test_synth_arguments_are_checked(args, match, tmp_path, capsys):
    from feds2r.cli import main

    base = ["data", "synth", "--out", str(tmp_path / "o"), "--size", "32x64", "--quiet"]
    if "--all" not in args:
        base += ["--domain", "gta5-like"]
    try:
        code = main([*base, *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists() and not (tmp_path.parent / "x").exists()


def _colour_spread(root: Path, spec: str) -> float:
    """Spread over images of each image's mean chromaticity (r, g, b) / (r + g + b): how varied a
    domain's colour cast is, whatever its brightness (night scenes are dark, not differently
    tinted)."""
    ds = open_dataset(spec, labels=False)
    means = np.stack([ds[i]["image"].float().mean(dim=(1, 2)).numpy() for i in range(len(ds))])
    chroma = means / means.sum(axis=1, keepdims=True).clip(1e-6)
    return float(chroma.std(axis=0).sum())


def test_public_style_differs_from_every_other_domain(tmp_path):
    """The randomised public look is none of the clients' or test domains' (docs/world.md)."""
    spread = {}
    for name, dom in DOMAINS.items():
        split = "train" if dom.kind == "public" else next(iter(dom.splits))
        s = synth_domain(name, tmp_path / name, split=split, num=32, size=SIZE, seed=0,
                         progress=False)  # fmt: skip
        spread[name] = _colour_spread(tmp_path / name, s["spec"])
    others = {k: v for k, v in spread.items() if k != "public"}
    assert spread["public"] > 1.1 * max(others.values()), spread


def test_public_has_image_level_tags_and_no_pixel_labels(tmp_path):
    synth_domain("public", tmp_path, split="train", num=6, size=SIZE, seed=0, progress=False)
    tags = json.loads((tmp_path / "tags.json").read_text())
    images = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert images == sorted(tags) and len(images) == 6  # every file is an image with its tags
    for tag in tags.values():
        assert len(tag["shares"]) == 19 and 0.9 < sum(tag["shares"]) <= 1.0 + 1e-3
        # a class is tagged when it covers >= 0.1 % of the pixels (shares are rounded to 1e-4)
        assert {k for k, v in enumerate(tag["shares"]) if v > 0.00105} <= set(tag["classes"])
        assert set(tag["classes"]) <= {k for k, v in enumerate(tag["shares"]) if v > 0.00095}
    assert {p.name for p in tmp_path.iterdir() if p.is_file()} <= {
        "tags.json",
        "feds2r_world.json",
        ".feds2r_output.json",
    }


def test_dev_split_is_disjoint_from_the_test_split(tmp_path):
    """Choices are made on dev; the cityscapes-like test split (val) shares no image with it."""
    root = tmp_path / "cs"
    for split in ("dev", "val"):
        synth_domain("cityscapes-like", root, split=split, num=12, size=SIZE, seed=0,
                     progress=False)  # fmt: skip
    dev = open_dataset(f"cityscapes:{root}?split=dev")
    val = open_dataset(f"cityscapes:{root}?split=val")
    assert len(dev) == len(val) == 12
    digests = {
        split: {hashlib.sha256(ds[i]["image"].numpy().tobytes()).hexdigest() for i in range(12)}
        for split, ds in (("dev", dev), ("val", val))
    }
    assert not digests["dev"] & digests["val"]
    assert not {dev[i]["name"] for i in range(12)} & {val[i]["name"] for i in range(12)}
