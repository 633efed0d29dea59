"""The one-shot federation as plain functions, independent of the transport.

The server sends one message to each client: the common initial model's tensors and the training
settings (:func:`~feds2r.federation.config.train_settings`). Each client trains on its private
data (:func:`~feds2r.federation.oneshot_client.client_round`) and replies with its model's
tensors and a small metadata record (:data:`~feds2r.federation.replies.REPLY_METADATA`). The
server checks every reply (:func:`~feds2r.federation.replies.check_reply`), keeps the valid ones,
and runs the server pipeline: :func:`run_federation`, this module's own function. The Flower
apps in this package only move these values between machines;
:func:`~feds2r.federation.oneshot_client.in_process_send` moves them within one process.

The parts live in their own modules: the configuration (:mod:`~feds2r.federation.config`), the
replies and their checks (:mod:`~feds2r.federation.replies`), the client's training
(:mod:`~feds2r.federation.oneshot_client`) and the output folder
(:mod:`~feds2r.federation.outputs`); their public names are importable from here too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from feds2r.config import write_run_config
from feds2r.engine.checkpoint import save_checkpoint
from feds2r.federation.config import (
    CLIENT_LOCAL,
    CLIENT_NAME,
    CLIENT_RECIPE,
    RUN_CONFIG_ALIASES,
    SENT_ALWAYS,
    FederationConfig,
    FederationError,
    check_client_name,
    check_server_inputs,
    client_recipe,
    train_settings,
)
from feds2r.federation.oneshot_client import client_round, in_process_send
from feds2r.federation.outputs import (
    check_new_output,
    folder_name,
    move_json_paths,
    moved_paths,
    staged,
)
from feds2r.federation.replies import (
    FAILURE_METADATA,
    REPLY_METADATA,
    Reply,
    SendFn,
    check_reply,
    client_failure,
    load_state,
)
from feds2r.io import write_atomic
from feds2r.models import PRETRAINED, create_model
from feds2r.server.pipeline import run_server_pipeline


def run_federation(
    send: SendFn,
    config: FederationConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The server's whole run: initial model, one exchange, checks, server pipeline.

    Everything is written to a staging folder beside ``config.out`` and renamed into place at
    the end, so a failed run leaves no half-written output. Raises :class:`FederationError` when
    fewer than ``config.min_clients`` valid models came back.
    """
    out = Path(config.out)
    check_new_output(out)
    check_server_inputs(config)  # before any client trains
    with staged(out) as stage:
        write_run_config(stage, {"federation": config})
        torch.manual_seed(config.clients.seed)
        weights = PRETRAINED if config.pretrained else None
        init = create_model(config.preset, backbone_weights=weights)
        save_checkpoint(init, stage / "init", meta={"role": "initial"})
        start = time.perf_counter()
        replies = send(init.state_dict(), train_settings(config))
        exchange_s = round(time.perf_counter() - start, 2)
        accepted: dict[str, Path] = {}
        report: dict[str, dict[str, Any]] = {}
        # a fixed order (by client name), whatever order the transport delivered them in
        for reply in sorted(replies, key=lambda r: r.client):
            name = folder_name(reply.client, report)
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
        results = moved_paths(results, str(stage), str(out))
        move_json_paths(stage, str(stage), str(out))
        write_atomic(stage / "results.json", json.dumps(results, indent=2).encode())
    return results


__all__ = [
    "CLIENT_LOCAL",
    "CLIENT_NAME",
    "CLIENT_RECIPE",
    "FAILURE_METADATA",
    "REPLY_METADATA",
    "RUN_CONFIG_ALIASES",
    "SENT_ALWAYS",
    "FederationConfig",
    "FederationError",
    "Reply",
    "SendFn",
    "check_client_name",
    "check_new_output",
    "check_reply",
    "check_server_inputs",
    "client_failure",
    "client_recipe",
    "client_round",
    "folder_name",
    "in_process_send",
    "load_state",
    "move_json_paths",
    "moved_paths",
    "run_federation",
    "staged",
    "train_settings",
]
