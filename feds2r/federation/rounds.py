"""Multi-round federations on Flower's own strategies: FedAvg, FedProx and FedSeg.

These are the baselines FedS2R's single exchange is compared with: the federations people run
today talk for many rounds. The server side is Flower's ``FedAvg`` and ``FedProx`` strategies
(:mod:`flwr.serverapp.strategy`) and their ``start(grid, ...)`` loop, with feds2r's accounting
around them (:class:`CountedFedAvg`, :class:`CountedFedProx`): every train message and every reply
is measured as the protobuf Flower serialises it (:func:`content_bytes`), and a client whose
reply is a failure, or that does not reply, is named in the log and left out of that round's
mean while enough clients remain. FedSeg is FedAvg aggregation; its clients train with FedSeg's
losses (:func:`client_update`, :mod:`feds2r.losses.fedseg`).

The client's part, :func:`client_update`, trains the received global model for its round's
share of the recipe's steps (round r of R trains steps ``[(r-1)T/R, rT/R)`` of a T-step recipe,
with the learning rate the one-shot client has at those steps: every method spends the same client
steps on the same schedule). The same functions run in three places: Flower's deployment
(``feds2r federate local --method fedavg``, the ServerApp and ClientApp of this package), the
Simulation Engine, and in one process (:class:`InProcessGrid`, the demo's rows).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.supercore.task_identity import TaskIdentity

from feds2r.config import write_run_config
from feds2r.data import open_dataset
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.evaluate import evaluate
from feds2r.errors import Feds2rError
from feds2r.federation.client_app import train as client_app_train
from feds2r.federation.config import (
    ROUND_METHODS,
    FederationConfig,
    RoundsConfig,
    check_server_inputs,
    train_settings,
)
from feds2r.federation.outputs import check_new_output, staged
from feds2r.federation.round_client import ROUND_LOSSES, client_update, round_steps
from feds2r.io import write_atomic
from feds2r.models import PRETRAINED, create_model


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it (its protobuf, the bulk of what
    travels; the message's metadata adds a few hundred bytes)."""
    return int(recorddict_to_proto(content).ByteSize())


def round_settings(config: FederationConfig, loss: str = "") -> dict[str, Any]:
    """The train config of every round's message: the one-shot flow's settings (the preset and
    the clients' recipe, :func:`~feds2r.federation.protocol.train_settings`), the method and R;
    Flower's strategies add ``server-round`` (and FedProx ``proximal-mu``). ``loss``: the
    clients' supervised term (:data:`~feds2r.federation.round_client.ROUND_LOSSES`), sent only
    when given (without it a client uses its model's own supervised loss)."""
    settings = {
        **train_settings(config),
        "method": config.method,
        "rounds": config.multiround.rounds,
    }
    if config.method == "fedseg":
        settings["contrast-weight"] = config.multiround.contrast_weight
    if loss:
        if loss not in ROUND_LOSSES:
            raise Feds2rError(f"unknown round loss {loss!r}; valid: {', '.join(ROUND_LOSSES)}")
        settings["loss"] = loss
    return settings


# ----------------------------------------------------------------------------- the server


