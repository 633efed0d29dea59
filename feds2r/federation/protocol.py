"""The one-shot federation as plain functions, independent of the transport.

The server sends one message to each client: the common initial model's tensors and the training
settings (:func:`train_settings`). Each client trains on its private data (:func:`client_round`)
and replies with its model's tensors and a small metadata record (:data:`REPLY_METADATA`). The
server checks every reply (:func:`check_reply`), keeps the valid ones, and runs the server
pipeline (:func:`run_federation`). The Flower apps in this package only move these values
between machines; :func:`in_process_send` moves them within one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from feds2r.config import check_types, flatten, unflatten, write_run_config
from feds2r.data.labels import CLASS_NAMES
from feds2r.engine.train import TrainConfig
from feds2r.errors import DataError, Feds2rError
from feds2r.federation.round_client import ROUND_METHODS, RoundsConfig
from feds2r.io import write_atomic
from feds2r.server.distill import DistillConfig
from feds2r.server.pipeline import ServerConfig, run_server_pipeline

REPLY_METADATA: dict[str, type] = {
    "client": str,
    "preset": str,
    "class-names": list,
    "steps": int,
    "train-seconds": float,
    "feds2r-version": str,
}
"""Every key a client's reply may carry besides the model tensors, with its type. Nothing else
(no image, label, per-sample value, file name or path) is sent; ``docs/federation.md``."""


FAILURE_METADATA: dict[str, type] = {"client": str, "reason": str}
"""Every key of a failed client's reply (its "failure" record). ``reason`` is a category from
:func:`client_failure`, never the error's text, which may name the client's files and paths."""


def client_failure(exc: BaseException) -> str:
    """What a client tells the server about its own failure: a category only.

    The error's message stays in the client's own log: a :class:`~feds2r.errors.DataError`
    names the private dataset's folders and files, and other errors may name paths too.
    """
    if isinstance(exc, DataError):
        what = "data error"
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        what = "out of memory"
    elif isinstance(exc, Feds2rError):
        what = "configuration error"
    else:
        what = f"unexpected error ({type(exc).__name__})"
    return f"{what} on the client; see the client's log"


class FederationError(Feds2rError):
    """The federation could not produce a global model (the message says why)."""


CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A client's name: it names the folder ``clients/NAME``, so no ``.``, ``..`` or separator."""


