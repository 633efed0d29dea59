"""Multi-round flows (FedAvg, FedProx, FedSeg, and FUSS) on Flower's Simulation Engine: many
virtual SuperNodes on one machine, e.g. FedSeg's 19 class-heterogeneous clients.

The Simulation Engine (Ray) runs a ClientApp per virtual SuperNode and the ServerApp in a thread
of this process. Both apps here are adapters over the functions every other transport runs:

- the ServerApp runs :func:`~feds2r.federation.rounds.run_rounds` (Flower's own ``FedAvg`` /
  ``FedProx`` strategies, counted) over the simulation's grid, with its clients per round and the
  clients' loss;
- the ClientApp gives virtual node ``partition-id`` = i the node config ``{"data": SPEC_i,
  "name": NAME_i}`` of the i-th client and calls feds2r's ClientApp train function
  (:func:`feds2r.federation.client_app.train`), as a SuperNode of a deployment would. A client's
  data is a dataset spec or a part of a class-heterogeneous partition
  (``partition:/abs/partition.json#client-03``, :mod:`feds2r.data.partition`).

FUSS (:func:`run_fuss_simulation`) runs its own ServerApp work and ClientApp
(:mod:`feds2r.federation.fuss_app`) the same way: node i holds the i-th client's unlabelled images.

This uses Flower's Python entry point (``flwr.simulation.run_simulation``), which takes the apps
themselves and no run config: the settings travel inside the apps. ``flwr run . local-sim``
with the repository's app is the command-line way (``docs/federation.md``); a part's data spec
works there too, in ``client-data``. Needs Ray: ``pip install 'feds2r[flower]'``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from feds2r.errors import Feds2rError
from feds2r.federation.config import FederationConfig, check_client_name
from feds2r.federation.rounds import flower_log_held_back, run_rounds

DEFAULT_BACKEND: dict[str, Any] = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {"include_dashboard": False, "log_to_driver": False},
}
"""Ray's settings unless the caller gives its own: one CPU per virtual client (so as many run at
once as the machine has cores), no dashboard, actors' output kept out of this process's."""


def simulation_client_app(
    clients: Mapping[str, str],
    client_train: Callable[[Message, Context], Message] | None = None,
) -> ClientApp:
    """A ClientApp whose virtual node ``partition-id`` = i trains as the i-th of ``clients``
    (name -> data spec), through ``client_train`` (default feds2r's ClientApp train function;
    FUSS passes :func:`feds2r.federation.fuss_app.client_train`)."""
    if client_train is None:
        from feds2r.federation.client_app import train as client_train
    items = [(check_client_name(name), spec) for name, spec in clients.items()]
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        if not 0 <= k < len(items):
            raise Feds2rError(f"virtual node {k} has no client: {len(items)} were given")
        name, spec = items[k]
        node = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config={"data": spec, "name": name},
            state=context.state,
            run_config=context.run_config,
        )
        return client_train(msg, node)

    return app


def simulation_server_app(
    config: FederationConfig, record: dict[str, Any], **options: Any
) -> ServerApp:
    """A ServerApp running :func:`~feds2r.federation.rounds.run_rounds` with ``config`` and
    ``options`` (``init``, ``evaluate_on``, ``log``, ``clients_per_round``, ``loss``); its
    results go into ``record["results"]``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        record["results"] = run_rounds(grid, config, **options)

    return app


def _simulate(
    server: ServerApp, client: ClientApp, nodes: int, backend_config: Mapping[str, Any] | None
) -> None:
    """Run ``server`` with ``nodes`` virtual SuperNodes of ``client`` on the Simulation Engine,
    Flower's own log at WARNING."""
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:  # pragma: no cover - flwr without its simulation extra
        raise Feds2rError(
            f"Flower's Simulation Engine needs Ray ({exc}); install it with: "
            "pip install 'feds2r[flower]'"
        ) from None
    with flower_log_held_back():
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=nodes,
            backend_config=dict(backend_config or DEFAULT_BACKEND),
        )


def run_rounds_simulation(
    clients: Mapping[str, str],
    config: FederationConfig,
    *,
    backend_config: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """:func:`~feds2r.federation.rounds.run_rounds` with one virtual SuperNode per client of
    ``clients`` (name -> data spec) on Flower's Simulation Engine; returns the results (also
    ``config.out/results.json``). ``config.method`` must be a multi-round method;
    ``config.num_clients`` is set to the number of clients when 0. ``backend_config``: Ray's
    (default :data:`DEFAULT_BACKEND`). ``options``: those of ``run_rounds``.
    """
    if config.method == "feds2r":
        raise Feds2rError("run_rounds_simulation runs the multi-round methods, not feds2r")
    if not clients:
        raise Feds2rError("the simulation needs at least one client")
    if not config.num_clients:
        from dataclasses import replace

        config = replace(config, num_clients=len(clients))
    record: dict[str, Any] = {}
    server = simulation_server_app(config, record, log=log, **options)
    _simulate(server, simulation_client_app(clients), len(clients), backend_config)
    if "results" not in record:
        raise Feds2rError(
            f"the simulation ended without results (the ServerApp failed; Flower's log above "
            f"says why); nothing was written to {config.out}"
        )
    written = Path(config.out) / "results.json"
    return json.loads(written.read_text()) if written.is_file() else record["results"]


def run_fuss_simulation(
    clients: Mapping[str, str],
    method: str,
    config: Any,
    out: str | Path,
    *,
    backend_config: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """FUSS (``method`` ``fuss`` or ``fedavg``, :class:`~feds2r.fuss.FussConfig` ``config``)
    with one virtual SuperNode per client of ``clients`` (name -> unlabelled data spec) on the
    Simulation Engine, through FUSS's own ServerApp work and ClientApp
    (:mod:`feds2r.federation.fuss_app`); writes ``out/fuss_model.pt`` and ``out/fuss_run.json``
    and returns the run's record (method, clients, measured bytes per round)."""
    from feds2r.federation.fuss_app import client_train, config_to_json, run_server

    if method not in ("fuss", "fedavg"):
        raise Feds2rError(f"FUSS over Flower runs fuss or fedavg, not {method!r}")
    if not clients:
        raise Feds2rError("the simulation needs at least one client")
    run_config = {
        "fuss-method": method,
        "num-clients": len(clients),
        "fuss-config": config_to_json(config),
        "out": str(out),
    }
    record: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        record.update(run_server(grid, run_config, log=log))

    _simulate(server, simulation_client_app(clients, client_train), len(clients), backend_config)
    if not record:
        raise Feds2rError(
            f"the simulation ended without results (the ServerApp failed; Flower's log above "
            f"says why); nothing was written to {out}"
        )
    return record


__all__ = [
    "DEFAULT_BACKEND",
    "run_fuss_simulation",
    "run_rounds_simulation",
    "simulation_client_app",
    "simulation_server_app",
]
