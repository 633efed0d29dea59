"""Appearance of each domain of the built-in world: palette, textures, lighting and sensor.

A style turns a rendered scene (flat-coloured polygons, a label map and a depth map) into an
image. Every domain shares the same material base colours (asphalt is grey, vegetation green, ...)
and shifts them in its own way, as two cameras, renderers or countries do; the per-domain numbers
and their reasons are in ``docs/world.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Internal scene labels: the 19 train ids plus three kinds of unlabelled pixels that each format
# writes with its own native id (ego vehicle, painted lane markings, other void).
EGO, MARKING, VOID = 19, 20, 21
NUM_SCENE_LABELS = 22


@dataclass(frozen=True)
class Style:
    """How a domain looks. Colours are RGB in 0..1; every field has a fixed value per domain."""

    name: str
    hue_shift: float = 0.0  # degrees added to every material's hue
    saturation: float = 1.0  # multiplier on material saturation
    brightness: float = 1.0  # multiplier on material value
    instance_jitter: float = 0.08  # std of per-object colour variation
    texture: float = 1.0  # multiplier on per-class texture noise amplitude
    texture_scale: float = 1.0  # >1: coarser texture blobs
    shading: float = 0.35  # how much darker faces turned from the sun are
    contrast: float = 1.0
    gamma: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white balance multipliers
    grade_saturation: float = 1.0  # global saturation after grading
    blur: float = 0.0  # Gaussian blur sigma in pixels at 512 px width
    noise: float = 0.0  # sensor noise std (0..1 scale)
    jpeg_quality: int = 0  # >0: encode/decode once at this quality (compression artefacts)
    vignette: float = 0.0
    sky_top: tuple[float, float, float] = (0.35, 0.55, 0.85)
    sky_horizon: tuple[float, float, float] = (0.75, 0.82, 0.90)
    bloom: float = 0.0  # glow around bright pixels (renderers, generated images)
    posterize: int = 0  # >0: quantise colours to this many levels (flat-shaded renderers)


STYLES: dict[str, Style] = {
    # GTA5: a game engine in sunny Los Santos. Saturated, warm, high contrast, sharp and clean.
    "gta5-like": Style(
        name="gta5-like",
        hue_shift=6.0,
        saturation=1.35,
        brightness=1.05,
        instance_jitter=0.10,
        texture=0.7,
        texture_scale=1.6,
        shading=0.45,
        contrast=1.25,
        gamma=0.95,
        tint=(1.08, 1.0, 0.88),
        grade_saturation=1.25,
        sky_top=(0.30, 0.55, 0.95),
        sky_horizon=(0.80, 0.85, 0.95),
        bloom=0.15,
    ),
    # SYNTHIA: a simpler renderer; flat-shaded, low-detail textures, cool light, cartoon-like.
    "synthia-like": Style(
        name="synthia-like",
        hue_shift=-10.0,
        saturation=0.9,
        brightness=1.1,
        instance_jitter=0.05,
        texture=0.35,
        texture_scale=0.7,
        shading=0.25,
        contrast=0.9,
        gamma=1.1,
        tint=(0.92, 1.0, 1.1),
        grade_saturation=0.95,
        sky_top=(0.55, 0.70, 0.90),
        sky_horizon=(0.85, 0.90, 0.95),
        posterize=24,
    ),
    # Synscapes: physically based rendering made to look like Cityscapes; neutral, lens effects.
    "synscapes-like": Style(
        name="synscapes-like",
        hue_shift=0.0,
        saturation=1.05,
        brightness=1.0,
        instance_jitter=0.08,
        texture=0.9,
        texture_scale=1.0,
        shading=0.4,
        contrast=1.1,
        gamma=1.0,
        tint=(1.0, 1.0, 1.02),
        grade_saturation=1.05,
        blur=0.5,
        vignette=0.35,
        bloom=0.25,
    ),
    # Cityscapes: German cities, overcast-leaning, a car-mounted automotive camera with a greenish
    # cast, some blur and sensor noise.
    "cityscapes-like": Style(
        name="cityscapes-like",
        hue_shift=4.0,
        saturation=0.7,
        brightness=0.9,
        instance_jitter=0.10,
        texture=1.2,
        texture_scale=1.0,
        shading=0.2,
        contrast=0.95,
        gamma=1.05,
        tint=(0.95, 1.04, 0.94),
        grade_saturation=0.75,
        blur=0.8,
        noise=0.025,
        sky_top=(0.62, 0.68, 0.74),
        sky_horizon=(0.82, 0.84, 0.86),
    ),
    # BDD100K: US dash cams behind the windshield; wide angle, JPEG, bluish, hazy, varied times.
    "bdd-like": Style(
        name="bdd-like",
        hue_shift=-6.0,
        saturation=0.8,
        brightness=0.95,
        instance_jitter=0.12,
        texture=1.3,
        texture_scale=1.2,
        shading=0.3,
        contrast=0.85,
        gamma=1.0,
        tint=(0.93, 0.98, 1.08),
        grade_saturation=0.85,
        blur=1.0,
        noise=0.03,
        jpeg_quality=55,
        vignette=0.2,
        sky_top=(0.50, 0.62, 0.80),
        sky_horizon=(0.80, 0.84, 0.90),
    ),
    # Mapillary Vistas: crowd-sourced phones and action cams worldwide; bright, varied.
    "mapillary-like": Style(
        name="mapillary-like",
        hue_shift=2.0,
        saturation=1.0,
        brightness=1.05,
        instance_jitter=0.14,
        texture=1.1,
        texture_scale=0.9,
        shading=0.35,
        contrast=1.05,
        gamma=0.95,
        tint=(1.02, 1.0, 0.98),
        grade_saturation=1.0,
        blur=0.6,
        noise=0.02,
        jpeg_quality=70,
        vignette=0.1,
    ),
    # IDD: Indian roads; dusty, warm haze, bright sun, strong texture, many two-wheelers.
    "idd-like": Style(
        name="idd-like",
        hue_shift=10.0,
        saturation=0.75,
        brightness=1.0,
        instance_jitter=0.15,
        texture=1.4,
        texture_scale=1.3,
        shading=0.3,
        contrast=0.85,
        gamma=0.95,
        tint=(1.08, 1.02, 0.88),
        grade_saturation=0.8,
        blur=0.7,
        noise=0.03,
        sky_top=(0.70, 0.72, 0.72),
        sky_horizon=(0.88, 0.86, 0.80),
    ),
    # ACDC: Zurich-area drives in fog, night, rain and snow; the weather is in the scene spec,
    # the camera is a GoPro (wide, sharp-ish, noisy in the dark).
    "acdc-like": Style(
        name="acdc-like",
        hue_shift=0.0,
        saturation=0.75,
        brightness=0.9,
        instance_jitter=0.10,
        texture=1.2,
        shading=0.2,
        contrast=0.95,
        gamma=1.0,
        tint=(0.98, 1.0, 1.02),
        grade_saturation=0.8,
        blur=0.6,
        noise=0.04,
        sky_top=(0.60, 0.65, 0.70),
        sky_horizon=(0.80, 0.82, 0.84),
    ),
    # Stand-in for a text-to-image diffusion model's output: smooth, over-saturated, teal-orange
    # graded, glowing, no sensor noise. Neither a client's style nor a test domain's.
    "generated": Style(
        name="generated",
        hue_shift=-18.0,
        saturation=1.5,
        brightness=1.05,
        instance_jitter=0.2,
        texture=0.25,
        texture_scale=2.5,
        shading=0.5,
        contrast=1.3,
        gamma=0.9,
        tint=(1.1, 0.98, 0.9),
        grade_saturation=1.4,
        blur=1.2,
        vignette=0.45,
        sky_top=(0.15, 0.45, 0.65),
        sky_horizon=(0.95, 0.75, 0.55),
        bloom=0.5,
    ),
}


# The centre of the `public` domain's randomisation; every public image draws its own style
# around it with :func:`random_style` (ranges and reasons in docs/world.md).
STYLES["public"] = Style(name="public")


def random_style(rng: np.random.Generator) -> Style:
    """A domain-randomised style for one image of the `public` domain (docs/world.md)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    coin = lambda: bool(rng.random() < 0.5)  # noqa: E731
    top = tuple(u(0.1, 0.8) for _ in range(3))
    return Style(
        name="public",
        hue_shift=u(-45, 45),
        saturation=u(0.45, 1.7),
        brightness=u(0.75, 1.25),
        instance_jitter=u(0.05, 0.2),
        texture=u(0.2, 1.8),
        texture_scale=u(0.6, 2.2),
        shading=u(0.15, 0.55),
        contrast=u(0.8, 1.35),
        gamma=u(0.85, 1.2),
        tint=(u(0.8, 1.2), u(0.8, 1.2), u(0.8, 1.2)),
        grade_saturation=u(0.6, 1.5),
        blur=u(0.0, 1.2) if coin() else 0.0,
        noise=u(0.0, 0.04) if coin() else 0.0,
        vignette=u(0.0, 0.45) if coin() else 0.0,
        bloom=u(0.0, 0.4) if coin() else 0.0,
        posterize=int(rng.integers(12, 33)) if coin() else 0,
        sky_top=top,
        sky_horizon=tuple(min(c + u(0.1, 0.4), 1.0) for c in top),
    )


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise KeyError(f"unknown style {name!r}; valid styles: {', '.join(STYLES)}")
    return STYLES[name]
