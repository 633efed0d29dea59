"""Rasterise one procedural street scene: perspective geometry, labels, depth and appearance.

The camera is a pinhole at height ``h`` above a flat ground plane, looking along the road (+z).
A world point (x right, y up, z forward) projects to ``u = W/2 + f (x - c z^2) / z`` and
``v = v_h + f (h - y) / z``, where ``v_h`` is the horizon row and ``c`` bends the road. Everything
is drawn far to near (painter's algorithm) as polygons into three layers at once: the image, the
scene label map and a depth map (for fog). A :class:`~feds2r.data.world.styles.Style` then applies
textures, weather, colour grading and sensor effects.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from feds2r.data.labels import class_index
from feds2r.data.world.styles import EGO, MARKING, NUM_SCENE_LABELS, VOID, Style

(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    LIGHT,
    SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(19)

WEATHERS = ("clear", "overcast", "fog", "rain", "snow")
TIMES = ("day", "dusk", "night")
LAYOUTS = ("urban", "suburban", "highway", "unstructured")


@dataclass(frozen=True)
class SceneSpec:
    """What one scene must contain and under which conditions it is seen.

    ``classes`` are class names that must be visible; ``None`` camera fields are drawn from the
    domain's camera distribution.
    """

    classes: tuple[str, ...] = ()
    weather: str = "clear"
    time: str = "day"
    layout: str = "urban"
    camera_height: float | None = None  # metres above the road
    hfov: float | None = None  # horizontal field of view, degrees
    horizon: float | None = None  # horizon row as a fraction of the image height

    def __post_init__(self) -> None:
        if self.weather not in WEATHERS:
            raise ValueError(f"weather must be one of {WEATHERS}, not {self.weather!r}")
        if self.time not in TIMES:
            raise ValueError(f"time must be one of {TIMES}, not {self.time!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        for name in self.classes:
            class_index(name)  # raises KeyError listing the valid names


@dataclass(frozen=True)
class Layout:
    """A domain's distribution of scene geometry and content (see ``docs/world.md``).

    Ranges are ``(low, high)`` drawn uniformly; ``rates`` are Poisson means of objects per scene.
    """

    camera_height: tuple[float, float] = (1.2, 1.6)
    hfov: tuple[float, float] = (50.0, 60.0)
    horizon: tuple[float, float] = (0.40, 0.48)
    lanes: tuple[int, int] = (2, 4)
    sidewalk: tuple[float, float] = (2.0, 4.5)
    curve: float = 0.002  # max |c| of the road bend
    sides: dict[str, float] = field(
        default_factory=lambda: {
            "building": 0.6,
            "vegetation": 0.2,
            "wall": 0.05,
            "fence": 0.05,
            "terrain": 0.05,
            "open": 0.05,
        }
    )
    building_height: tuple[float, float] = (8.0, 25.0)
    rates: dict[str, float] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # classes this domain never shows (e.g. SYNTHIA: truck)
    ego_hood: float = 0.0  # fraction of image height covered by the ego vehicle's hood
    layouts: dict[str, float] = field(default_factory=lambda: {"urban": 1.0})
    weathers: dict[str, float] = field(default_factory=lambda: {"clear": 0.7, "overcast": 0.3})
    times: dict[str, float] = field(default_factory=lambda: {"day": 1.0})
    verge: str = "terrain"  # what lies beyond the sidewalk where nothing stands: terrain or void


# Material base colours (RGB 0..1) and per-class texture amplitude, shared by every style.
_MATERIALS: dict[str, list[tuple[float, float, float]]] = {
    "road": [(0.36, 0.36, 0.38), (0.42, 0.41, 0.40), (0.30, 0.30, 0.32)],
    "sidewalk": [(0.60, 0.57, 0.55), (0.55, 0.52, 0.50), (0.66, 0.60, 0.56)],
    "building": [
        (0.70, 0.64, 0.55),
        (0.48, 0.48, 0.50),
        (0.58, 0.36, 0.28),
        (0.80, 0.78, 0.74),
        (0.55, 0.50, 0.42),
    ],
    "wall": [(0.62, 0.60, 0.56), (0.52, 0.48, 0.44)],
    "fence": [(0.42, 0.40, 0.36), (0.55, 0.55, 0.55), (0.35, 0.28, 0.20)],
    "pole": [(0.45, 0.45, 0.47), (0.30, 0.32, 0.30)],
    "light": [(0.14, 0.14, 0.12), (0.25, 0.25, 0.20)],
    "sign": [(0.80, 0.15, 0.15), (0.15, 0.30, 0.70), (0.90, 0.78, 0.15), (0.90, 0.90, 0.90)],
    "vegetation": [(0.26, 0.42, 0.16), (0.20, 0.34, 0.14), (0.34, 0.45, 0.20)],
    "terrain": [(0.45, 0.55, 0.27), (0.55, 0.50, 0.35), (0.50, 0.58, 0.32)],
    "clothes": [
        (0.15, 0.15, 0.18),
        (0.30, 0.25, 0.45),
        (0.55, 0.20, 0.20),
        (0.70, 0.70, 0.68),
        (0.20, 0.30, 0.45),
        (0.45, 0.40, 0.30),
    ],
    "skin": [(0.85, 0.68, 0.55), (0.60, 0.45, 0.35), (0.40, 0.28, 0.22)],
    "car": [
        (0.75, 0.75, 0.77),
        (0.10, 0.10, 0.12),
        (0.90, 0.90, 0.90),
        (0.60, 0.10, 0.10),
        (0.15, 0.25, 0.50),
        (0.45, 0.45, 0.48),
    ],
    "truck": [(0.85, 0.85, 0.85), (0.70, 0.20, 0.15), (0.20, 0.35, 0.55), (0.50, 0.50, 0.45)],
    "bus": [(0.90, 0.80, 0.20), (0.75, 0.15, 0.15), (0.20, 0.40, 0.70), (0.88, 0.88, 0.88)],
    "train": [(0.20, 0.35, 0.70), (0.85, 0.85, 0.85), (0.70, 0.15, 0.15)],
    "twowheeler": [(0.10, 0.10, 0.10), (0.60, 0.10, 0.10), (0.15, 0.30, 0.60), (0.70, 0.70, 0.70)],
    "glass": [(0.12, 0.15, 0.18)],
    "ego": [(0.08, 0.08, 0.10), (0.30, 0.30, 0.32)],
}

_TEXTURE = np.zeros(NUM_SCENE_LABELS, dtype=np.float32)
for _label, _amp in {
    ROAD: 0.10,
    SIDEWALK: 0.12,
    BUILDING: 0.10,
    WALL: 0.15,
    FENCE: 0.25,
    POLE: 0.05,
    VEGETATION: 0.35,
    TERRAIN: 0.30,
    SKY: 0.02,
    PERSON: 0.08,
    RIDER: 0.08,
    CAR: 0.04,
    TRUCK: 0.06,
    BUS: 0.05,
    TRAIN: 0.05,
    MOTORCYCLE: 0.05,
    BICYCLE: 0.05,
    EGO: 0.03,
    MARKING: 0.08,
    VOID: 0.2,
}.items():
    _TEXTURE[_label] = _amp


class Camera:
    """Pinhole camera over a flat road; see the module docstring for the projection."""

    def __init__(
        self, size: tuple[int, int], height: float, hfov: float, horizon: float, curve: float
    ) -> None:
        self.h_img, self.w_img = size
        self.height = height
        self.f = self.w_img / 2 / math.tan(math.radians(hfov) / 2)
        self.vh = self.h_img * horizon
        self.curve = curve
        # nearest visible ground depth (bottom image row), and a bit nearer for clipping
        self.z_bottom = self.f * height / max(self.h_img - self.vh, 1.0)

    def project(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """World points (arrays of equal shape) -> ``(..., 2)`` pixel coordinates (u, v)."""
        z = np.maximum(z, 0.05)
        inv = self.f / z
        out = np.empty(np.shape(z) + (2,))
        out[..., 0] = self.w_img / 2 + (x - self.curve * z * z) * inv
        out[..., 1] = self.vh + (self.height - y) * inv
        return out

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / max(z, 0.05)


class Canvas:
    """Image, scene-label and depth layers drawn together, polygon by polygon."""

    def __init__(self, size: tuple[int, int]) -> None:
        h, w = size
        self.img = np.zeros((h, w, 3), np.float32)
        self.lbl = np.full((h, w), VOID, np.uint8)
        self.depth = np.full((h, w), 1e4, np.float32)
        self.lights: list[tuple[float, float, float, tuple[float, float, float]]] = []

    def poly(self, pts: np.ndarray, label: int | None, color, depth: float) -> None:
        """Fill one polygon ``(N, 2)``; ``label=None`` paints the image only (a detail)."""
        p = [np.round(np.asarray(pts) * 4).astype(np.int32)]
        cv2.fillPoly(self.img, p, tuple(float(c) for c in color), cv2.LINE_8, 2)
        if label is not None:
            cv2.fillPoly(self.lbl, p, int(label), cv2.LINE_8, 2)
            cv2.fillPoly(self.depth, p, float(depth), cv2.LINE_8, 2)

    def polys(self, pts: list[np.ndarray], label: int | None, color, depth: float) -> None:
        if not pts:
            return
        p = [np.round(q * 4).astype(np.int32) for q in pts]
        cv2.fillPoly(self.img, p, tuple(float(c) for c in color), cv2.LINE_8, 2)
        if label is not None:
            cv2.fillPoly(self.lbl, p, int(label), cv2.LINE_8, 2)
            cv2.fillPoly(self.depth, p, float(depth), cv2.LINE_8, 2)

    def ellipse(self, center, axes, label: int | None, color, depth: float) -> None:
        c = (int(round(center[0] * 4)), int(round(center[1] * 4)))
        a = (max(int(round(axes[0] * 4)), 1), max(int(round(axes[1] * 4)), 1))
        cv2.ellipse(self.img, c, a, 0, 0, 360, tuple(float(x) for x in color), -1, cv2.LINE_8, 2)
        if label is not None:
            cv2.ellipse(self.lbl, c, a, 0, 0, 360, int(label), -1, cv2.LINE_8, 2)
            cv2.ellipse(self.depth, c, a, 0, 0, 360, float(depth), -1, cv2.LINE_8, 2)

    def ring(self, center, radius: float, thickness: int, label: int, color, depth: float) -> None:
        """A circle outline (a bicycle wheel) of ``radius`` pixels."""
        c = (int(round(center[0] * 4)), int(round(center[1] * 4)))
        r = max(int(round(radius * 4)), 1)
        cv2.circle(self.img, c, r, tuple(float(x) for x in color), thickness, cv2.LINE_8, 2)
        cv2.circle(self.lbl, c, r, int(label), thickness, cv2.LINE_8, 2)
        cv2.circle(self.depth, c, r, float(depth), thickness, cv2.LINE_8, 2)

    def segment(self, a, b, thickness: int, label: int, color, depth: float) -> None:
        """A thick line (a bicycle frame tube) between pixel positions ``a`` and ``b``."""
        pa = (int(round(a[0] * 4)), int(round(a[1] * 4)))
        pb = (int(round(b[0] * 4)), int(round(b[1] * 4)))
        cv2.line(self.img, pa, pb, tuple(float(x) for x in color), thickness, cv2.LINE_8, 2)
        cv2.line(self.lbl, pa, pb, int(label), thickness, cv2.LINE_8, 2)
        cv2.line(self.depth, pa, pb, float(depth), thickness, cv2.LINE_8, 2)


class Painter:
    """Draws world objects through a camera onto a canvas with a style's palette."""

    def __init__(
        self, cam: Camera, canvas: Canvas, style: Style, rng: np.random.Generator, spec: SceneSpec
    ) -> None:
        self.cam, self.cv, self.style, self.rng, self.spec = cam, canvas, style, rng, spec

    # -- colours ---------------------------------------------------------------------------
    def color(self, material: str, shade: float = 1.0) -> tuple[float, float, float]:
        choices = _MATERIALS[material]
        base = choices[int(self.rng.integers(len(choices)))]
        h, s, v = colorsys.rgb_to_hsv(*base)
        j = self.style.instance_jitter
        h = (h + self.style.hue_shift / 360 + self.rng.normal(0, j * 0.15)) % 1.0
        s = min(max(s * self.style.saturation * (1 + self.rng.normal(0, j)), 0), 1)
        v = min(max(v * self.style.brightness * (1 + self.rng.normal(0, j)) * shade, 0), 1)
        return colorsys.hsv_to_rgb(h, s, v)

    def side_shade(self) -> float:
        return 1.0 - self.style.shading

    # -- primitives ------------------------------------------------------------------------
    def quad(self, corners: np.ndarray, label, color, depth) -> None:
        """``corners`` (4, 3) world points -> one polygon."""
        uv = self.cam.project(corners[:, 0], corners[:, 1], corners[:, 2])
        self.cv.poly(uv, label, color, depth)

    def rect(self, x0: float, x1: float, y0: float, y1: float, z: float, label, color) -> None:
        """An upright rectangle facing the camera at depth ``z`` (x0..x1 wide, y0..y1 high)."""
        corners = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])
        self.quad(corners, label, color, z)

    def point(self, x: float, y: float, z: float) -> np.ndarray:
        """Pixel position ``(2,)`` of one world point."""
        return self.cam.project(np.array(x), np.array(y), np.array(z))

    def ground_strip(self, x0: np.ndarray, x1: np.ndarray, z: np.ndarray, label, color) -> None:
        """A flat strip between lateral edges ``x0(z)`` and ``x1(z)`` sampled at depths ``z``."""
        zeros = np.zeros_like(z)
        left = self.cam.project(x0, zeros, z)
        right = self.cam.project(x1, zeros, z)
        self.cv.poly(np.concatenate([left, right[::-1]]), label, color, float(z.mean()))

    def box(
        self,
        xc: float,
        z0: float,
        w: float,
        h: float,
        length: float,
        label: int,
        color,
        y0: float = 0.0,
        details: bool = True,
    ) -> tuple[float, float]:
        """A lit box standing on the road; returns the rear face's pixel (u, v) at its top."""
        xl, xr, z1 = xc - w / 2, xc + w / 2, z0 + length
        shade = self.side_shade()
        if self.cam.height > h:  # seen from above: the roof
            top = np.array([[xl, h, z0], [xr, h, z0], [xr, h, z1], [xl, h, z1]])
            self.quad(top, label, tuple(c * 1.08 for c in color), z0 + length / 2)
        side_x = xl if xl > 0 else (xr if xr < 0 else None)
        if side_x is not None:
            side = np.array([[side_x, y0, z0], [side_x, y0, z1], [side_x, h, z1], [side_x, h, z0]])
            self.quad(side, label, tuple(c * shade for c in color), z0 + length / 2)
        rear = np.array([[xl, y0, z0], [xr, y0, z0], [xr, h, z0], [xl, h, z0]])
        self.quad(rear, label, color, z0)
        return tuple(self.cam.project(np.array(xc), np.array(h), np.array(z0)))

    # -- scene parts -----------------------------------------------------------------------
    def sky(self, cloudiness: float) -> None:
        h_img, w_img = self.cv.lbl.shape
        rows = np.linspace(0, 1, h_img, dtype=np.float32)[:, None]
        top, hor = np.array(self.style.sky_top), np.array(self.style.sky_horizon)
        if cloudiness > 0:
            grey = np.array([0.78, 0.80, 0.82])
            top = top * (1 - cloudiness) + grey * 0.85 * cloudiness
            hor = hor * (1 - cloudiness) + grey * cloudiness
        t = np.clip(rows / max(self.cam.vh / h_img, 0.05), 0, 1)
        self.cv.img[:] = (top[None] * (1 - t[..., None]) + hor[None] * t[..., None]).astype(
            np.float32
        )
        self.cv.lbl[:] = SKY


def _poisson(rng: np.random.Generator, rate: float) -> int:
    return int(rng.poisson(rate)) if rate > 0 else 0
