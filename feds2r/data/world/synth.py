"""Public entry points of the built-in world: render one scene, write a domain, write them all."""

from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from feds2r.data.formats import get_format
from feds2r.data.labels import IGNORE_INDEX
from feds2r.data.world.appearance import compose
from feds2r.data.world.domains import ACDC_CONDITIONS, DOMAINS, Domain, get_domain
from feds2r.data.world.render import Camera, Canvas, Layout, Painter, SceneSpec
from feds2r.data.world.scene import Scene, _choice, required_labels
from feds2r.data.world.styles import NUM_SCENE_LABELS, Style, get_style, random_style
from feds2r.data.world.writers import encode, entry
from feds2r.errors import Feds2rError
from feds2r.io import Output, prepare_output, read_state, write_atomic

DEFAULT_SIZE = (256, 512)
WORLD_VERSION = 1
_SCENE_TO_TRAIN = np.full(NUM_SCENE_LABELS, IGNORE_INDEX, np.uint8)
_SCENE_TO_TRAIN[:19] = np.arange(19)
_SCENE_TO_TRAIN[20] = 0  # painted lane markings are road in the 19-class protocol


def _rng(seed: int, *parts: object) -> np.random.Generator:
    key = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(key))


def sample_spec(
    layout: Layout, rng: np.random.Generator, condition: str | None = None
) -> SceneSpec:
    """Draw a scene spec (layout kind, weather, time) from a domain's distributions."""
    weather, time_ = _choice(rng, layout.weathers), _choice(rng, layout.times)
    if condition == "night":
        weather, time_ = ("clear" if rng.random() < 0.7 else "overcast"), "night"
    elif condition in ("fog", "rain", "snow"):
        weather, time_ = condition, "day"
    return SceneSpec(weather=weather, time=time_, layout=_choice(rng, layout.layouts))


def _draw(
    spec: SceneSpec,
    style: Style,
    layout: Layout,
    size: tuple[int, int],
    rng: np.random.Generator,
    jpeg: bool,
) -> tuple[np.ndarray, np.ndarray]:
    cam = Camera(
        size,
        height=spec.camera_height or float(rng.uniform(*layout.camera_height)),
        hfov=spec.hfov or float(rng.uniform(*layout.hfov)),
        horizon=spec.horizon or float(rng.uniform(*layout.horizon)),
        curve=float(rng.uniform(-layout.curve, layout.curve)),
    )
    canvas = Canvas(size)
    painter = Painter(cam, canvas, style, rng, spec)
    painter.sky(0.6 if spec.weather in ("overcast", "rain", "snow", "fog") else 0.0)
    Scene(painter, layout, spec).draw(required_labels(spec))
    return compose(canvas, spec, style, rng, jpeg=jpeg), canvas.lbl


