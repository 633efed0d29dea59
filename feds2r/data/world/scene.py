"""Lay out one street scene and draw it: road, sidewalks, frontages, traffic and street furniture.

All sizes are metres and follow common real dimensions (lane 3.0-3.6 m, car 1.8 x 1.5 x 4.4 m,
bus 2.55 x 3.1 x 12 m, person 1.55-1.9 m, ...). Object counts come from the domain's
:class:`~feds2r.data.world.render.Layout` rates; classes a scene spec demands are placed close to
the camera so that they are clearly visible.
"""

from __future__ import annotations

import math

import numpy as np

from feds2r.data.labels import CLASS_NAMES, class_index
from feds2r.data.world.render import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    Layout,
    Painter,
    SceneSpec,
    _poisson,
)
from feds2r.data.world.styles import EGO, MARKING, VOID

Z_FAR = 180.0


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


class Scene:
    """One sampled street: its cross-section, and the vertical things standing in it."""

    def __init__(self, p: Painter, layout: Layout, spec: SceneSpec) -> None:
        self.p, self.layout, self.spec, self.rng = p, layout, spec, p.rng
        rng = self.rng
        kind = spec.layout
        lo, hi = layout.lanes
        self.lanes = int(rng.integers(lo, hi + 1)) + (2 if kind == "highway" else 0)
        if kind == "unstructured":
            self.lanes = min(self.lanes, 2)
        self.lane_w = float(rng.uniform(3.0, 3.6))
        cam_lane = int(rng.integers(self.lanes // 2, self.lanes))  # drive on the right half
        self.xl = -(cam_lane + rng.uniform(0.35, 0.65)) * self.lane_w
        self.xr = self.xl + self.lanes * self.lane_w
        walk = lambda: float(rng.uniform(*layout.sidewalk))  # noqa: E731
        no_walk = kind in ("highway",) or (kind == "unstructured" and rng.random() < 0.7)
        self.walk_l = 0.0 if no_walk else walk()
        self.walk_r = 0.0 if no_walk else walk()
        self.jitter = 0.6 if kind == "unstructured" else 0.0
        self.phase = rng.uniform(0, 2 * math.pi, size=4)
        self.items: list[tuple[float, object]] = []  # (depth key, draw callable)

    # -- helpers -----------------------------------------------------------------------------
    def edge(self, x: float, z: np.ndarray, k: int) -> np.ndarray:
        """Lateral position of a road edge at depths ``z``; wavy on unstructured roads."""
        if not self.jitter:
            return np.full_like(z, x)
        wave = np.sin(z / 7.0 + self.phase[k]) + 0.5 * np.sin(z / 2.3 + self.phase[k + 1])
        return x + self.jitter * wave

    def add(self, depth: float, fn) -> None:
        self.items.append((depth, fn))

    @staticmethod
    def order(key: str, depth: float, demanded: dict[str, bool]) -> float:
        """Draw key: demanded objects come last, like the subject of a generated image."""
        return -1.0 if demanded.get(key) else depth

    def allowed(self, label: int) -> bool:
        return CLASS_NAMES[label] not in self.layout.absent

    # -- ground ------------------------------------------------------------------------------
    def draw_ground(self) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        z = np.geomspace(cam.z_bottom * 0.6, Z_FAR * 1.5, 24)
        far = np.full_like(z, 400.0)
        verge_label = TERRAIN if self.layout.verge == "terrain" and self.allowed(TERRAIN) else VOID
        verge_mat = "terrain" if verge_label == TERRAIN else "sidewalk"
        p.ground_strip(-far, far, z, verge_label, p.color(verge_mat, 0.9))
        # sidewalks, with a kerb-side grass strip now and then
        if self.walk_l:
            p.ground_strip(
                self.xl - self.walk_l - np.zeros_like(z),
                self.edge(self.xl, z, 0),
                z,
                SIDEWALK,
                p.color("sidewalk"),
            )
        if self.walk_r:
            p.ground_strip(
                self.edge(self.xr, z, 2),
                self.xr + self.walk_r + np.zeros_like(z),
                z,
                SIDEWALK,
                p.color("sidewalk"),
            )
        if self.allowed(TERRAIN) and self.walk_r > 2.5 and rng.random() < 0.3:
            p.ground_strip(
                np.full_like(z, self.xr + 0.3),
                np.full_like(z, self.xr + 1.3),
                z,
                TERRAIN,
                p.color("terrain"),
            )
        road_color = p.color("road")
        p.ground_strip(self.edge(self.xl, z, 0), self.edge(self.xr, z, 2), z, ROAD, road_color)
        if self.spec.layout != "unstructured":
            self.draw_markings()

    def draw_markings(self) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        white = tuple(min(1.0, c * 2.2 + 0.2) for c in p.color("road"))
        quads = []
        z0s = np.arange(cam.z_bottom * 0.6 + rng.uniform(0, 9), 90, 9.0)
        for i in range(1, self.lanes):
            x = self.xl + i * self.lane_w
            for z0 in z0s:
                quads.append(self._flat(x - 0.07, x + 0.07, z0, z0 + 3.0))
        zs = np.array([cam.z_bottom * 0.6, 120.0])
        for x in (self.xl + 0.25, self.xr - 0.25):
            quads.append(self._flat(x - 0.07, x + 0.07, zs[0], zs[1]))
        if rng.random() < 0.25:  # a zebra crossing
            zc = float(rng.uniform(8, 25))
            for x in np.arange(self.xl + 0.3, self.xr - 0.3, 1.0):
                quads.append(self._flat(x, x + 0.5, zc, zc + 3.0))
        p.cv.polys(quads, MARKING, white, 50.0)

    def _flat(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
        xs = np.array([x0, x1, x1, x0])
        zs = np.array([z0, z0, z1, z1])
        return self.p.cam.project(xs, np.zeros(4), zs)

    # -- frontages -----------------------------------------------------------------------------
    def plan_frontages(self) -> None:
        rng, layout = self.rng, self.layout
        sides = dict(layout.sides)
        if self.spec.layout == "highway":
            sides = {"vegetation": 0.4, "terrain": 0.3, "fence": 0.2, "open": 0.1}
        elif self.spec.layout == "suburban":
            sides = {**sides, "vegetation": sides.get("vegetation", 0) + 0.3}
        elif self.spec.layout == "unstructured":
            sides = {
                **sides,
                "open": sides.get("open", 0) + 0.2,
                "terrain": sides.get("terrain", 0) + 0.2,
            }
        if not self.allowed(TERRAIN):
            sides.pop("terrain", None)
        for sign, front in ((-1, self.xl - self.walk_l), (1, self.xr + self.walk_r)):
            z = self.p.cam.z_bottom * 0.5
            while z < Z_FAR * 0.8:
                length = float(rng.uniform(8, 35))
                kind = _choice(rng, sides)
                self.frontage(kind, sign, front, z, z + length)
                z += length

    def frontage(self, kind: str, sign: int, front: float, z0: float, z1: float) -> None:
        rng = self.rng
        if kind == "building":
            setback = float(rng.uniform(0, 2.0))
            h = float(rng.uniform(*self.layout.building_height))
            self.add(z1, lambda: self.building(front + sign * setback, sign, z0, z1, h))
        elif kind in ("wall", "fence"):
            label = WALL if kind == "wall" else FENCE
            h = float(rng.uniform(0.8, 2.6))
            if rng.random() < 0.6:  # something behind it
                hb = float(rng.uniform(*self.layout.building_height))
                back = front + sign * float(rng.uniform(4, 12))
                if rng.random() < 0.5:
                    self.add(z1 + 0.5, lambda: self.building(back, sign, z0, z1, hb))
                else:
                    self.trees(back, z0, z1)
            self.add(z1, lambda: self.barrier(front + sign * 0.2, z0, z1, h, label, kind))
        elif kind == "vegetation":
            self.trees(front + sign * float(rng.uniform(0.5, 3)), z0, z1)
            if rng.random() < 0.4:
                h = float(rng.uniform(0.8, 2.0))
                self.add(
                    z1, lambda: self.barrier(front + sign * 0.3, z0, z1, h, VEGETATION, "hedge")
                )
        elif kind == "terrain" and rng.random() < 0.4:
            self.trees(front + sign * float(rng.uniform(4, 15)), z0, z1, density=0.3)

    def building(self, x: float, sign: int, z0: float, z1: float, h: float) -> None:
        p, cam = self.p, self.p.cam
        color = p.color("building")
        end = np.array([[x, 0, z0], [x + sign * 12, 0, z0], [x + sign * 12, h, z0], [x, h, z0]])
        p.quad(end, BUILDING, color, z0)
        face = np.array([[x, 0, z0], [x, 0, z1], [x, h, z1], [x, h, z0]])
        p.quad(face, BUILDING, tuple(c * p.side_shade() for c in color), (z0 + z1) / 2)
        # windows, image only, projected from a grid on the facade
        if cam.scale(z0) * 1.2 < 1.5:
            return
        s = np.arange(z0 + 1.0, z1 - 1.5, 3.0)
        t = np.arange(1.2 if self.rng.random() < 0.5 else 3.5, h - 1.5, 3.2)
        if s.size == 0 or t.size == 0:
            return
        S, T = np.meshgrid(s, t)
        S, T = S.ravel(), T.ravel()
        xs = np.full((S.size, 4), x)
        ys = np.stack([T, T, T + 1.5, T + 1.5], 1)
        zs = np.stack([S, S + 1.3, S + 1.3, S], 1)
        uv = cam.project(xs, ys, zs)
        night = self.spec.time == "night"
        glass = p.color("glass")
        lit = (0.95, 0.8, 0.45)
        quads = list(uv)
        if night:
            on = self.rng.random(len(quads)) < 0.3
            p.cv.polys([q for q, o in zip(quads, on, strict=True) if o], None, lit, 0)
            p.cv.polys([q for q, o in zip(quads, on, strict=True) if not o], None, glass, 0)
        else:
            p.cv.polys(quads, None, glass, 0)

    def barrier(self, x: float, z0: float, z1: float, h: float, label: int, kind: str) -> None:
        p = self.p
        mat = {"wall": "wall", "fence": "fence", "hedge": "vegetation"}[kind]
        color = p.color(mat)
        face = np.array([[x, 0, z0], [x, 0, z1], [x, h, z1], [x, h, z0]])
        p.quad(face, label, tuple(c * p.side_shade() for c in color), (z0 + z1) / 2)
        if kind == "fence":  # posts, image only
            zs = np.arange(z0, z1, 2.0)
            posts = [
                p.cam.project(
                    np.full(4, x), np.array([0, 0, h, h]), np.array([zz, zz + 0.15, zz + 0.15, zz])
                )
                for zz in zs
            ]
            p.cv.polys(posts, None, tuple(c * 0.6 for c in color), 0)

    def trees(self, x: float, z0: float, z1: float, density: float = 1.0) -> None:
        rng = self.rng
        z = z0 + float(rng.uniform(1, 6))
        while z < z1:
            if rng.random() < density:
                zz, xx = z, x + float(rng.normal(0, 0.5))
                self.add(zz, lambda xx=xx, zz=zz: self.tree(xx, zz))
            z += float(rng.uniform(5, 10))

    def tree(self, x: float, z: float) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        h = float(rng.uniform(4, 9))
        r = float(rng.uniform(1.5, 3.2))
        p.rect(x - 0.15, x + 0.15, 0, h - r, z, VEGETATION, p.color("fence", 0.7))
        green = p.color("vegetation")
        for _ in range(3):
            cx = x + float(rng.normal(0, r * 0.3))
            cy = h - r + float(rng.normal(0, r * 0.25))
            uv = p.point(cx, cy, z)
            s = cam.scale(z)
            p.cv.ellipse(
                uv,
                (r * s * rng.uniform(0.6, 1.0), r * s * rng.uniform(0.5, 0.9)),
                VEGETATION,
                tuple(c * rng.uniform(0.8, 1.1) for c in green),
                z,
            )

    # -- traffic ---------------------------------------------------------------------------------
    def plan_traffic(self, must: set[int]) -> None:
        rng, rates = self.rng, self.layout.rates
        n = {
            name: _poisson(rng, rates.get(name, 0.0))
            for name in (
                "car",
                "parked_car",
                "truck",
                "bus",
                "train",
                "person",
                "rider_bicycle",
                "rider_motorcycle",
                "bicycle",
                "motorcycle",
                "pole",
                "traffic_light",
                "traffic_sign",
            )
        }
        if self.spec.layout == "highway":
            n["person"] = n["parked_car"] = n["bicycle"] = 0
            n["rider_bicycle"] = 0
        near = {}
        for label, key in (
            (CAR, "car"),
            (TRUCK, "truck"),
            (BUS, "bus"),
            (TRAIN, "train"),
            (PERSON, "person"),
            (POLE, "pole"),
            (LIGHT, "traffic_light"),
            (SIGN, "traffic_sign"),
        ):
            if label in must:
                n[key], near[key] = max(n[key], 1), True
        if RIDER in must:
            if n["rider_bicycle"] + n["rider_motorcycle"] == 0:
                n["rider_bicycle" if rng.random() < 0.6 else "rider_motorcycle"] = 1
            near["rider_bicycle"] = near["rider_motorcycle"] = True
        for label, key in ((BICYCLE, "bicycle"), (MOTORCYCLE, "motorcycle")):
            if label in must:
                n[key], near[key] = max(n[key], 1), True
        for label, key in ((TRUCK, "truck"), (TRAIN, "train"), (BUS, "bus"), (CAR, "car")):
            if not self.allowed(label):
                n[key] = 0
                if key == "car":
                    n["parked_car"] = 0

        def depth(key: str, x: float, lo: float = 5.0, hi: float = 80.0) -> float:
            # objects spread evenly along the street; demanded ones stand close to the camera,
            # but far enough that lateral position x is inside the middle 80 % of the frame
            if near.get(key):
                cam = self.p.cam
                in_view = abs(x) * cam.f / (0.4 * cam.w_img)
                if key in ("pole", "traffic_light", "traffic_sign"):  # tall: keep the top in view
                    in_view = max(in_view, cam.f * (5.5 - cam.height) / (0.8 * cam.vh))
                return max(float(rng.uniform(7, 20)), in_view)
            return float(rng.uniform(lo, hi))

        lane_x = lambda i: self.xl + (i + 0.5) * self.lane_w  # noqa: E731
        occupied: list[tuple[float, float, float]] = []  # (x, z0, z1) of vehicles in lanes

        def free(x: float, z0: float, z1: float) -> bool:
            return all(
                abs(x - ox) > 1.5 or z1 < oz0 - 1 or z0 > oz1 + 1 for ox, oz0, oz1 in occupied
            )

        def place(key: str, length: float, lanes: list[int]) -> tuple[float, float] | None:
            for _ in range(6):
                x = lane_x(int(rng.choice(lanes))) + float(rng.normal(0, 0.2))
                z = depth(key, x)
                if abs(x) < self.lane_w / 2 + 0.5:  # the lane ahead: keep a driving gap
                    z = max(z, 9.0 + length * 0.3)
                if free(x, z, z + length):
                    occupied.append((x, z, z + length))
                    return x, z
            return None

        all_lanes = list(range(self.lanes))
        for key, length, draw in (
            ("train", 28.0, self.train),
            ("bus", 12.0, self.bus),
            ("truck", 9.0, self.truck),
            ("car", 4.4, self.car),
        ):
            lanes = [self.lanes // 2] if key == "train" else all_lanes
            for _ in range(n[key]):
                spot = place(key, length, lanes)
                if spot:
                    oncoming = (
                        spot[0] < self.xl + self.lanes * self.lane_w / 2 - 0.01 and self.lanes > 1
                    )
                    oncoming = oncoming and spot[0] < 0 and key != "train"
                    self.add(
                        self.order(key, spot[1], near),
                        lambda s=spot, d=draw, o=oncoming: d(s[0], s[1], o),
                    )
        for _ in range(n["parked_car"]):
            side = -1 if rng.random() < 0.4 else 1
            x = (self.xl + 1.1) if side < 0 else (self.xr - 1.1)
            z = depth("parked_car", x)
            if free(x, z, z + 4.4):
                occupied.append((x, z, z + 4.4))
                self.add(z, lambda x=x, z=z: self.car(x, z, False))
        for key in ("rider_bicycle", "rider_motorcycle"):
            for _ in range(n[key]):
                x = (
                    self.xr - float(rng.uniform(0.6, 1.6))
                    if rng.random() < 0.6
                    else lane_x(int(rng.choice(all_lanes)))
                )
                z = depth(key, x, 4, 50)
                view = "rear" if rng.random() < 0.6 else "side"
                kind = key.split("_")[1]
                self.add(
                    self.order(key, z, near),
                    lambda x=x, z=z, k=kind, v=view: self.twowheeler(x, z, k, v, True),
                )
        for key in ("bicycle", "motorcycle"):
            for _ in range(n[key]):
                x = (
                    self.sidewalk_x(0.3, 0.9)
                    if key == "bicycle"
                    else (self.xr - 0.6 if rng.random() < 0.7 else self.xl + 0.6)
                )
                z = depth(key, x, 4, 40)
                self.add(
                    self.order(key, z, near),
                    lambda x=x, z=z, k=key: self.twowheeler(x, z, k, "side", False),
                )
        for _ in range(n["person"]):
            crossing = rng.random() < 0.15
            x = float(rng.uniform(self.xl, self.xr)) if crossing else self.sidewalk_x(0.1, 0.95)
            z = depth("person", x, 4, 50)
            self.add(self.order("person", z, near), lambda x=x, z=z: self.person(x, z, PERSON))
        for key in ("pole", "traffic_light", "traffic_sign"):
            for _ in range(n[key]):
                side = 1 if rng.random() < 0.65 else -1
                x = (self.xr + 0.5) if side > 0 else (self.xl - 0.5)
                z = depth(key, x, 5, 80)
                self.add(
                    self.order(key, z, near), lambda x=x, z=z, k=key, s=side: self.pole(x, z, k, s)
                )

    def sidewalk_x(self, lo: float, hi: float) -> float:
        rng = self.rng
        right = rng.random() < 0.6
        if right:
            w = self.walk_r or 1.5
            return self.xr + w * float(rng.uniform(lo, hi))
        w = self.walk_l or 1.5
        return self.xl - w * float(rng.uniform(lo, hi))

    def shadow(self, x: float, z: float, w: float, length: float) -> None:
        p = self.p
        quad = self._flat(x - w / 2 * 1.05, x + w / 2 * 1.05, z - 0.2, z + length)
        p.cv.poly(quad, None, (0.08, 0.08, 0.09), 0)

    def wheels(self, x: float, z: float, w: float, label: int, r: float = 0.35) -> None:
        p = self.p
        dark = (0.05, 0.05, 0.05)
        for sx in (-1, 1):
            outer = x + sx * w / 2
            inner = outer - 0.25 * sx
            corners = np.array(
                [
                    [inner, 0, z + 0.3],
                    [outer, 0, z + 0.3],
                    [outer, 2 * r, z + 0.3],
                    [inner, 2 * r, z + 0.3],
                ]
            )
            p.quad(corners, label, dark, z)

    def lights(self, x: float, z: float, w: float, y: float, oncoming: bool, label: int) -> None:
        p, cam = self.p, self.p.cam
        color = (1.0, 0.95, 0.8) if oncoming else (0.85, 0.05, 0.05)
        quads = []
        for sx in (-1, 1):
            x0 = x + sx * (w / 2 - 0.15)
            quads.append(
                cam.project(
                    np.array([x0 - 0.12, x0 + 0.12, x0 + 0.12, x0 - 0.12]),
                    np.array([y, y, y + 0.15, y + 0.15]),
                    np.full(4, z),
                )
            )
            uv = p.point(x0, y, z)
            p.cv.lights.append((float(uv[0]), float(uv[1]), min(0.15 * cam.scale(z), 12.0), color))
        p.cv.polys(quads, None, color, 0)

    def car(self, x: float, z: float, oncoming: bool) -> None:
        p, rng = self.p, self.rng
        w, length = float(rng.uniform(1.7, 1.95)), float(rng.uniform(3.9, 4.8))
        h = float(rng.uniform(1.4, 1.65))
        color = p.color("car")
        self.shadow(x, z, w, length)
        p.box(x, z + length * 0.3, w * 0.86, h, length * 0.42, CAR, p.color("glass"), y0=0.95)
        p.box(x, z, w, 1.0, length, CAR, color, y0=0.3)
        self.wheels(x, z, w, CAR)
        self.lights(x, z, w, 0.75, oncoming, CAR)

    def truck(self, x: float, z: float, oncoming: bool) -> None:
        p, rng = self.p, self.rng
        w, h, length = 2.5, float(rng.uniform(2.8, 3.8)), float(rng.uniform(6, 9))
        self.shadow(x, z, w, length + 2)
        p.box(x, z + length, w * 0.95, h * 0.8, 2.2, TRUCK, p.color("truck"), y0=0.4)
        p.box(x, z, w, h, length, TRUCK, p.color("truck"), y0=0.5)
        self.wheels(x, z, w, TRUCK, 0.5)
        self.lights(x, z, w, 0.7, oncoming, TRUCK)

    def bus(self, x: float, z: float, oncoming: bool) -> None:
        p = self.p
        w, h, length = 2.55, 3.1, 12.0
        color = p.color("bus")
        self.shadow(x, z, w, length)
        p.box(x, z, w, h, length, BUS, color, y0=0.3)
        self.windows_band(x, z, w, length, 1.3, 2.6)
        self.wheels(x, z, w, BUS, 0.5)
        self.lights(x, z, w, 0.8, oncoming, BUS)

    def train(self, x: float, z: float, oncoming: bool) -> None:
        p = self.p
        w, h, length = 2.65, 3.6, 28.0
        self.shadow(x, z, w, length)
        p.box(x, z, w, h, length, TRAIN, p.color("train"), y0=0.4)
        self.windows_band(x, z, w, length, 1.4, 2.8)
        # a pantograph pole above a tram is labelled pole in Cityscapes-style data
        p.rect(x - 0.05, x + 0.05, h, h + 1.2, z + 5, POLE, p.color("pole"))

    def windows_band(
        self, x: float, z: float, w: float, length: float, y0: float, y1: float
    ) -> None:
        p = self.p
        glass = p.color("glass")
        p.rect(x - w / 2 + 0.2, x + w / 2 - 0.2, y0, y1, z, None, glass)
        side_x = x - w / 2 if x - w / 2 > 0 else (x + w / 2 if x + w / 2 < 0 else None)
        if side_x is not None:
            band = np.array(
                [
                    [side_x, y0, z + 0.5],
                    [side_x, y0, z + length - 0.5],
                    [side_x, y1, z + length - 0.5],
                    [side_x, y1, z + 0.5],
                ]
            )
            p.quad(band, None, glass, z)

    def person(self, x: float, z: float, label: int, y0: float = 0.0, seated: bool = False) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        h = float(rng.uniform(1.55, 1.9))
        clothes, legs = p.color("clothes"), p.color("clothes", 0.7)
        hip = y0 + (0.0 if seated else h * 0.47)
        if not seated:
            for dx in (-0.12, 0.08):
                p.rect(x + dx, x + dx + 0.14, y0, hip, z, label, legs)
        else:  # legs hanging beside the saddle
            for dx in (-0.25, 0.1):
                p.rect(x + dx, x + dx + 0.15, y0 - 0.45, y0 + 0.05, z, label, legs)
        top = hip + h * 0.33
        torso = np.array(
            [[x - 0.2, hip, z], [x + 0.2, hip, z], [x + 0.23, top, z], [x - 0.23, top, z]]
        )
        p.quad(torso, label, clothes, z)
        head = p.point(x, top + 0.12, z)
        s = cam.scale(z)
        p.cv.ellipse(head, (0.1 * s, 0.13 * s), label, p.color("skin"), z)

    def twowheeler(self, x: float, z: float, kind: str, view: str, ridden: bool) -> None:
        p, cam = self.p, self.p.cam
        label = BICYCLE if kind == "bicycle" else MOTORCYCLE
        color = p.color("twowheeler")
        dark = (0.06, 0.06, 0.06)
        r = 0.34 if kind == "bicycle" else 0.3
        s = cam.scale(z)
        if view == "rear":
            p.rect(x - 0.05, x + 0.05, 0, 2 * r, z, label, dark)
            if kind == "motorcycle":
                body = np.array(
                    [
                        [x - 0.3, 0.35, z],
                        [x + 0.3, 0.35, z],
                        [x + 0.25, 0.95, z],
                        [x - 0.25, 0.95, z],
                    ]
                )
                p.quad(body, label, color, z)
            p.rect(x - 0.32, x + 0.32, 1.0, 1.06, z + 1.0, label, dark)  # handlebar
        else:
            half = 0.55 if kind == "bicycle" else 0.7
            centers = cam.project(
                np.array([x - half, x + half]), np.array([r, r]), np.array([z, z])
            )
            thick = max(int(round(0.07 * s)), 1)
            for c in centers:
                if kind == "bicycle":
                    p.cv.ring(c, r * s, thick, label, dark, z)
                else:
                    p.cv.ellipse(c, (r * s, r * s), label, dark, z)
            if kind == "bicycle":
                pts = cam.project(
                    np.array([x - half, x, x + half, x - 0.15, x + 0.45]),
                    np.array([r, r, r, 0.95, 1.0]),
                    np.full(5, z),
                )
                t = max(int(round(0.05 * s)), 1)
                for a, b in ((0, 1), (1, 3), (3, 0), (1, 4), (4, 2), (3, 4)):
                    p.cv.segment(pts[a], pts[b], t, label, color, z)
            else:
                body = cam.project(
                    np.array([x - 0.6, x + 0.7, x + 0.5, x - 0.3]),
                    np.array([0.35, 0.4, 1.0, 0.9]),
                    np.full(4, z),
                )
                p.cv.poly(body, label, color, z)
        if ridden:
            self.person(x, z - 0.01, RIDER, y0=0.95 if kind == "bicycle" else 0.8, seated=True)

    def pole(self, x: float, z: float, key: str, side: int) -> None:
        p, rng = self.p, self.rng
        pole_color = p.color("pole")
        if key == "traffic_sign":
            h = float(rng.uniform(2.6, 3.4))
        elif key == "traffic_light":
            h = float(rng.uniform(3.5, 5.5))
        else:
            h = float(rng.uniform(5, 9))
        w = 0.12 if key == "traffic_sign" else 0.2
        p.rect(x - w / 2, x + w / 2, 0, h, z, POLE, pole_color)
        if key == "traffic_sign":
            self.sign(x, z, h)
        elif key == "traffic_light":
            if rng.random() < 0.4:  # on a mast arm over the road
                x1 = x - side * float(rng.uniform(2, 5))
                p.rect(min(x, x1), max(x, x1), h - 0.15, h, z, POLE, pole_color)
                self.traffic_light(x1, z, h - 0.15)
            else:
                self.traffic_light(x, z, h)
        elif rng.random() < 0.6:  # a street lamp's arm
            x1 = x - side * 1.5
            p.rect(min(x, x1), max(x, x1), h - 0.1, h, z, POLE, pole_color)
            uv = p.point(x1, h - 0.2, z)
            p.cv.lights.append(
                (float(uv[0]), float(uv[1]), min(0.6 * p.cam.scale(z), 16.0), (1.0, 0.85, 0.55))
            )
        if rng.random() < 0.25 and key != "traffic_sign":  # an extra sign on the same pole
            self.sign(x, z, min(h, 2.8))

    def sign(self, x: float, z: float, top: float) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        color = p.color("sign")
        size = float(rng.uniform(0.5, 0.85))
        shape = int(rng.integers(3))
        cy = top - size / 2
        if shape == 0:
            uv = p.point(x, cy, z)
            p.cv.ellipse(uv, (size / 2 * cam.scale(z), size / 2 * cam.scale(z)), SIGN, color, z)
        elif shape == 1:
            tri = np.array(
                [
                    [x - size / 2, cy + size / 2, z],
                    [x + size / 2, cy + size / 2, z],
                    [x, cy - size / 2, z],
                ]
            )
            p.cv.poly(cam.project(tri[:, 0], tri[:, 1], tri[:, 2]), SIGN, color, z)
        else:
            p.rect(x - size / 2, x + size / 2, cy - size / 2.5, cy + size / 2.5, z, SIGN, color)

    def traffic_light(self, x: float, z: float, top: float) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        p.rect(x - 0.17, x + 0.17, top - 0.95, top, z, LIGHT, p.color("light"))
        on = int(rng.integers(3))
        s = cam.scale(z)
        lamp_colors = ((0.95, 0.1, 0.05), (0.95, 0.7, 0.05), (0.1, 0.9, 0.3))
        for i in range(3):
            uv = p.point(x, top - 0.17 - 0.3 * i, z)
            color = lamp_colors[i] if i == on else (0.12, 0.12, 0.1)
            p.cv.ellipse(uv, (0.1 * s, 0.1 * s), None, color, z)
            if i == on:
                p.cv.lights.append((float(uv[0]), float(uv[1]), min(0.25 * s, 8.0), lamp_colors[i]))

    # -- whole scene -----------------------------------------------------------------------------
    def skyline(self) -> None:
        p, rng, cam = self.p, self.rng, self.p.cam
        z = Z_FAR
        x = -z * 1.2
        urban = self.spec.layout in ("urban", "suburban")
        while x < z * 1.2:
            w = float(rng.uniform(8, 40))
            if urban and rng.random() < 0.6:
                h = float(rng.uniform(10, 45))
                p.rect(x, x + w, 0, h, z, BUILDING, tuple(c * 0.9 for c in p.color("building")))
            else:
                h = float(rng.uniform(5, 18))
                uv = p.point(x + w / 2, 0.0, z)
                s = cam.scale(z)
                p.cv.ellipse(
                    uv, (w / 2 * s * 1.2, h * s), VEGETATION, p.color("vegetation", 0.85), z
                )
            x += w

    def ego_hood(self) -> None:
        frac = self.layout.ego_hood
        if frac <= 0:
            return
        p = self.p
        h_img, w_img = p.cv.lbl.shape
        top = h_img * (1 - frac)
        xs = np.linspace(-0.05, 1.05, 24) * w_img
        ys = top + (h_img * frac * 0.6) * ((xs / w_img - 0.5) * 2) ** 2
        pts = np.concatenate(
            [np.stack([xs, ys], 1), [[w_img * 1.05, h_img + 2], [-0.05 * w_img, h_img + 2]]]
        )
        p.cv.poly(pts, EGO, p.color("ego"), 0.5)

    def draw(self, must: set[int]) -> None:
        self.skyline()
        self.draw_ground()
        self.plan_frontages()
        self.plan_traffic(must)
        for _, fn in sorted(self.items, key=lambda item: -item[0]):
            fn()
        self.ego_hood()


def required_labels(spec: SceneSpec) -> set[int]:
    return {class_index(name) for name in spec.classes}
