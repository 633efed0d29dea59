"""FUSS over Flower: a ServerApp and a ClientApp as thin adapters over :mod:`feds2r.fuss`.

Each round the server sends every SuperNode a message with the global head's tensors
(``arrays``, an ArrayRecord), the centroids to start from (``centroids``; absent for FedAvg
after the first round, when each client keeps its own) and the settings (``config``: the round,
the method and the :class:`~feds2r.fuss.FussConfig` as JSON). A client replies with its head
(``arrays``), its centroids and assignment counts (``centroids``) and a small ``meta`` record
(client name, image count, mean loss). No image, feature, label or file name is sent.

Communication is measured from the messages themselves: the size of each message's content as
Flower serialises it (:func:`~feds2r.federation.rounds.content_bytes`), summed over every
message sent and received.

The client's unlabelled images are named by its node config (``data="FORMAT:PATH"``, as for the
other ClientApp); their frozen features are computed in the first round and kept in the node's
``context.state`` with the client's own centroids, so later rounds do not recompute them.

Run config keys of the ServerApp: ``fuss-method`` (``fedavg`` or ``fuss``), ``num-clients``,
``fuss-config`` (a JSON object of :class:`~feds2r.fuss.FussConfig` fields), ``out`` (folder for
``fuss_model.pt`` and ``fuss_run.json``), ``connect-timeout`` and ``client-timeout`` (seconds).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from feds2r.errors import Feds2rError
from feds2r.federation.rounds import content_bytes
from feds2r.fuss import (
    ClientData,
    ClientUpdate,
    FussConfig,
    RoundRequest,
    SendFn,
    client_round,
    initial_model,
    load_split,
    run_federation,
)
from feds2r.io import write_atomic

FEATURES_STATE = "fuss-features"
"""``context.state`` key of a client's cached frozen features (and its own centroids)."""


def config_to_json(config: FussConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def config_from_json(text: str) -> FussConfig:
    """A :class:`FussConfig` from JSON (lists become the tuples the dataclass declares)."""
    try:
        fields = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise Feds2rError(f"fuss-config is not valid JSON ({exc}); pass a JSON object") from None
    known = {f.name for f in dataclasses.fields(FussConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise Feds2rError(f"unknown fuss-config keys {unknown}; valid: {sorted(known)}")
    return FussConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


# ----------------------------------------------------------------------------- messages


def encode_request(request: RoundRequest, method: str, config: FussConfig) -> RecordDict:
    """The content of one round's message to a client."""
    content = {
        "arrays": ArrayRecord(torch_state_dict=request.head),
        "config": ConfigRecord(
            {"round": request.round, "method": method, "fuss-config": config_to_json(config)}
        ),
    }
    if request.centroids is not None:
        content["centroids"] = ArrayRecord(torch_state_dict={"centroids": request.centroids})
    return RecordDict(content)


def decode_request(content: RecordDict) -> tuple[RoundRequest, str, FussConfig]:
    """(request, method, config) from a message's content (:func:`encode_request`)."""
    settings = dict(content["config"])
    centroids = None
    if "centroids" in content:
        centroids = content["centroids"].to_torch_state_dict()["centroids"]
    request = RoundRequest(
        int(settings["round"]), content["arrays"].to_torch_state_dict(), centroids
    )
    return request, str(settings["method"]), config_from_json(str(settings["fuss-config"]))


def encode_update(update: ClientUpdate) -> RecordDict:
    """The content of a client's reply."""
    return RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=update.head),
            "centroids": ArrayRecord(
                torch_state_dict={"centroids": update.centroids, "counts": update.counts}
            ),
            "meta": ConfigRecord(
                {
                    "client": update.client,
                    "images": int(update.images),
                    "loss": float(update.losses.get("loss", 0.0)),
                }
            ),
        }
    )


def decode_update(content: RecordDict) -> ClientUpdate:
    """A :class:`~feds2r.fuss.ClientUpdate` from a reply's content (:func:`encode_update`)."""
    meta = dict(content["meta"])
    tensors = content["centroids"].to_torch_state_dict()
    return ClientUpdate(
        client=str(meta["client"]),
        head=content["arrays"].to_torch_state_dict(),
        centroids=tensors["centroids"],
        counts=tensors["counts"],
        images=int(meta["images"]),
        losses={"loss": float(meta["loss"])},
    )


# ----------------------------------------------------------------------------- client


