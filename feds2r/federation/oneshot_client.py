"""A client's part of the one-shot federation, without Flower: train the received initial model
on the private data and reply (:func:`client_round`); :func:`in_process_send` runs every client
in this process, for the demo, the tests and ``feds2r federate`` without Flower."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from feds2r.client import train_client
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.errors import Feds2rError
from feds2r.federation.config import check_client_name, client_recipe
from feds2r.federation.replies import Reply, SendFn, client_failure, load_state, reply_metadata
from feds2r.models import create_model


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

    Returns the trained tensors and the reply metadata
    (:data:`~feds2r.federation.replies.REPLY_METADATA`). The training run (logs, resumable
    state) lives in ``workdir`` (default: a temporary folder, removed).
    """
    preset = str(settings["preset"])
    config = client_recipe(settings)
    with tempfile.TemporaryDirectory(prefix="feds2r-client-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        model = create_model(preset)
        load_state(model, init_state, "the server's initial model")
        save_checkpoint(model, work / "init", meta={"role": "initial"})
        start = time.perf_counter()
        train_client(data, preset, work / "model", config, init=work / "init", progress=progress)
        trained, _ = load_checkpoint(work / "model")
        state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    meta = reply_metadata(name, preset, config.steps, time.perf_counter() - start)
    return state, meta


def in_process_send(
    clients: dict[str, str],
    workdir: str | Path | None = None,
    *,
    client_log: Callable[[str], None] | None = None,
) -> SendFn:
    """A :data:`~feds2r.federation.replies.SendFn` that runs each client (name -> dataset spec)
    in this process.

    A client that fails replies as over Flower: its name and
    :func:`~feds2r.federation.replies.client_failure`'s category; the error's text goes to
    ``client_log`` only (default: standard error), the client's log.
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