def check_client_name(name: str) -> str:
    """``name`` if it is a valid client name, else a :class:`FederationError` saying why."""
    if not CLIENT_NAME.fullmatch(name):
        raise FederationError(
            f"client name {name!r} is not allowed: it names the folder clients/NAME, so use up "
            "to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return name


def check_server_inputs(config: FederationConfig) -> None:
    """Open the server's images and every evaluation set, so that a missing or malformed one is
    reported before any client trains (a :class:`~feds2r.errors.DataError` naming it)."""
    from feds2r.data import open_dataset
    from feds2r.errors import DataError

    try:
        open_dataset(config.server_data, labels=False)
    except DataError as exc:
        raise DataError(f"--server-data {config.server_data}: {exc}", kind=exc.kind) from None
    for name, spec in config.evaluation_sets().items():
        try:
            open_dataset(spec)
        except DataError as exc:
            raise DataError(f"--evaluate {name}={spec}: {exc}", kind=exc.kind) from None


def check_new_output(out: Path) -> None:
    """A run writes only into a new or empty folder, so it never mixes with an older one."""
    if out.exists() and any(out.iterdir()):
        raise FederationError(f"output folder {out} is not empty; choose a new one")


def _federation_recipe() -> TrainConfig:
    """The federation's default training recipe, for the clients and for the distillation."""
    return TrainConfig(steps=300, warmup_steps=50, checkpoint_every=100)


def _federation_server() -> ServerConfig:
    return ServerConfig(train=_federation_recipe())


CLIENT_RECIPE = TrainConfig(checkpoint_every=100)
"""What a client trains with for every recipe field the server's message leaves out
(:func:`train_settings`, :func:`client_recipe`)."""

SENT_ALWAYS = ("steps", "batch_size", "height", "crop", "lr", "warmup_steps", "seed")
"""The recipe fields every train message carries; the others only where they differ from
:data:`CLIENT_RECIPE`."""

CLIENT_LOCAL = ("device", "threads")
"""Recipe fields that are each client machine's own choice, never sent."""


@dataclass(frozen=True)
class FederationConfig:
    """One federation run: its own settings, the clients' recipe and the server's config.

    Flower passes it as the run config: flat keys with dashes, nested sections joined with dots
    (``min-clients``, ``clients.steps``, ``server.generation.images``; :func:`~feds2r.config.
    flatten`); the flat names of earlier versions (``client-steps``, ``batch-size``, ``seed``
    ...) are still read (:data:`RUN_CONFIG_ALIASES`).
    """

    out: str
    """Absolute folder for the global model, the client models and ``results.json``."""
    server_data: str
    """The server's unlabelled images (dataset spec)."""
    preset: str = "m2f-cpu"
    """Model preset of the common initial model, the clients and the global model (the server's
    ``distill.student`` follows it)."""
    min_clients: int = 2
    """The server goes on when at least this many clients replied with a valid model."""
    num_clients: int = 0
    """Clients to wait for before sending (0: whoever is connected after ``connect_timeout``)."""
    connect_timeout: float = 120.0
    """Seconds to wait for the SuperNodes to connect."""
    client_timeout: float = 3600.0
    """Seconds to wait for the clients' replies; a client that has not replied by then is
    reported as timed out."""
    evaluate: str = ""
    """Optional labelled test sets for the global model: ``name=SPEC;name=SPEC``."""
    client_data: str = ""
    """Simulation only: ``SPEC;SPEC;...``, the dataset of virtual client i (its partition-id)."""
    pretrained: bool = True
    """The common initial model starts from the preset's shipped public backbone (docs/models.md),
    as FedS2R's clients start from one pretrained backbone; False: random weights."""
    method: str = "feds2r"
    """The federation: "feds2r" (one exchange, then the server pipeline) or a multi-round
    baseline on Flower's strategies, "fedavg", "fedprox" or "fedseg" (``multiround``;
    docs/federation.md)."""
    multiround: RoundsConfig = field(default_factory=RoundsConfig)
    """The multi-round flows' rounds and their methods' weights."""
    clients: TrainConfig = field(default_factory=_federation_recipe)
    """The recipe the server sends every client (:func:`train_settings`); its seed also seeds the
    common initial model. ``device`` and ``threads`` are each client's own, not sent."""
    server: ServerConfig = field(default_factory=_federation_server)
    """What the server does with the client models: the unstable-class rule, the generated
    images, the distillation and its recipe (:class:`~feds2r.server.pipeline.ServerConfig`)."""

    def __post_init__(self) -> None:
        check_types(self)
        if not Path(self.out).is_absolute():
            raise FederationError(f"out must be an absolute folder, not {self.out!r}")
        if self.min_clients < 1:
            raise FederationError("min-clients must be at least 1")
        if self.method not in ("feds2r", *ROUND_METHODS):
            valid = ", ".join(("feds2r", *ROUND_METHODS))
            raise FederationError(f"method must be one of {valid}, not {self.method!r}")
        if self.method != "feds2r" and self.clients.steps < self.multiround.rounds:
            raise FederationError(
                f"{self.multiround.rounds} rounds need at least as many client steps "
                f"(clients.steps={self.clients.steps})"
            )
        for name in CLIENT_LOCAL:
            if getattr(self.clients, name) != getattr(CLIENT_RECIPE, name):
                raise FederationError(
                    f"clients.{name} is each client machine's own choice and is not sent; "
                    f"leave it at {getattr(CLIENT_RECIPE, name)!r}"
                )
        student = self.server.distill.student
        if student != self.preset:
            if student != DistillConfig().student:
                raise FederationError(
                    f"server.distill.student ({student!r}) differs from preset "
                    f"({self.preset!r}): the global model has the federation's preset"
                )
            distill = dataclasses.replace(self.server.distill, student=self.preset)
            server = dataclasses.replace(self.server, distill=distill)
            object.__setattr__(self, "server", server)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        """From Flower's run config (``clients.steps = 300``, ``clients.crop = "128x256"`` …, or
        the earlier flat names such as ``client-steps``: :data:`RUN_CONFIG_ALIASES`)."""
        return unflatten(cls, run_config, aliases=RUN_CONFIG_ALIASES)

    def evaluation_sets(self) -> dict[str, str]:
        sets = {}
        for part in filter(None, (p.strip() for p in self.evaluate.split(";"))):
            name, sep, spec = part.partition("=")
            if not sep:
                raise FederationError(f"evaluate entries are NAME=SPEC, got {part!r}")
            sets[name.strip()] = spec.strip()
        return sets


def _both(key: str) -> tuple[str, str]:
    return f"clients.{key}", f"server.train.{key}"


RUN_CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "client-steps": ("clients.steps",),
    "distill-steps": ("server.train.steps",),
    "batch-size": _both("batch-size"),
    "height": _both("height"),
    "crop": _both("crop"),
    "lr": _both("lr"),
    "warmup-steps": _both("warmup-steps"),
    "seed": (*_both("seed"), "server.generation.seed"),
    "generated-images": ("server.generation.images",),
    "route": ("server.route",),
    "rounds": ("multiround.rounds",),
    "proximal-mu": ("multiround.proximal-mu",),
    "lite-preset": ("server.lite.student",),
}
"""The flat run-config names of earlier versions (and the ``feds2r federate`` flags), each with
the keys it sets: one value for the clients' recipe and the distillation's where both have the
field, and ``seed`` for the generated images too."""