def _client_features(context: Context, spec: str, config: FussConfig) -> Tensor:
    """This node's features, from ``context.state`` or computed once and stored there."""
    key = f"{spec}|{config.backbone}|{config.height}"
    if FEATURES_STATE in context.state and "cache" in context.state:
        if str(context.state["cache"]["key"]) == key:
            return context.state[FEATURES_STATE].to_torch_state_dict()["features"]
    from feds2r.models.pixel_features import FrozenFeatures, compute_features

    images, _ = load_split(spec, config.height, labels=False)
    features = compute_features(FrozenFeatures(config.backbone), images)
    context.state[FEATURES_STATE] = ArrayRecord(torch_state_dict={"features": features})
    context.state["cache"] = ConfigRecord({"key": key})
    return features


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """One FUSS round on this node's unlabelled images."""
    from feds2r.federation.client_app import client_data
    from feds2r.federation.protocol import client_failure

    name = str(context.node_config.get("name") or "")
    try:
        spec, name = client_data(dict(context.node_config), dict(context.run_config))
        request, method, config = decode_request(msg.content)
        data = ClientData.build(name, _client_features(context, spec, config), config.knn)
        own = None
        if "own-centroids" in context.state:
            own = context.state["own-centroids"].to_torch_state_dict()["centroids"]
        update = client_round(request, data, config, own)
        context.state["own-centroids"] = ArrayRecord(
            torch_state_dict={"centroids": update.centroids}
        )
    except Exception as exc:  # the detail stays in this node's log (it may name paths)
        print(f"[feds2r fuss client {name}] round failed: {exc!r}", file=sys.stderr, flush=True)
        failure = {"client": name, "reason": client_failure(exc)}
        return Message(content=RecordDict({"failure": ConfigRecord(failure)}), reply_to=msg)
    return Message(content=encode_update(update), reply_to=msg)


# ----------------------------------------------------------------------------- server


def grid_send(
    grid: Grid,
    nodes: list[int],
    method: str,
    config: FussConfig,
    *,
    timeout: float = 3600.0,
    traffic: list[dict] | None = None,
) -> SendFn:
    """A :data:`~feds2r.fuss.SendFn` over Flower's grid; each round's measured bytes (down, up)
    are appended to ``traffic``."""

    def send(request: RoundRequest) -> list[ClientUpdate]:
        content = encode_request(request, method, config)
        messages = [Message(content=content, message_type="train", dst_node_id=n) for n in nodes]
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        updates, failed = [], []
        for reply in replies:
            if reply.has_error() or "failure" in reply.content:
                failed.append(reply.metadata.src_node_id)
                continue
            updates.append(decode_update(reply.content))
        if traffic is not None:
            traffic.append(
                {
                    "round": request.round,
                    "bytes_down": content_bytes(content) * len(messages),
                    "bytes_up": sum(content_bytes(r.content) for r in replies if not r.has_error()),
                    "failed_nodes": failed,
                }
            )
        return updates

    return send


server_app = ServerApp()


def _log(text: str) -> None:
    print(f"[feds2r fuss server] {text}", flush=True)


def _wait_for_nodes(grid: Grid, want: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() >= deadline:
            if not nodes:
                raise Feds2rError(f"no SuperNode connected within connect-timeout={timeout:g} s")
            return nodes
        time.sleep(1.0)


def run_server(grid: Grid, run_config: dict, *, log: Callable[[str], None] = _log) -> dict:
    """The ServerApp's work: R rounds over the connected nodes, the model and record written to
    ``out``. Returns the record (method, rounds, measured bytes per round)."""
    from feds2r.models.pixel_features import FrozenFeatures

    method = str(run_config.get("fuss-method", "fuss"))
    config = config_from_json(str(run_config.get("fuss-config", "")))
    nodes = _wait_for_nodes(
        grid, int(run_config.get("num-clients", 1)), float(run_config.get("connect-timeout", 60))
    )
    log(f"{method}: {config.rounds} rounds over {len(nodes)} clients")
    channels = FrozenFeatures(config.backbone).channels
    traffic: list[dict] = []
    send = grid_send(
        grid,
        nodes,
        method,
        config,
        timeout=float(run_config.get("client-timeout", 3600)),
        traffic=traffic,
    )
    result = run_federation(method, send, initial_model(config, channels), config, log=log)
    record = {
        "method": method,
        "clients": len(nodes),
        "fuss-config": dataclasses.asdict(config),
        "traffic": traffic,
        "bytes": sum(t["bytes_down"] + t["bytes_up"] for t in traffic),
    }
    if run_config.get("out"):
        out = Path(str(run_config["out"]))
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"head": result.head, "centroids": result.centroids}, out / "fuss_model.pt")
        write_atomic(out / "fuss_run.json", json.dumps(record, indent=2).encode())
    return record


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    record = run_server(grid, dict(context.run_config))
    log_bytes = record["bytes"] / 1e6
    _log(f"done: {record['clients']} clients, {log_bytes:.2f} MB exchanged")


__all__ = [
    "client_app",
    "decode_request",
    "decode_update",
    "encode_request",
    "encode_update",
    "grid_send",
    "run_server",
    "server_app",
]
