"""The Flower ClientApp: receive the initial model once, train on the private data, reply.

In a multi-round flow (FedAvg, FedProx, FedSeg: :mod:`feds2r.federation.rounds`) it receives the
global model every round and replies with its round's update (:func:`round_reply`).

Adapter only: :func:`feds2r.federation.oneshot_client.client_round` and
:func:`feds2r.federation.round_client.client_update` do the work. The private
dataset is named by the SuperNode's node config (``--node-config 'data="gta5:/data/gta5"
name="gta5"'``); in the Simulation Engine, by the run config's ``client-data`` list at the
virtual node's ``partition-id``.

A client that fails replies with a "failure" record (:data:`~feds2r.federation.replies.
FAILURE_METADATA`: its name and a category) instead of the model; the error itself is printed to
this SuperNode's log only, since its text may name the private data's paths and files.
"""

from __future__ import annotations

import sys
import traceback

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from feds2r.federation.config import FederationError
from feds2r.federation.oneshot_client import client_round
from feds2r.federation.replies import client_failure
from feds2r.federation.round_client import client_update, is_round_message

app = ClientApp()


def client_data(node_config: dict, run_config: dict) -> tuple[str, str]:
    """(dataset spec, client name) of this node."""
    if node_config.get("data"):
        spec = str(node_config["data"])
        return spec, str(node_config.get("name") or spec.split(":", 1)[0])
    specs = [s.strip() for s in str(run_config.get("client-data", "")).split(";") if s.strip()]
    if "partition-id" in node_config and specs:
        k = int(node_config["partition-id"])
        if k >= len(specs):
            raise FederationError(
                f"virtual client {k} has no dataset: client-data lists {len(specs)} specs"
            )
        return specs[k], f"client-{k}"
    raise FederationError(
        "this SuperNode names no private dataset: start it with --node-config 'data=\"SPEC\"'"
    )


def round_reply(msg: Message, spec: str, name: str) -> Message:
    """The ClientApp's reply to a round's train message: the tensors, the metrics FedAvg weighs
    by, and the client's name (``meta``)."""
    state = msg.content["arrays"].to_torch_state_dict()
    settings = dict(msg.content["config"])
    trained, metrics = client_update(state, settings, spec, name=name)
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=trained),
            "metrics": MetricRecord(metrics),
            "meta": ConfigRecord({"client": name}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    name = str(context.node_config.get("name") or "")
    try:
        spec, name = client_data(dict(context.node_config), dict(context.run_config))
        settings = dict(msg.content["config"])
        if is_round_message(settings):  # a multi-round flow (FedAvg, FedProx, FedSeg)
            return round_reply(msg, spec, name)
        state = msg.content["arrays"].to_torch_state_dict()
        workdir = context.node_config.get("workdir") or None
        trained, meta = client_round(state, settings, spec, name=name, workdir=workdir)
    except Exception as exc:
        # the detail (paths, file names) stays in this SuperNode's log; the server gets the
        # client's name and a category only (FAILURE_METADATA)
        print(f"[feds2r client {name}] training failed:", file=sys.stderr, flush=True)
        traceback.print_exc(file=sys.stderr)
        failure = {"client": name, "reason": client_failure(exc)}
        return Message(content=RecordDict({"failure": ConfigRecord(failure)}), reply_to=msg)
    content = RecordDict(
        {"arrays": ArrayRecord(torch_state_dict=trained), "meta": ConfigRecord(meta)}
    )
    return Message(content=content, reply_to=msg)
