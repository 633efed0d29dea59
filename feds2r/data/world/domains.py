"""The domains of the built-in world: layout, style, on-disk format and default split sizes.

The numbers are fixed from the real datasets' published properties before any model was trained;
``docs/world.md`` lists each with its source. Do not tune them to make a method win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feds2r.data.world.render import Layout
from feds2r.data.world.styles import STYLES, Style

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


@dataclass(frozen=True)
class Domain:
    """A domain: what its scenes contain (layout), how they look (style), how they are stored."""

    name: str
    kind: str  # "synthetic" (a client's labelled data), "real" (server images / test sets) or
    # "public" (image-level labels for pretraining the shared backbone)
    format: str  # the feds2r format it is written in
    layout: Layout
    splits: dict[str, int] = field(default_factory=dict)  # default number of images per split

    @property
    def style(self) -> Style:
        return STYLES[self.name]


_CITY_SIDES = {
    "building": 0.45,
    "vegetation": 0.4,
    "wall": 0.04,
    "fence": 0.05,
    "terrain": 0.03,
    "open": 0.03,
}

DOMAINS: dict[str, Domain] = {
    "gta5-like": Domain(
        name="gta5-like",
        kind="synthetic",
        format="gta5",
        layout=Layout(
            camera_height=(1.2, 1.8),
            hfov=(60, 75),
            horizon=(0.44, 0.54),
            lanes=(2, 4),
            sidewalk=(2.0, 4.0),
            curve=0.003,
            sides={
                "building": 0.3,
                "vegetation": 0.25,
                "wall": 0.15,
                "fence": 0.05,
                "terrain": 0.12,
                "open": 0.13,
            },
            building_height=(6, 30),
            rates={
                "car": 3.5,
                "parked_car": 0.8,
                "truck": 0.6,
                "bus": 0.15,
                "train": 0.03,
                "person": 2.5,
                "rider_bicycle": 0.03,
                "rider_motorcycle": 0.05,
                "bicycle": 0.01,
                "motorcycle": 0.05,
                "pole": 3.0,
                "traffic_light": 0.8,
                "traffic_sign": 0.5,
            },
            layouts={"urban": 0.6, "suburban": 0.2, "highway": 0.2},
            weathers={"clear": 0.7, "overcast": 0.2, "rain": 0.1},
            times={"day": 0.8, "dusk": 0.12, "night": 0.08},
        ),
        splits={"train": 800, "val": 200},
    ),
    "synthia-like": Domain(
        name="synthia-like",
        kind="synthetic",
        format="synthia",
        layout=Layout(
            camera_height=(1.5, 9.0),
            hfov=(60, 90),
            horizon=(0.28, 0.52),
            lanes=(2, 4),
            sidewalk=(5.0, 10.0),
            curve=0.001,
            sides={"building": 0.55, "vegetation": 0.35, "wall": 0.05, "fence": 0.05},
            building_height=(8, 30),
            rates={
                "car": 6.0,
                "parked_car": 1.5,
                "bus": 1.0,
                "person": 28.0,
                "rider_bicycle": 1.5,
                "rider_motorcycle": 1.0,
                "bicycle": 1.0,
                "motorcycle": 0.8,
                "pole": 4.0,
                "traffic_light": 0.3,
                "traffic_sign": 0.6,
            },
            absent=("truck", "train", "terrain"),
            layouts={"urban": 1.0},
            weathers={"clear": 0.6, "overcast": 0.3, "fog": 0.05, "rain": 0.05},
            times={"day": 0.8, "dusk": 0.15, "night": 0.05},
            verge="void",
        ),
        splits={"train": 800, "val": 200},
    ),
    "synscapes-like": Domain(
        name="synscapes-like",
        kind="synthetic",
        format="synscapes",
        layout=Layout(
            camera_height=(1.3, 1.6),
            hfov=(48, 58),
            horizon=(0.42, 0.48),
            lanes=(2, 4),
            sidewalk=(2.0, 5.0),
            sides=_CITY_SIDES,
            building_height=(8, 25),
            rates={
                "car": 6.0,
                "parked_car": 3.0,
                "truck": 0.1,
                "bus": 0.1,
                "train": 0.1,
                "person": 6.0,
                "rider_bicycle": 0.3,
                "rider_motorcycle": 0.05,
                "bicycle": 1.0,
                "motorcycle": 0.08,
                "pole": 3.0,
                "traffic_light": 1.2,
                "traffic_sign": 2.0,
            },
            layouts={"urban": 0.8, "suburban": 0.2},
            weathers={"clear": 0.6, "overcast": 0.4},
            times={"day": 0.9, "dusk": 0.1},
        ),
        splits={"train": 800, "val": 200},
    ),
    "cityscapes-like": Domain(
        name="cityscapes-like",
        kind="real",
        format="cityscapes",
        layout=Layout(
            camera_height=(1.18, 1.3),
            hfov=(46, 52),
            horizon=(0.40, 0.46),
            lanes=(2, 3),
            sidewalk=(2.0, 4.5),
            sides=_CITY_SIDES,
            building_height=(8, 22),
            rates={
                "car": 4.0,
                "parked_car": 3.0,
                "truck": 0.2,
                "bus": 0.07,
                "train": 0.05,
                "person": 4.0,
                "rider_bicycle": 0.2,
                "rider_motorcycle": 0.03,
                "bicycle": 1.6,
                "motorcycle": 0.04,
                "pole": 3.0,
                "traffic_light": 1.2,
                "traffic_sign": 2.5,
            },
            ego_hood=0.09,
            layouts={"urban": 0.85, "suburban": 0.15},
            weathers={"clear": 0.5, "overcast": 0.5},
            times={"day": 1.0},
        ),
        # dev: labelled, for choosing settings; disjoint from val (other cities and seeds)
        splits={"train": 600, "dev": 100, "val": 200},
    ),
    "bdd-like": Domain(
        name="bdd-like",
        kind="real",
        format="bdd",
        layout=Layout(
            camera_height=(1.3, 1.6),
            hfov=(62, 75),
            horizon=(0.42, 0.52),
            lanes=(2, 5),
            sidewalk=(1.5, 3.0),
            sides={
                "building": 0.4,
                "vegetation": 0.35,
                "wall": 0.05,
                "fence": 0.05,
                "terrain": 0.1,
                "open": 0.05,
            },
            building_height=(5, 30),
            rates={
                "car": 6.0,
                "parked_car": 1.5,
                "truck": 0.5,
                "bus": 0.2,
                "train": 0.02,
                "person": 1.5,
                "rider_bicycle": 0.08,
                "rider_motorcycle": 0.05,
                "bicycle": 0.1,
                "motorcycle": 0.05,
                "pole": 4.0,
                "traffic_light": 1.5,
                "traffic_sign": 1.5,
            },
            ego_hood=0.06,
            layouts={"urban": 0.5, "suburban": 0.25, "highway": 0.25},
            weathers={"clear": 0.5, "overcast": 0.3, "rain": 0.15, "snow": 0.05},
            times={"day": 0.6, "dusk": 0.1, "night": 0.3},
        ),
        splits={"val": 200},
    ),
    "mapillary-like": Domain(
        name="mapillary-like",
        kind="real",
        format="mapillary",
        layout=Layout(
            camera_height=(1.0, 3.0),
            hfov=(50, 90),
            horizon=(0.35, 0.58),
            lanes=(1, 4),
            sidewalk=(1.5, 5.0),
            curve=0.004,
            sides={
                "building": 0.45,
                "vegetation": 0.3,
                "wall": 0.06,
                "fence": 0.06,
                "terrain": 0.08,
                "open": 0.05,
            },
            building_height=(5, 35),
            rates={
                "car": 4.0,
                "parked_car": 2.0,
                "truck": 0.4,
                "bus": 0.3,
                "train": 0.05,
                "person": 3.0,
                "rider_bicycle": 0.3,
                "rider_motorcycle": 0.3,
                "bicycle": 0.4,
                "motorcycle": 0.3,
                "pole": 6.0,
                "traffic_light": 1.0,
                "traffic_sign": 2.0,
            },
            layouts={"urban": 0.5, "suburban": 0.3, "highway": 0.1, "unstructured": 0.1},
            weathers={"clear": 0.6, "overcast": 0.3, "rain": 0.07, "snow": 0.03},
            times={"day": 0.9, "dusk": 0.1},
        ),
        splits={"val": 200},
    ),
    "idd-like": Domain(
        name="idd-like",
        kind="real",
        format="idd",
        layout=Layout(
            camera_height=(1.3, 1.7),
            hfov=(55, 65),
            horizon=(0.40, 0.50),
            lanes=(1, 3),
            sidewalk=(1.0, 2.5),
            curve=0.004,
            sides={
                "building": 0.4,
                "vegetation": 0.3,
                "wall": 0.12,
                "fence": 0.03,
                "terrain": 0.1,
                "open": 0.05,
            },
            building_height=(4, 18),
            rates={
                "car": 3.0,
                "parked_car": 1.0,
                "truck": 0.8,
                "bus": 0.6,
                "train": 0.01,
                "person": 4.0,
                "rider_bicycle": 0.5,
                "rider_motorcycle": 3.0,
                "bicycle": 0.3,
                "motorcycle": 1.5,
                "pole": 3.0,
                "traffic_light": 0.2,
                "traffic_sign": 0.5,
            },
            ego_hood=0.05,
            layouts={"unstructured": 0.7, "urban": 0.3},
            weathers={"clear": 0.7, "overcast": 0.3},
            times={"day": 1.0},
        ),
        splits={"val": 200},
    ),
    "acdc-like": Domain(
        name="acdc-like",
        kind="real",
        format="acdc",
        layout=Layout(
            camera_height=(1.3, 1.5),
            hfov=(60, 70),
            horizon=(0.40, 0.47),
            lanes=(2, 3),
            sidewalk=(2.0, 4.5),
            sides=_CITY_SIDES,
            building_height=(8, 22),
            rates={
                "car": 5.0,
                "parked_car": 2.5,
                "truck": 0.1,
                "bus": 0.1,
                "train": 0.1,
                "person": 3.5,
                "rider_bicycle": 0.2,
                "rider_motorcycle": 0.05,
                "bicycle": 1.2,
                "motorcycle": 0.1,
                "pole": 3.5,
                "traffic_light": 1.2,
                "traffic_sign": 2.5,
            },
            ego_hood=0.07,
            layouts={"urban": 0.7, "suburban": 0.3},
        ),
        splits={"val": 200},  # divided equally over fog, night, rain and snow
    ),
}


def _public_layout() -> Layout:
    """Every layout, weather and time; each object at the mean rate of the other domains."""
    others = [d.layout for d in DOMAINS.values()]
    names = sorted({k for lay in others for k in lay.rates})
    return Layout(
        camera_height=(1.0, 4.0),
        hfov=(45, 90),
        horizon=(0.32, 0.56),
        lanes=(1, 5),
        sidewalk=(1.0, 8.0),
        curve=0.004,
        sides=_CITY_SIDES,
        building_height=(4, 32),
        rates={k: round(sum(lay.rates.get(k, 0.0) for lay in others) / len(others), 3)
               for k in names},
        layouts={"urban": 0.25, "suburban": 0.25, "highway": 0.25, "unstructured": 0.25},
        weathers={w: 0.2 for w in ("clear", "overcast", "fog", "rain", "snow")},
        times={"day": 0.6, "dusk": 0.2, "night": 0.2},
    )  # fmt: skip


# The stand-in for ImageNet (docs/world.md): image-level labels only, a randomised style per image.
DOMAINS["public"] = Domain(
    name="public", kind="public", format="folder", layout=_public_layout(), splits={"train": 4000}
)

SYNTHETIC_DOMAINS = tuple(n for n, d in DOMAINS.items() if d.kind == "synthetic")
REAL_DOMAINS = tuple(n for n, d in DOMAINS.items() if d.kind == "real")


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise KeyError(f"unknown domain {name!r}; valid domains: {', '.join(DOMAINS)}")
    return DOMAINS[name]
