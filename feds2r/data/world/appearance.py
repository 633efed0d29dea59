"""Turn a drawn scene into a photograph of a domain: texture, time of day, weather, camera."""

from __future__ import annotations

import cv2
import numpy as np

from feds2r.data.world.render import _TEXTURE, ROAD, SIDEWALK, SKY, TERRAIN, Canvas, SceneSpec
from feds2r.data.world.styles import VOID, Style


def _lowfreq(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    h, w = size
    small = rng.standard_normal((max(cells // 2, 2), max(cells, 2)), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def compose(
    cv: Canvas, spec: SceneSpec, style: Style, rng: np.random.Generator, jpeg: bool = True
) -> np.ndarray:
    """Return the finished ``(H, W, 3)`` uint8 RGB image of a drawn canvas."""
    img, lbl, size = cv.img, cv.lbl, cv.lbl.shape
    h, w = size
    scale = w / 512.0
    # surface texture: fine grain plus coarse blotches, per-class amplitude
    amp = _TEXTURE[lbl] * style.texture
    fine = rng.standard_normal(size, dtype=np.float32)
    coarse = _lowfreq(rng, size, max(int(24 / style.texture_scale), 3))
    img *= (1.0 + amp * (0.5 * fine + 0.7 * coarse))[..., None]

    # time of day
    if spec.time == "dusk":
        img *= np.array([1.0, 0.78, 0.62], np.float32) * 0.7
    elif spec.time == "night":
        img *= 0.3
        img[lbl == SKY] = np.array([0.04, 0.05, 0.09], np.float32)

    # weather
    if spec.weather == "overcast":
        img[:] = 0.8 * img + 0.2 * img.mean()
    elif spec.weather == "fog":
        visibility = float(rng.uniform(25, 70))
        t = np.exp(-cv.depth / visibility)[..., None]
        fog = np.array([0.72, 0.74, 0.76], np.float32) * (0.2 if spec.time == "night" else 1.0)
        img[:] = img * t + fog * (1 - t)
    elif spec.weather == "rain":
        img *= 0.75
        img[:] = 0.7 * img + 0.3 * img.mean(axis=2, keepdims=True)
        t = np.exp(-cv.depth / 150.0)[..., None]
        img[:] = img * t + 0.55 * (1 - t)
        streaks = np.zeros(size, np.float32)
        n = int(120 * scale * scale) + 40
        x0 = rng.uniform(0, w, n)
        y0 = rng.uniform(0, h, n)
        ln = rng.uniform(6, 18, n) * scale
        for xa, ya, la in zip(x0, y0, ln, strict=True):
            cv2.line(streaks, (int(xa), int(ya)), (int(xa + 0.25 * la), int(ya + la)), 0.35, 1)
        img += streaks[..., None]
    elif spec.weather == "snow":
        ground = np.isin(lbl, (ROAD, SIDEWALK, TERRAIN, VOID))
        cover = np.clip(_lowfreq(rng, size, 20) * 0.6 + 0.55, 0, 0.85) * ground
        white = np.array([0.88, 0.9, 0.94], np.float32) * (0.25 if spec.time == "night" else 1.0)
        img[:] = img * (1 - cover[..., None]) + white * cover[..., None]
        img[:] = 0.85 * img + 0.15 * white
        n = int(300 * scale * scale) + 60
        ys = rng.integers(0, h, n)
        xs = rng.integers(0, w, n)
        img[ys, xs] = white

    # light sources glow in the dark
    if spec.time in ("night", "dusk") and cv.lights:
        glow = np.zeros((h // 4 + 1, w // 4 + 1, 3), np.float32)
        gain = 1.0 if spec.time == "night" else 0.4
        for u, v, r, color in cv.lights:
            cv2.circle(
                glow,
                (int(u / 4), int(v / 4)),
                max(int(r / 4), 1),
                tuple(float(c) * gain for c in color),
                -1,
            )
        glow = cv2.GaussianBlur(glow, (0, 0), 2.0)
        img += cv2.resize(glow, (w, h), interpolation=cv2.INTER_LINEAR)

    # colour grading of the domain's camera or renderer: white balance, saturation and contrast
    # are linear, so they fold into one 3x3 transform; gamma and posterisation into one LUT.
    sat = style.grade_saturation
    m_sat = sat * np.eye(3, dtype=np.float32) + (1 - sat) / 3.0
    matrix = style.contrast * m_sat @ np.diag(np.array(style.tint, np.float32))
    offset = 0.5 * (1 - style.contrast)
    affine = np.concatenate([matrix, np.full((3, 1), offset, np.float32)], axis=1)
    img = cv2.transform(img, affine)
    if style.bloom:
        bright = np.clip(img - 0.7, 0, None)
        img += style.bloom * cv2.GaussianBlur(bright, (0, 0), 4 * scale + 0.5)
    if style.vignette:
        yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        img *= (1 - style.vignette * 0.5 * (xx * xx + yy * yy))[..., None]
    if style.blur:
        img = cv2.GaussianBlur(img, (0, 0), style.blur * scale)
    if style.noise:  # luminance noise; the grain field shifted so it does not follow textures
        shift = (int(rng.integers(1, h)), int(rng.integers(1, w)))
        img += (np.roll(fine, shift, axis=(0, 1)) * style.noise)[..., None]
    out = cv2.convertScaleAbs(img, alpha=255.0)  # saturating float -> uint8
    levels = np.arange(256, dtype=np.float32) / 255.0
    if style.gamma != 1.0:
        levels = levels ** (1.0 / style.gamma)
    if style.posterize:
        levels = np.round(levels * style.posterize) / style.posterize
    out = cv2.LUT(out, np.clip(levels * 255 + 0.5, 0, 255).astype(np.uint8))
    if jpeg and style.jpeg_quality:
        ok, buf = cv2.imencode(
            ".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality]
        )
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)
