"""The Flower ClientApp: receive the initial model once, train on the private data, reply.

Adapter only: :func:`feds2r.federation.protocol.client_round` does the work. The private
dataset is named by the SuperNode's node config (``--node-config 'data="gta5:/data/gta5"
name="gta5"'``); in the Simulation Engine, by the run config's ``client-data`` list at the
virtual node's ``partition-id``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feds2r.federation.protocol import FederationError, client_round

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


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec, name = client_data(dict(context.node_config), dict(context.run_config))
    state = msg.content["arrays"].to_torch_state_dict()
    settings = dict(msg.content["config"])
    workdir = context.node_config.get("workdir") or None
    try:
        trained, meta = client_round(state, settings, spec, name=name, workdir=workdir)
    except Exception as exc:  # the reason travels to the server in Flower's error reply
        raise FederationError(f"client {name!r}: {type(exc).__name__}: {exc}") from exc
    content = RecordDict(
        {"arrays": ArrayRecord(torch_state_dict=trained), "meta": ConfigRecord(meta)}
    )
    return Message(content=content, reply_to=msg)
