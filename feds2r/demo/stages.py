"""The stages every suite starts with: claim OUT, time each stage, make the one initial model,
train the clients from it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from feds2r.client import train_client
from feds2r.demo.curves import DevCurves
from feds2r.engine.checkpoint import save_checkpoint
from feds2r.engine.train import TrainConfig
from feds2r.io import config_tables, prepare_output
from feds2r.models import PRETRAINED, create_model, start_source


def claim_out(out: str | Path) -> Path:
    """OUT created if missing, with no check (kept only for suites not yet moved to
    :func:`demo_output`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _earlier_demo(folder: Path) -> bool:
    """A demo folder written before outputs carried a state file: its config has [demo]."""
    return "demo" in config_tables(folder)


@contextmanager
def demo_output(out: str | Path, suite: str, inputs: Mapping[str, Any]) -> Iterator[Path]:
    """Claim OUT for a run of ``suite``: the one place where a demo decides that OUT is its own.

    OUT must be new, empty or an earlier run of the same suite with the same ``inputs`` (those
    that change figures: profile, seed, world, start; not the rows, which a rerun may add);
    anything else is refused before a byte is written (docs/reliability.md). A rerun into its
    own OUT reuses every finished training found there. OUT is marked complete on success.
    """
    dest = prepare_output(
        out,
        "demo",
        marker=_earlier_demo,
        inputs={"suite": suite, **inputs},
        hint="Give the same --suite, --profile, --seed, --world and start, or another --out",
    )
    with dest:
        dest.begin()
        yield dest.path
        dest.finish()


class StageClock:
    """Wall-clock seconds of each stage (``timing_s`` of ``results.json``); a stage entered
    twice adds up. ``progress``: print each stage's name as it starts."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as the stage ``name``."""
        if self.progress:
            print(f"== {name}", flush=True)
        begin = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - begin, 2)

    def summary(self) -> dict[str, float]:
        """Every stage's seconds and their ``total``."""
        return {**self.seconds, "total": round(sum(self.seconds.values()), 2)}


def start_record(preset: str, pretrained: bool, rows: str) -> dict[str, Any]:
    """What every model of the run starts from (``results.json``'s ``start``): the preset's
    pretrained start (the shipped `public` backbone, or ImageNet weights) or random weights;
    ``rows`` says which rows start there."""
    return {
        "pretrained": pretrained,
        "backbone": start_source(preset) if pretrained else "random",
        "rows": rows,
    }


def save_initial_model(out: Path, preset: str, seed: int, start: Mapping[str, Any]) -> Path:
    """The server's one initial model, drawn from ``seed``, saved as ``out/init``."""
    torch.manual_seed(seed)
    init = create_model(preset, backbone_weights=PRETRAINED if start["pretrained"] else None)
    save_checkpoint(init, out / "init", meta={"role": "initial", "start": dict(start)})
    return out / "init"


def train_clients(
    specs: Mapping[str, str],
    out: Path,
    preset: str,
    recipe: TrainConfig,
    curves: DevCurves,
    progress: bool,
) -> dict[str, Path]:
    """Train one client per dataset of ``specs`` (name -> spec) from ``out/init`` into
    ``out/clients/<name>``, each drawing the curve ``client:<name>``; their folders by name."""
    clients = {}
    for name, spec in specs.items():
        path = out / "clients" / name
        train_client(
            spec,
            preset,
            path,
            recipe,
            init=out / "init",
            progress=progress,
            on_step=curves.hook(f"client:{name}"),
        )
        clients[name] = path
    return clients