def train_settings(config: FederationConfig) -> dict[str, Any]:
    """The training settings the server sends each client (flat, Flower ConfigRecord values):
    the preset and the clients' recipe (:data:`SENT_ALWAYS`, and any other field that differs
    from :data:`CLIENT_RECIPE`), in :func:`~feds2r.config.flatten`'s form."""
    recipe, base = flatten(config.clients), flatten(CLIENT_RECIPE)
    always = {name.replace("_", "-") for name in SENT_ALWAYS}
    local = {name.replace("_", "-") for name in CLIENT_LOCAL}
    sent = {k: v for k, v in recipe.items() if k in always or (k not in local and v != base[k])}
    return {"preset": config.preset, **sent}


def client_recipe(settings: dict[str, Any]) -> TrainConfig:
    """The recipe a client trains with: :data:`CLIENT_RECIPE` with the message's values."""
    recipe = {k: v for k, v in settings.items() if k != "preset"}
    return unflatten(TrainConfig, recipe, base=CLIENT_RECIPE, source="the server's settings")


def client_round(
    init_state: dict[str, Tensor],
    settings: dict[str, Any],
    data: str,
    *,
    name: str,
    workdir: str | Path | None = None,
    progress: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A client's whole part: train the received initial model on its private ``data``.

    Returns the trained tensors and the reply metadata (:data:`REPLY_METADATA`). The training
    run (logs, resumable state) lives in ``workdir`` (default: a temporary folder, removed).
    """
    from feds2r import __version__
    from feds2r.client import train_client
    from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
    from feds2r.models import create_model

    preset = str(settings["preset"])
    config = client_recipe(settings)
    with tempfile.TemporaryDirectory(prefix="feds2r-client-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        model = create_model(preset)
        _load_state(model, init_state, "the server's initial model")
        save_checkpoint(model, work / "init", meta={"role": "initial"})
        start = time.perf_counter()
        train_client(data, preset, work / "model", config, init=work / "init", progress=progress)
        trained, _ = load_checkpoint(work / "model")
        state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    meta = {
        "client": name,
        "preset": preset,
        "class-names": list(CLASS_NAMES),
        "steps": config.steps,
        "train-seconds": round(time.perf_counter() - start, 2),
        "feds2r-version": __version__,
    }
    return state, meta


def _load_state(model, state: dict[str, Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise FederationError(
            f"{what} does not fit the {model.preset.name} preset: "
            f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(extra)} unexpected "
            f"(e.g. {extra[:2]})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise FederationError(
                f"{what}: tensor {key} has shape {tuple(value.shape)}, the {model.preset.name} "
                f"preset expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)


def check_reply(state: dict[str, Tensor], meta: dict[str, Any], preset: str):
    """The client model in a reply, or a :class:`FederationError` saying why it is rejected."""
    from feds2r.models import create_model

    unknown = sorted(set(meta) - set(REPLY_METADATA))
    if unknown:
        raise FederationError(f"reply carries undocumented metadata {unknown}")
    for key, kind in REPLY_METADATA.items():
        if key not in meta:
            raise FederationError(f"reply metadata lacks {key!r}")
        if not isinstance(meta[key], kind) and not (kind is float and isinstance(meta[key], int)):
            raise FederationError(f"reply metadata {key!r} is not a {kind.__name__}")
    if meta["preset"] != preset:
        raise FederationError(f"model preset is {meta['preset']!r}, the federation uses {preset!r}")
    if list(meta["class-names"]) != list(CLASS_NAMES):
        raise FederationError(
            f"model classes differ from the federation's {len(CLASS_NAMES)} classes "
            f"({len(meta['class-names'])} classes, first {list(meta['class-names'])[:3]})"
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise FederationError(f"reply entry {key!r} is not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FederationError(f"tensor {key} holds NaN or infinite values")
    model = create_model(preset)
    _load_state(model, state, "the reply's model")
    return model.eval()


@dataclass
class Reply:
    """What came back from one client: a model and metadata, or the reason there is none."""

    client: str
    state: dict[str, Tensor] | None = None
    meta: dict[str, Any] | None = None
    error: str | None = None
    node_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


SendFn = Callable[[dict[str, Tensor], dict[str, Any]], list[Reply]]
"""Sends the initial model and settings to every client once; returns one :class:`Reply` each."""


def in_process_send(
    clients: dict[str, str],
    workdir: str | Path | None = None,
    *,
    client_log: Callable[[str], None] | None = None,
) -> SendFn:
    """A :data:`SendFn` that runs each client (name -> dataset spec) in this process.

    A client that fails replies as over Flower: its name and :func:`client_failure`'s category;
    the error's text goes to ``client_log`` only (default: standard error), the client's log.
    """
    if client_log is None:

        def client_log(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

    def send(init_state: dict[str, Tensor], settings: dict[str, Any]) -> list[Reply]:
        replies = []
        for name, spec in clients.items():
            work = Path(workdir) / check_client_name(name) if workdir else None
            try:
                state, meta = client_round(init_state, settings, spec, name=name, workdir=work)
                replies.append(Reply(name, state, meta))
            except Feds2rError as exc:
                client_log(f"[feds2r client {name}] training failed: {type(exc).__name__}: {exc}")
                replies.append(Reply(name, error=f"client failed: {client_failure(exc)}"))
        return replies

    return send


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out`` for a run to write into: renamed to ``out`` when the block
    ends, removed when it raises (also on Ctrl-C), so a failed run leaves no half-written output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(stage, out)


def run_federation(
    send: SendFn, config: FederationConfig, *, progress: bool = True, log=print
) -> dict[str, Any]:
    """The server's whole run: initial model, one exchange, checks, server pipeline.

    Everything is written to a staging folder beside ``config.out`` and renamed into place at
    the end, so a failed run leaves no half-written output. Raises :class:`FederationError` when
    fewer than ``config.min_clients`` valid models came back.
    """
    from feds2r.engine.checkpoint import save_checkpoint
    from feds2r.models import PUBLIC, create_model

    out = Path(config.out)
    check_new_output(out)
    check_server_inputs(config)  # before any client trains
    with staged(out) as stage:
        write_run_config(stage, {"federation": config})
        torch.manual_seed(config.clients.seed)
        init = create_model(config.preset, backbone_weights=PUBLIC if config.pretrained else None)
        save_checkpoint(init, stage / "init", meta={"role": "initial"})
        start = time.perf_counter()
        replies = send(init.state_dict(), train_settings(config))
        exchange_s = round(time.perf_counter() - start, 2)
        accepted: dict[str, Path] = {}
        report: dict[str, dict[str, Any]] = {}
        # a fixed order (by client name), whatever order the transport delivered them in
        for reply in sorted(replies, key=lambda r: r.client):
            name = _unique(reply.client, report)
            entry: dict[str, Any] = {"node_id": reply.node_id, **reply.extra}
            if reply.error is None:
                try:
                    model = check_reply(reply.state or {}, reply.meta or {}, config.preset)
                except FederationError as exc:
                    reply.error = f"rejected: {exc}"
            if reply.error is not None:
                entry.update(status="failed", reason=reply.error)
                log(f"client {name}: {reply.error}")
            else:
                path = stage / "clients" / name
                save_checkpoint(model, path, meta={"role": "client", "client": name})
                accepted[name] = path
                entry.update(status="ok", meta=reply.meta)
                log(f"client {name}: model accepted")
            report[name] = entry
        if len(accepted) < config.min_clients:
            failed = "; ".join(f"{n}: {e['reason']}" for n, e in report.items() if "reason" in e)
            raise FederationError(
                f"only {len(accepted)} of {len(report)} clients sent a valid model, fewer than "
                f"min-clients={config.min_clients}" + (f" ({failed})" if failed else "")
            )
        summary = run_server_pipeline(
            accepted,
            config.server_data,
            stage,
            config.server,
            evaluate_on=config.evaluation_sets(),
            progress=progress,
        )
        summary["global_model"] = str(out / "global")
        results = {
            "clients": report,
            "accepted": list(accepted),
            **{k: v for k, v in summary.items() if k != "clients"},
            "timing_s": {"exchange": exchange_s, **summary["timing_s"]},
        }
        # nothing may point into the staging folder once it is renamed to ``out``
        results = _moved_paths(results, str(stage), str(out))
        _move_json_paths(stage, str(stage), str(out))
        write_atomic(stage / "results.json", json.dumps(results, indent=2).encode())
    return results


def _moved_paths(value: Any, old: str, new: str) -> Any:
    """``value`` (JSON data) with every string's ``old`` path prefix replaced by ``new``."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _moved_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved_paths(v, old, new) for v in value]
    return value


def _move_json_paths(folder: Path, old: str, new: str) -> None:
    """Rewrite each JSON file under ``folder`` that names ``old`` (sidecars, manifests)."""
    for path in sorted(folder.rglob("*.json")):
        text = path.read_text()
        if old in text:
            data = _moved_paths(json.loads(text), old, new)
            write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def _unique(name: str, taken: dict) -> str:
    """A folder name for a client's (untrusted) name: one path component, never ``.``/``..``,
    distinct from the names in ``taken``."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "client"
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}-{k}"
    return candidate
