"""A tiny built-in world shared by the federation tests (3 clients, server images, a test set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feds2r.data.world import DOMAINS, synth_domain

CLIENTS = ("gta5-like", "synthia-like", "synscapes-like")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fed-world")
    specs = {}
    for domain, split, num in [
        *((d, "train", 6) for d in CLIENTS),
        ("cityscapes-like", "train", 6),
        ("cityscapes-like", "val", 3),
    ]:
        folder = root / f"{domain}-{split}"
        synth_domain(domain, folder, split=split, num=num, size=(32, 64), seed=0, progress=False)
        specs[(domain, split)] = f"{DOMAINS[domain].format}:{folder}?split={split}"
    return {
        "root": root,
        "clients": {d.split("-")[0]: specs[(d, "train")] for d in CLIENTS},
        "server": specs[("cityscapes-like", "train")],
        "test": specs[("cityscapes-like", "val")],
    }


def tiny_config(out: Path, world: dict, **overrides):
    """A tiny federation; ``overrides`` by run-config name with underscores (``min_clients=1``,
    ``client_steps=3``)."""
    from feds2r.federation.protocol import FederationConfig

    values = dict(
        out=str(out),
        server_data=world["server"],
        preset="m2f-cpu",
        client_steps=2,
        distill_steps=2,
        batch_size=2,
        height=32,
        crop=(32, 64),
        warmup_steps=1,
        generated_images=3,
        evaluate=f"cs={world['test']}",
        num_clients=3,
        connect_timeout=60.0,
        client_timeout=600.0,
    )
    values.update(overrides)
    return FederationConfig.from_run_config({k.replace("_", "-"): v for k, v in values.items()})


TINY_FLAGS = (
    "--preset m2f-cpu --client-steps 2 --distill-steps 2 --batch-size 2 --height 32 --crop 32x64 "
    "--warmup-steps 1 --generated-images 3 --connect-timeout 60 --client-timeout 600"
).split()
