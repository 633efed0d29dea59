"""Helpers that write tiny dataset trees in each format's exact native layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

H, W = 8, 20  # small, but wide enough for one column per native id in the strip tests


def write_rgb(path: Path, h: int = H, w: int = W, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def write_ids(path: Path, ids: np.ndarray, mode: str = "L") -> None:
    """Write a single-channel 8-bit label PNG (mode L or P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img = Image.fromarray(ids.astype(np.uint8), mode="P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def write_synthia_label(path: Path, ids: np.ndarray) -> None:
    """16-bit 3-channel PNG with the class in the first PNG channel (R), instance in G."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = ids.astype(np.uint16)
    bgr = np.stack([np.zeros_like(ids), np.full_like(ids, 7), ids], axis=-1)  # B, G, R
    assert cv2.imwrite(str(path), bgr)


def strip(values: list[int], h: int = H) -> np.ndarray:
    """A label image whose column ``i`` holds ``values[i]`` (then repeats the last value)."""
    row = np.array(values + [values[-1]] * max(W - len(values), 0))[:W]
    return np.tile(row, (h, 1))


@pytest.fixture
def tmp_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


# The training flags of every tiny CLI run in the tests: a few images of 32x64 on the CPU.
TINY_RECIPE = ["--batch-size", "2", "--height", "32", "--crop", "32x64", "--device", "cpu"]


def train_tiny_client(spec: str, out: Path, *, steps: int = 2, seed: int = 0) -> int:
    """`feds2r client train` of a segformer-cpu for a few steps at 32x64; returns the exit code."""
    from feds2r.cli import main

    return main(
        [
            "client",
            "train",
            "--data",
            spec,
            "--preset",
            "segformer-cpu",
            "--steps",
            str(steps),
            "--warmup-steps",
            "1",
            *TINY_RECIPE,
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--quiet",
        ]
    )
