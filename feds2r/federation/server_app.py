"""The Flower ServerApp: one train message to every SuperNode, then the server pipeline; or,
with ``method`` fedavg, fedprox or fedseg in the run config, that many rounds of Flower's own
strategy (:func:`feds2r.federation.rounds.run_rounds`).

Adapter only: :func:`feds2r.federation.protocol.run_federation` does the work; this module sends
its one exchange over Flower's Message API. Settings come from the run config
(``[tool.flwr.app.config]``, keys as in :class:`~feds2r.federation.config.FederationConfig`).
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from feds2r.federation.config import FederationConfig, FederationError
from feds2r.federation.protocol import run_federation
from feds2r.federation.replies import FAILURE_METADATA, Reply, SendFn
from feds2r.federation.rounds import run_rounds

app = ServerApp()


def _log(text: str) -> None:
    print(f"[feds2r server] {text}", flush=True)


def grid_send(grid: Grid, config: FederationConfig) -> SendFn:
    """A :data:`~feds2r.federation.replies.SendFn` over Flower: one message per SuperNode."""

    def send(init_state, settings) -> list[Reply]:
        nodes = _wait_for_nodes(grid, config)
        _log(f"sending the initial model to {len(nodes)} clients: nodes {nodes}")
        arrays = ArrayRecord(torch_state_dict=init_state)
        messages = [
            Message(
                content=RecordDict({"arrays": arrays, "config": ConfigRecord(dict(settings))}),
                message_type="train",
                dst_node_id=node,
            )
            for node in nodes
        ]
        got = {
            m.metadata.src_node_id: m
            for m in grid.send_and_receive(messages, timeout=config.client_timeout)
        }
        replies = []
        for node in nodes:
            msg = got.get(node)
            if msg is None:
                replies.append(
                    Reply(
                        f"node-{node}",
                        node_id=node,
                        error=f"no reply within client-timeout={config.client_timeout:g} s",
                    )
                )
            elif msg.has_error():  # raised outside feds2r's ClientApp (Flower's own reply)
                replies.append(
                    Reply(
                        f"node-{node}",
                        node_id=node,
                        error=f"client failed: {msg.error.reason}",
                    )
                )
            elif "failure" in msg.content:  # feds2r's ClientApp failed: its name and a category
                replies.append(_failure_reply(dict(msg.content["failure"]), node))
            else:
                meta = dict(msg.content["meta"]) if "meta" in msg.content else {}
                if isinstance(meta.get("class-names"), tuple):
                    meta["class-names"] = list(meta["class-names"])
                state = (
                    msg.content["arrays"].to_torch_state_dict() if ("arrays" in msg.content) else {}
                )
                replies.append(
                    Reply(str(meta.get("client") or f"node-{node}"), state, meta, node_id=node)
                )
        return replies

    return send


def _failure_reply(failure: dict, node: int) -> Reply:
    """The :class:`Reply` of a client that reported its failure (:data:`FAILURE_METADATA`)."""
    name = failure.get("client")
    name = name if isinstance(name, str) and name else f"node-{node}"
    reason = failure.get("reason")
    if set(failure) != set(FAILURE_METADATA) or not isinstance(reason, str):
        keys = sorted(failure)
        return Reply(name, node_id=node, error=f"rejected: failure record with keys {keys}")
    return Reply(name, node_id=node, error=f"client failed: {reason[:300]}")


def _wait_for_nodes(grid: Grid, config: FederationConfig) -> list[int]:
    deadline = time.monotonic() + config.connect_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if config.num_clients and len(nodes) >= config.num_clients:
            return nodes
        if time.monotonic() >= deadline:
            if len(nodes) < config.min_clients:
                raise FederationError(
                    f"only {len(nodes)} SuperNodes connected within connect-timeout="
                    f"{config.connect_timeout:g} s; min-clients={config.min_clients}"
                )
            return nodes
        time.sleep(1.0)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = FederationConfig.from_run_config(dict(context.run_config))
    if config.method != "feds2r":  # a multi-round baseline on Flower's own strategy
        _wait_for_nodes(grid, config)
        results = run_rounds(grid, config, log=_log)
    else:
        results = run_federation(grid_send(grid, config), config, progress=False, log=_log)
    _log(f"global model written to {results['global_model']}")
    if results.get("miou"):
        _log(f"global model mIoU: {results['miou']}")
