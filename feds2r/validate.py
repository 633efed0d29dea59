"""Checks of a federation's settings that need no data, model or process: run before `federate
local` starts a SuperLink and before `federate app` writes an app, so that a setting that cannot
work, or would be ignored, is refused at once (Flower-free; the ServerApp may call it too).

:func:`check_federation` takes the values of a :class:`~feds2r.federation.config.FederationConfig`
(duck-typed, so that this module imports no federation code); :func:`check_client_data` opens
every client's dataset spec.
"""

from __future__ import annotations

from typing import Any

from feds2r.errors import DataError, Feds2rError


def check_federation(config: Any) -> None:
    """Refuse settings of a federation that cannot work or would be ignored.

    ``config``: a ``FederationConfig`` (``preset``, ``method``, ``server.route``,
    ``server.lite``, ``pretrained``). Refused: an unknown ``--preset`` or ``--lite-preset``; a
    ``--route`` other than ``distill`` with a multi-round ``--method`` (those end with the
    averaged model, no server stage); a ``--lite-preset`` with a route without ``lite``; a
    lightweight model of the federation's own preset; a lightweight preset without a pretrained
    start.
    """
    from feds2r.models import PRESETS, start_source
    from feds2r.server.lite import LiteConfig
    from feds2r.server.pipeline import ServerConfig

    valid = ", ".join(PRESETS)
    if config.preset not in PRESETS:
        raise Feds2rError(f"--preset {config.preset!r} is not a model preset; valid: {valid}")
    route = config.server.route
    student = config.server.lite.student
    if config.method != "feds2r" and route != ServerConfig().route:
        raise Feds2rError(
            f"--route {route} applies only to --method feds2r: a multi-round method "
            f"({config.method}) ends with the clients' averaged model, with no server stage; "
            "leave --route out"
        )
    if "lite" not in route.split("+"):
        if student != LiteConfig().student:
            raise Feds2rError(
                f"--lite-preset {student} applies only to a route with lite (--route "
                f"distill+lite or distill+selftrain+lite), not to --route {route}; leave it out"
            )
        return
    if student == config.preset:
        raise Feds2rError(
            f"--lite-preset {student} is the federation's own --preset, so the lightweight "
            "model would be no lighter; give a smaller preset (see `feds2r models`)"
        )
    if config.server.lite.pretrained and getattr(config, "pretrained", True):
        try:
            start_source(student)
        except Feds2rError:
            raise Feds2rError(
                f"--lite-preset {student}: feds2r has no pretrained start for this preset, "
                "which the lightweight model starts from; choose one that has one "
                "(segformer-cpu, seg-effl0)"
            ) from None


def check_client_data(clients: list[tuple[str, str]]) -> None:
    """Open every client's labelled dataset spec (``(name, spec)`` pairs), so that a missing
    folder or a malformed spec is reported, naming the client, before any process starts."""
    from feds2r.data import open_dataset

    for name, spec in clients:
        try:
            dataset = open_dataset(spec, labels=True)
        except DataError as exc:
            raise DataError(f"--client {name}={spec}: {exc}", kind=exc.kind) from None
        if not dataset.with_labels:
            raise Feds2rError(
                f"--client {name}={spec}: format {dataset.spec.format!r} holds images only; a "
                "client trains on a labelled dataset (see `feds2r data formats`)"
            )


__all__ = ["check_client_data", "check_federation"]
