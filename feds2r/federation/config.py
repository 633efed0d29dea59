"""The federation's configuration, without Flower: :class:`FederationConfig` (one run, Flower's
run config), :class:`RoundsConfig` (the multi-round baselines), and what the server sends every
client of it (:func:`train_settings`, read back by :func:`client_recipe`).

Every other module of the federation, Flower's apps included, builds on this one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feds2r.config import check_types, flatten, unflatten
from feds2r.data import open_dataset
from feds2r.engine.train import TrainConfig
from feds2r.errors import DataError, Feds2rError
from feds2r.server.pipeline import ServerConfig


class FederationError(Feds2rError):
    """The federation could not produce a global model (the message says why)."""


ROUND_METHODS = ("fedavg", "fedprox", "fedseg")
"""The multi-round methods (``FederationConfig.method``; "feds2r" is the one-shot flow)."""

ROUND_LOSSES = ("ce", "backce")
"""The supervised term a round's ``loss`` key may name: plain CE (background ignored) or
FedSeg's BackCE (eq. 4-5; per-pixel presets). Without the key: the model's own supervised loss
(Mask2Former's set loss or per-pixel CE), as before the key existed."""


@dataclass(frozen=True)
class RoundsConfig:
    """The multi-round flows (methods fedavg, fedprox, fedseg)."""

    rounds: int = 5
    """Communication rounds R; every client trains ``clients.steps / R`` steps per round, so the
    clients' total steps are the one-shot clients' (docs/federation.md)."""
    proximal_mu: float = 0.01
    """FedProx's proximal weight mu (the term ``mu/2 ||w - w_global||^2``); Li et al. (2020)
    report mu in {0.001, 0.01, 0.1, 1}; 0.01 is not tuned here."""
    contrast_weight: float = 1.0
    """FedSeg's lambda of the pixel contrastive loss, eq. (9) (the public recipe's CON_LAMB=1)."""
    clients_per_round: int = 0
    """Clients trained each round, drawn reproducibly from the clients' seed among all
    ``num_clients`` (0: every client every round; FedSeg's code draws 5 of 19)."""
    loss: str = ""
    """The clients' supervised term (:data:`ROUND_LOSSES`): "ce" or FedSeg's "backce"; "" leaves
    it to each client's model."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")
        if self.proximal_mu < 0 or self.contrast_weight < 0:
            raise ValueError("proximal_mu and contrast_weight must be >= 0")
        if self.clients_per_round < 0:
            raise ValueError("clients_per_round must be >= 0 (0: every client)")
        if self.loss not in ("", *ROUND_LOSSES):
            raise ValueError(f"loss must be one of {', '.join(ROUND_LOSSES)} or empty")


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

CLIENT_LOCAL = ("device", "threads", "loader", "workers")
"""Recipe fields that are each client machine's own choice, never sent."""


def without_local(recipe: TrainConfig) -> TrainConfig:
    """``recipe`` with the fields of :data:`CLIENT_LOCAL` at the federation's defaults: what a
    federation can carry of a recipe that also names one machine's choices (as the demo's do)."""
    return dataclasses.replace(recipe, **{k: getattr(CLIENT_RECIPE, k) for k in CLIENT_LOCAL})


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
    preset: str = "seg-effl0"
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
        if student and student != self.preset:  # "": the clients' preset, the federation's
            raise FederationError(
                f"server.distill.student ({student!r}) differs from preset "
                f"({self.preset!r}): the global model has the federation's preset"
            )

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
    "clients-per-round": ("multiround.clients-per-round",),
    "round-loss": ("multiround.loss",),
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


def check_server_inputs(config: FederationConfig) -> None:
    """Open the server's images and every evaluation set, so that a missing or malformed one is
    reported before any client trains (a :class:`~feds2r.errors.DataError` naming it)."""
    try:
        open_dataset(config.server_data, labels=False)
    except DataError as exc:
        raise DataError(f"--server-data {config.server_data}: {exc}", kind=exc.kind) from None
    for name, spec in config.evaluation_sets().items():
        try:
            open_dataset(spec)
        except DataError as exc:
            raise DataError(f"--evaluate {name}={spec}: {exc}", kind=exc.kind) from None
