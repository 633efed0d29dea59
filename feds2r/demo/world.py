"""The built-in world a demo run trains and tests on: built once per size, then reused.

The clients train on the synthetic domains' train splits, the server sees the cityscapes-like
train split without labels, choices are read from its labelled dev split, and every method is
tested on the real-like domains' val splits (:mod:`feds2r.data.world`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feds2r.data import open_dataset
from feds2r.data.world import DOMAINS, REAL_DOMAINS, SYNTHETIC_DOMAINS, synth_domain
from feds2r.demo.profiles import WorldSizes
from feds2r.io import write_atomic

SERVER_DOMAIN = "cityscapes-like"
"""The server's domain: its unlabelled train split and its labelled dev split."""


def world_spec(world: Path, domain: str, split: str) -> str:
    """The dataset spec of one split of one domain of a demo world."""
    return f"{DOMAINS[domain].format}:{world / domain}?split={split}"


def build_world(world: Path, sizes: WorldSizes, progress: bool) -> dict:
    """Write the world ``sizes`` describe into ``world`` unless a matching one is already there."""
    want = {
        "size": list(sizes.size),
        "client_images": sizes.client_images,
        "server_images": sizes.server_images,
        "test_images": sizes.test_images,
        "dev_images": sizes.dev_images,
    }
    stamp = world / "demo_world.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return want
    plan = [(d, "train", sizes.client_images) for d in SYNTHETIC_DOMAINS]
    plan += [(SERVER_DOMAIN, "train", sizes.server_images)]
    plan += [(SERVER_DOMAIN, "dev", sizes.dev_images)]
    plan += [(d, "val", sizes.test_images) for d in REAL_DOMAINS]
    for domain, split, num in plan:
        synth_domain(
            domain,
            world / domain,
            split=split,
            num=num,
            size=sizes.size,
            seed=0,
            progress=progress,
            force=True,  # the stamp differs: this world is rebuilt, not mixed with the old one
        )
    write_atomic(stamp, json.dumps(want).encode())
    return want


def open_dev(world: Path) -> Any:
    """The server domain's labelled dev split (learning curves, choices)."""
    return open_dataset(world_spec(world, SERVER_DOMAIN, "dev"))


def open_tests(world: Path) -> dict[str, Any]:
    """The test split of every real-like domain, by domain, in :data:`REAL_DOMAINS`' order."""
    return {d: open_dataset(world_spec(world, d, "val")) for d in REAL_DOMAINS}