class _Counted:
    """Accounting around a Flower strategy: bytes and steps per client, rounds, drop-outs.

    ``sample_seed``: with a strategy that samples some clients per round, Flower's own sampling
    (``random.sample`` over the connected nodes) draws from a generator seeded by
    ``(sample_seed, round)``, so a run's clients per round are reproducible; the process's
    ``random`` state is restored after each draw. None: Flower's sampling as it is.
    """

    def __init__(
        self,
        *args: Any,
        log: Callable[[str], None] = print,
        sample_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self.sample_seed = sample_seed
        self.names: dict[int, str] = {}
        self.clients: dict[int, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self._sent: dict[int, set[int]] = {}
        self._round_bytes = {"download_bytes": 0, "upload_bytes": 0}

    def _entry(self, node: int) -> dict[str, Any]:
        return self.clients.setdefault(
            node, {"download_bytes": 0, "upload_bytes": 0, "rounds": 0, "train_steps": 0}
        )

    def configure_train(self, server_round, arrays, config, grid):  # noqa: D102 - Flower's
        if self.sample_seed is None:
            messages = list(super().configure_train(server_round, arrays, config, grid))
        else:
            saved = random.getstate()
            random.seed(self.sample_seed * 1_000_003 + server_round)
            try:
                messages = list(super().configure_train(server_round, arrays, config, grid))
            finally:
                random.setstate(saved)
        self._round_bytes = {"download_bytes": 0, "upload_bytes": 0}
        for m in messages:
            size = content_bytes(m.content)
            self._entry(m.metadata.dst_node_id)["download_bytes"] += size
            self._round_bytes["download_bytes"] += size
        self._sent[server_round] = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_train(self, server_round, replies):  # noqa: D102 - Flower's
        valid, dropped = [], {}
        replies = list(replies)
        for m in replies:
            node = m.metadata.src_node_id
            if m.has_error():
                dropped[node] = f"client failed: {m.error.reason}"
                continue
            size = content_bytes(m.content)  # a failure record travels too
            self._entry(node)["upload_bytes"] += size
            self._round_bytes["upload_bytes"] += size
            if "failure" in m.content:
                failure = dict(m.content["failure"])
                self.names.setdefault(node, str(failure.get("client") or f"node-{node}"))
                dropped[node] = f"client failed: {str(failure.get('reason'))[:300]}"
                continue
            if "meta" in m.content:
                self.names[node] = str(m.content["meta"].get("client") or f"node-{node}")
            entry = self._entry(node)
            entry["rounds"] += 1
            entry["train_steps"] += int(m.content["metrics"].get("train-steps", 0))
            valid.append(m)
        replied = {m.metadata.src_node_id for m in replies}
        for node in sorted(self._sent.get(server_round, set()) - replied):
            dropped[node] = "no reply within the timeout"
        for node, why in sorted(dropped.items()):
            self.log(f"round {server_round}: client {self.name(node)} dropped out ({why})")
        self.history.append(
            {
                "round": server_round,
                "clients": sorted(self.name(m.metadata.src_node_id) for m in valid),
                "dropped": {self.name(n): why for n, why in sorted(dropped.items())},
                **self._round_bytes,
            }
        )
        # a fixed order (by client name): the weighted mean's float sums do not depend on the
        # order the transport or the strategy's node sampling delivered the replies in
        valid.sort(key=lambda m: self.name(m.metadata.src_node_id))
        if len(valid) < self.min_clients:
            raise Feds2rError(
                f"round {server_round}: only {len(valid)} clients sent a model, fewer than "
                f"min-clients={self.min_clients}"
            )
        return super().aggregate_train(server_round, valid)

    def name(self, node: int) -> str:
        return self.names.get(node, f"node-{node}")

    def communication(self) -> dict[str, Any]:
        """The measured communication: per client and in total."""
        per = {self.name(n): dict(e) for n, e in sorted(self.clients.items())}
        total = {
            k: sum(e[k] for e in per.values())
            for k in ("download_bytes", "upload_bytes", "train_steps")
        }
        total["megabytes"] = round((total["download_bytes"] + total["upload_bytes"]) / 1e6, 3)
        return {"rounds": len(self.history), "clients": per, "total": total}


def _sampling(min_clients: int, per_round: int, available: int) -> dict[str, Any]:
    """Flower's sampling arguments: every connected client each round (``per_round`` 0), or
    exactly ``per_round`` of them once ``available`` have connected."""
    if not per_round:
        return {
            "fraction_train": 1.0,
            "min_train_nodes": min_clients,
            "min_available_nodes": min_clients,
        }
    if per_round < min_clients:
        raise Feds2rError(
            f"clients per round ({per_round}) is below min-clients ({min_clients}): no round "
            "could be aggregated"
        )
    # Flower samples max(int(n * fraction_train), min_train_nodes) nodes; a fraction this small
    # makes the first term 0, so exactly per_round nodes are drawn
    return {
        "fraction_train": 1e-9,
        "min_train_nodes": per_round,
        "min_available_nodes": max(available, per_round),
    }


class CountedFedAvg(_Counted, FedAvg):
    """Flower's FedAvg (the parameter mean weighted by ``num-examples``), counted; every client
    each round, or ``per_round`` of the ``available`` ones drawn with ``sample_seed``."""

    def __init__(
        self,
        *,
        min_clients: int,
        log: Callable[[str], None] = print,
        per_round: int = 0,
        available: int = 0,
        sample_seed: int | None = None,
    ) -> None:
        super().__init__(
            fraction_evaluate=0.0,
            log=log,
            sample_seed=sample_seed if per_round else None,
            **_sampling(min_clients, per_round, available),
        )
        self.min_clients = min_clients


class CountedFedProx(_Counted, FedProx):
    """Flower's FedProx (FedAvg aggregation; its clients add the proximal term), counted;
    sampling as :class:`CountedFedAvg`."""

    def __init__(
        self,
        *,
        min_clients: int,
        proximal_mu: float,
        log: Callable[[str], None] = print,
        per_round: int = 0,
        available: int = 0,
        sample_seed: int | None = None,
    ) -> None:
        super().__init__(
            fraction_evaluate=0.0,
            proximal_mu=proximal_mu,
            log=log,
            sample_seed=sample_seed if per_round else None,
            **_sampling(min_clients, per_round, available),
        )
        self.min_clients = min_clients


def make_strategy(
    config: FederationConfig, log: Callable[[str], None] = print, *, clients_per_round: int = 0
) -> _Counted:
    """The Flower strategy of ``config.method``: FedProx for fedprox, FedAvg otherwise. With
    ``clients_per_round``, each round draws that many of the ``config.num_clients`` clients
    (seeded by ``config.clients.seed``); else every client trains every round."""
    sampling = {
        "per_round": clients_per_round,
        "available": config.num_clients,
        "sample_seed": config.clients.seed,
    }
    if config.method == "fedprox":
        return CountedFedProx(
            min_clients=config.min_clients,
            proximal_mu=config.multiround.proximal_mu,
            log=log,
            **sampling,
        )
    return CountedFedAvg(min_clients=config.min_clients, log=log, **sampling)


def run_rounds(
    grid: Grid,
    config: FederationConfig,
    *,
    init: str | Path | None = None,
    evaluate_on: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    clients_per_round: int = 0,
    loss: str = "",
    evaluate_every: int = 1,
) -> dict[str, Any]:
    """The server's multi-round run over ``grid``: the common initial model (or ``init``, a
    checkpoint), ``config.multiround.rounds`` rounds of ``config.method``'s strategy, the global
    model saved to ``OUT/global``, ``results.json`` with the communication and, per round, the
    mIoU on ``evaluate_on`` (name -> labelled dataset; default the config's evaluation sets).

    ``clients_per_round``: each round trains that many of the ``config.num_clients`` clients,
    drawn reproducibly from ``config.clients.seed`` (0: every client every round). ``loss``: the
    clients' supervised term ("ce" or "backce", :func:`round_settings`; "" leaves it to each
    client's model). Either, when not given, is ``config.multiround``'s (what a deployment's run
    config sets: ``multiround.clients-per-round``, ``multiround.loss``). ``evaluate_every``:
    the mIoU curve has the initial model, every ``evaluate_every``-th round and the last.

    Written into a staging folder and renamed into place at the end, as the one-shot flow."""
    if config.method not in ROUND_METHODS:
        raise Feds2rError(f"run_rounds runs {', '.join(ROUND_METHODS)}, not {config.method!r}")
    if evaluate_every < 1:
        raise Feds2rError(f"evaluate_every must be at least 1, got {evaluate_every}")
    clients_per_round = clients_per_round or config.multiround.clients_per_round
    loss = loss or config.multiround.loss
    out = Path(config.out)
    check_new_output(out)
    check_server_inputs(config)
    if evaluate_on is None:
        evaluate_on = {n: open_dataset(s) for n, s in config.evaluation_sets().items()}
    with staged(out) as stage:
        write_run_config(stage, {"federation": config})
        if init is not None:
            model, _ = load_checkpoint(init)
        else:
            torch.manual_seed(config.clients.seed)
            weights = PRETRAINED if config.pretrained else None
            model = create_model(config.preset, backbone_weights=weights)
        save_checkpoint(model, stage / "init", meta={"role": "initial"})
        template = copy.deepcopy(model)
        curve: dict[str, list[list[float]]] = {}

        def evaluate_fn(server_round: int, arrays: ArrayRecord):
            if not evaluate_on:
                return None
            if server_round % evaluate_every and server_round != config.multiround.rounds:
                return None
            template.load_state_dict(arrays.to_torch_state_dict())
            template.eval()
            scores = {}
            for name, ds in evaluate_on.items():
                miou = evaluate(template, ds, height=config.clients.height, progress=False)
                scores[name] = float(miou["miou"])
                curve.setdefault(name, []).append([server_round, round(scores[name], 3)])
            log(f"round {server_round}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            return MetricRecord(scores)

        strategy = make_strategy(config, log=log, clients_per_round=clients_per_round)
        settings = round_settings(config, loss)
        start = time.perf_counter()
        log(f"{config.method}: {config.multiround.rounds} rounds")
        result = strategy.start(
            grid,
            ArrayRecord(torch_state_dict=model.state_dict()),
            num_rounds=config.multiround.rounds,
            timeout=config.client_timeout,
            train_config=ConfigRecord(settings),
            evaluate_fn=evaluate_fn,
        )
        seconds = round(time.perf_counter() - start, 2)
        model.load_state_dict(result.arrays.to_torch_state_dict())
        save_checkpoint(
            model.eval(),
            stage / "global",
            meta={
                "role": "server",
                "route": config.method,
                "rounds": config.multiround.rounds,
                "clients": [strategy.name(n) for n in sorted(strategy.clients)],
            },
        )
        results = {
            "method": config.method,
            "rounds": config.multiround.rounds,
            **({"clients_per_round": clients_per_round} if clients_per_round else {}),
            **({"loss": loss} if loss else {}),
            "global_model": str(out / "global"),
            "communication": strategy.communication(),
            "history": strategy.history,
            "curve": curve,
            "miou": {k: v[-1][1] for k, v in curve.items()},
            "timing_s": {"rounds": seconds},
        }
        write_atomic(stage / "results.json", json.dumps(results, indent=2).encode())
    return results


# ----------------------------------------------------------------------------- in one process


@contextmanager
def flower_log_held_back():
    """Flower's own log at WARNING inside the block (its per-round INFO lines held back; feds2r's
    ``log`` says what each round did), restored after."""
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flwr_log.setLevel(level)


@contextmanager
def _task_identity():
    """Flower's task identity, which its messages read, for a run inside this process."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class InProcessGrid(Grid):
    """A Flower :class:`Grid` whose nodes are ClientApp handlers called in this process, one
    after another: a strategy's ``start(grid, ...)`` runs unchanged, and every message is the
    one a deployment would send (its bytes are counted the same way).

    ``clients``: name -> dataset spec; node k (1-based) runs ``handler(message, context)`` (by
    default the feds2r ClientApp's train function) with node config ``{"data", "name"}``.
    """

    def __init__(self, clients: dict[str, str], handler: Callable | None = None) -> None:
        self.handler = handler if handler is not None else client_app_train
        self.contexts = {
            k: Context(
                run_id=0,
                node_id=k,
                node_config={"data": spec, "name": name},
                state=RecordDict(),
                run_config={},
            )
            for k, (name, spec) in enumerate(clients.items(), start=1)
        }
        self._pending: dict[str, Message] = {}
        self._run = None

    def set_run(self, run) -> None:  # noqa: D102 - Flower's
        self._run = run

    @property
    def run(self):  # noqa: D102 - Flower's
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: D102
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102 - Flower's
        return list(self.contexts)

    def get_nodes(self):  # noqa: D102 - Flower's
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        replies = []
        for mid in list(message_ids):
            msg = self._pending.pop(mid, None)
            if msg is None:
                continue
            reply = self.handler(msg, self.contexts[msg.metadata.dst_node_id])
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            replies.append(reply)
        return replies

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102 - Flower's
        return self.pull_messages(self.push_messages(messages))


def run_rounds_in_process(
    clients: dict[str, str], config: FederationConfig, **options: Any
) -> dict[str, Any]:
    """:func:`run_rounds` with every client trained in this process (:class:`InProcessGrid`);
    Flower's own per-round INFO log is held back (``log`` says what each round did)."""
    with flower_log_held_back(), _task_identity():
        return run_rounds(InProcessGrid(clients), config, **options)


__all__ = [
    "ROUND_METHODS",
    "CountedFedAvg",
    "CountedFedProx",
    "InProcessGrid",
    "RoundsConfig",
    "client_update",
    "content_bytes",
    "flower_log_held_back",
    "make_strategy",
    "round_steps",
    "run_rounds",
    "run_rounds_in_process",
]