def render_scene(
    spec: SceneSpec,
    style: str | Style = "generated",
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    layout: Layout | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene from a spec in a style.

    Returns ``(image, label)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` uint8 train ids (255 =
    ignore). ``layout`` is a :class:`Layout` or a domain name whose layout to use (default: the
    Cityscapes-like one); classes named in ``spec.classes`` are placed near the camera and
    drawn in front. The same spec and seed give the same scene (and label) in every style.
    """
    if isinstance(style, str):
        style = get_style(style)
    if layout is None or isinstance(layout, str):
        layout = get_domain(layout or "cityscapes-like").layout
    rng = _rng(seed, "scene", spec)  # not the style: one scene, restyled
    image, scene_lbl = _draw(spec, style, layout, size, rng, jpeg=True)
    return image, _SCENE_TO_TRAIN[scene_lbl]


def synth_domain(
    domain: str | Domain,
    out: str | Path,
    *,
    split: str,
    num: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write ``num`` samples of one split of a domain under ``out`` in the domain's format.

    Deterministic: the same domain, split, index, size and seed always give the same bytes.
    Returns a summary (domain, format, spec string, split, count, seconds).

    ``out`` must be new, empty or a set of the same domain (``feds2r_world.json``); another
    split is added beside the existing ones, and the same split is rewritten only with the same
    count, size and seed. Anything else is refused unless ``force``, which replaces the set (or
    that split). The manifest marks a split complete only once its last file is written, and a
    run that stops midway leaves the folder marked incomplete (``feds2r data check`` says so).
    """
    dom = get_domain(domain) if isinstance(domain, str) else domain
    root = Path(out)
    _check_request(dom, split, num)
    with prepare_output(root, "data synth", marker=MANIFEST) as dest:
        _prepare_split(dest, dom, split=split, num=num, size=size, seed=seed, force=force)
        dest.begin()  # decided: only now is the folder marked in progress
        if dom.kind == "public":
            summary = _synth_public(dom, root, split=split, num=num, size=size, seed=seed,
                                    progress=progress)  # fmt: skip
        else:
            summary = _synth_files(dom, root, split=split, num=num, size=size, seed=seed,
                                   progress=progress)  # fmt: skip
        _update_manifest(root, dom, summary, complete=True)  # last: the completion marker
        dest.finish()
    return summary


MANIFEST = "feds2r_world.json"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_request(dom: Domain, split: str, num: int) -> None:
    """Refuse a split that is not a plain name the domain's format reads, or a count below 1."""
    valid = dict.fromkeys((*dom.splits, *get_format(dom.format).splits))
    named = dom.kind == "public"  # its files are named SPLIT_NNNNNN.png: any plain name works
    if not _PLAIN_NAME.fullmatch(split) or not (named or split in valid):
        raise Feds2rError(
            f"split {split!r} is not one of {dom.name}'s splits ({', '.join(valid)}); a split "
            "is a plain name, not a path"
        )
    if num < 1:
        raise Feds2rError(f"the number of images must be at least 1, got {num}")


def _read_manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _prepare_split(
    dest: Output,
    dom: Domain,
    *,
    split: str,
    num: int,
    size: tuple[int, int],
    seed: int,
    force: bool,
) -> None:
    """Check that ``split`` may be written into ``dest`` and clear what it replaces."""
    root = dest.path
    manifest = _read_manifest(root) if dest.previous else {}
    state = read_state(root) or {}
    if dest.previous and not manifest:
        if not (force or state.get("complete") is False):
            raise Feds2rError(
                f"{root}/{MANIFEST} is unreadable, so what {root} holds is unknown; give a new "
                "folder, or add --force to replace its contents"
            )
        dest.clear()  # our own run, stopped before its first manifest
        return
    held = (manifest.get("domain"), manifest.get("format"))
    if manifest and held != (dom.name, dom.format):
        if not force:
            raise Feds2rError(
                f"--out {root} holds the world domain {held[0]} (format {held[1]}), not "
                f"{dom.name}; give another folder, or add --force to replace it"
            )
        dest.clear()
        manifest = {}
    old = manifest.get("splits", {}).get(split)
    if isinstance(old, dict):
        same = (old.get("count"), list(old.get("size") or ()), old.get("seed")) == (
            num,
            list(size),
            seed,
        )
        complete = old.get("complete", True) is not False
        if complete and not same and not force:
            shape = "x".join(str(v) for v in old.get("size") or ())
            raise Feds2rError(
                f"--out {root} already holds {dom.name}/{split} with {old.get('count')} images "
                f"at {shape}, seed {old.get('seed')}; give the same --num, --size and --seed to "
                "rewrite it, another folder, or add --force to replace it"
            )
        if not (same and complete):
            _remove_split(root, dom, split, int(old.get("count") or 0))
    summary = {"split": split, "count": num, "size": list(size), "seed": seed}
    _update_manifest(root, dom, summary, complete=False)


def _remove_split(root: Path, dom: Domain, split: str, count: int) -> None:
    """Delete the files an earlier run wrote for ``split`` (``count`` samples)."""
    paths = []
    for index in range(count):
        if dom.kind == "public":
            paths.append(f"images/{split}_{index:06d}.png")
            continue
        condition = ACDC_CONDITIONS[index % 4] if dom.format == "acdc" else None
        where = entry(dom.format, dom.name, split, index // 4 if condition else index, condition)
        paths += [where.image, where.label]
    for rel in (*paths, f"{split}.txt"):
        (root / rel).unlink(missing_ok=True)


def _synth_files(
    dom: Domain,
    root: Path,
    *,
    split: str,
    num: int,
    size: tuple[int, int],
    seed: int,
    progress: bool,
) -> dict:
    """Write one split of a labelled domain in its format (see :func:`synth_domain`)."""
    start = time.perf_counter()
    names = []
    bar = tqdm(range(num), desc=f"{dom.name}/{split}", unit="img", disable=not progress)
    for index in bar:
        condition = ACDC_CONDITIONS[index % 4] if dom.format == "acdc" else None
        sub_index = index // 4 if condition else index
        rng = _rng(seed, dom.name, split, index, size)
        spec = sample_spec(dom.layout, rng, condition)
        image, scene_lbl = _draw(spec, dom.style, dom.layout, size, rng, jpeg=False)
        if dom.format not in ("bdd", "mapillary") and dom.style.jpeg_quality:
            image = _recompress(image, dom.style.jpeg_quality)
        where = entry(dom.format, dom.name, split, sub_index, condition)
        image_bytes, label_bytes = encode(dom.format, image, scene_lbl, dom.style.jpeg_quality)
        write_atomic(root / where.image, image_bytes)
        write_atomic(root / where.label, label_bytes)
        if where.list_name:
            names.append(where.list_name)
    if names:
        write_atomic(root / f"{split}.txt", ("\n".join(names) + "\n").encode())
    return _summary(dom, f"{dom.format}:{root}?split={split}", split, num, size, seed, start)


def _summary(
    dom: Domain, spec: str, split: str, num: int, size: tuple[int, int], seed: int, start: float
) -> dict:
    """What :func:`synth_domain` returns for one written split."""
    return {
        "domain": dom.name,
        "kind": dom.kind,
        "format": dom.format,
        "spec": spec,
        "split": split,
        "count": num,
        "size": list(size),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }


PUBLIC_TAG_MIN_SHARE = 0.001
"""A class is tagged in a `public` image when it covers at least this share of its pixels."""


def _synth_public(
    dom: Domain,
    root: Path,
    *,
    split: str,
    num: int,
    size: tuple[int, int],
    seed: int,
    progress: bool,
) -> dict:
    """Write the `public` domain: images with a randomised style each, and image-level tags."""
    start = time.perf_counter()
    tags: dict[str, dict] = {}
    bar = tqdm(range(num), desc=f"{dom.name}/{split}", unit="img", disable=not progress)
    for index in bar:
        rng = _rng(seed, dom.name, split, index, size)
        style = random_style(rng)
        spec = sample_spec(dom.layout, rng)
        image, scene_lbl = _draw(spec, style, dom.layout, size, rng, jpeg=False)
        train_ids = _SCENE_TO_TRAIN[scene_lbl]
        counts = np.bincount(train_ids.ravel(), minlength=256)[:19]
        name = f"images/{split}_{index:06d}.png"
        shares = counts / scene_lbl.size
        tags[name] = {
            "classes": [int(c) for c in np.flatnonzero(shares >= PUBLIC_TAG_MIN_SHARE)],
            "shares": [round(float(v), 4) for v in shares],
        }
        write_atomic(root / name, encode("cityscapes", image, scene_lbl, 0)[0])
    path = root / "tags.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old = {k: v for k, v in old.items() if not k.startswith(f"images/{split}_")}
    write_atomic(path, json.dumps({**old, **tags}, indent=0, sort_keys=True).encode())
    return _summary(dom, f"folder:{root}", split, num, size, seed, start)


def _recompress(image: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def _update_manifest(root: Path, dom: Domain, summary: dict, *, complete: bool) -> None:
    path = root / MANIFEST
    manifest = _read_manifest(root)
    manifest.update(
        {
            "world_version": WORLD_VERSION,
            "domain": dom.name,
            "format": dom.format,
            "kind": dom.kind,
            "layout": asdict(dom.layout),
        }
    )
    manifest.setdefault("splits", {})[summary["split"]] = {
        **{k: summary[k] for k in ("count", "size", "seed")},
        "complete": complete,
    }
    write_atomic(path, json.dumps(manifest, indent=2).encode())


def synth_all(
    out: str | Path,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    scale: float = 1.0,
    domains: tuple[str, ...] | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[dict]:
    """Write the whole built-in benchmark: every domain and its default splits under ``out``.

    ``scale`` multiplies every split's default size (e.g. 0.1 for a tiny world in tests).
    ``out`` must be new, empty or an earlier world; each domain folder follows
    :func:`synth_domain`'s rules (``force`` replaces what differs). ``world.json`` is written
    last.
    """
    if not scale > 0:
        raise Feds2rError(f"scale must be positive, got {scale}")
    root = Path(out)
    with prepare_output(root, "data synth --all", marker="world.json") as dest:
        summaries = _synth_world(root, size, seed, scale, domains, progress, force)
        dest.finish()
    return summaries


def _synth_world(
    root: Path,
    size: tuple[int, int],
    seed: int,
    scale: float,
    domains: tuple[str, ...] | None,
    progress: bool,
    force: bool,
) -> list[dict]:
    summaries = []
    for name in domains or tuple(DOMAINS):
        dom = get_domain(name)
        for split, count in dom.splits.items():
            num = max(int(round(count * scale)), 4 if dom.format == "acdc" else 1)
            summaries.append(
                synth_domain(
                    dom,
                    root / name,
                    split=split,
                    num=num,
                    size=size,
                    seed=seed,
                    progress=progress,
                    force=force,
                )
            )
    index = {
        s["domain"]: {"format": s["format"], "kind": s["kind"], "root": str(root / s["domain"])}
        for s in summaries
    }
    for s in summaries:
        index[s["domain"]].setdefault("splits", {})[s["split"]] = s["count"]
    write_atomic(
        root / "world.json",
        json.dumps(
            {"world_version": WORLD_VERSION, "size": list(size), "seed": seed, "domains": index},
            indent=2,
        ).encode(),
    )
    return summaries
