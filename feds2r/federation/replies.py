"""What a client may send back, and the server's check of it (no Flower).

A client's reply is its model's tensors and a small metadata record (:data:`REPLY_METADATA`),
or, when it failed, a failure record (:data:`FAILURE_METADATA`) whose reason is a category
(:func:`client_failure`), never the error's text. :func:`check_reply` turns a reply into a model
or rejects it with the reason; :func:`load_state` is the shape check both ends use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from feds2r.__version__ import __version__
from feds2r.data.labels import CLASS_NAMES
from feds2r.errors import DataError, Feds2rError
from feds2r.federation.config import FederationError
from feds2r.models import SegModel, create_model

REPLY_METADATA: dict[str, type] = {
    "client": str,
    "preset": str,
    "class-names": list,
    "steps": int,
    "train-seconds": float,
    "feds2r-version": str,
}
"""Every key a client's reply may carry besides the model tensors, with its type. Nothing else
(no image, label, per-sample value, file name or path) is sent; ``docs/federation.md``."""


def reply_metadata(client: str, preset: str, steps: int, train_seconds: float) -> dict[str, Any]:
    """A client's reply metadata: exactly the keys of :data:`REPLY_METADATA`."""
    return {
        "client": client,
        "preset": preset,
        "class-names": list(CLASS_NAMES),
        "steps": steps,
        "train-seconds": round(train_seconds, 2),
        "feds2r-version": __version__,
    }


FAILURE_METADATA: dict[str, type] = {"client": str, "reason": str}
"""Every key of a failed client's reply (its "failure" record). ``reason`` is a category from
:func:`client_failure`, never the error's text, which may name the client's files and paths."""


def client_failure(exc: BaseException) -> str:
    """What a client tells the server about its own failure: a category only.

    The error's message stays in the client's own log: a :class:`~feds2r.errors.DataError`
    names the private dataset's folders and files, and other errors may name paths too.
    """
    if isinstance(exc, DataError):
        what = "data error"
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        what = "out of memory"
    elif isinstance(exc, Feds2rError):
        what = "configuration error"
    else:
        what = f"unexpected error ({type(exc).__name__})"
    return f"{what} on the client; see the client's log"


def load_state(model: SegModel, state: dict[str, Tensor], what: str) -> None:
    """Load ``state`` into ``model`` after checking that its tensor names and shapes are the
    preset's; a :class:`FederationError` naming ``what`` (e.g. "the reply's model") otherwise."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise FederationError(
            f"{what} does not fit the {model.preset.name} preset: "
            f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(extra)} unexpected "
            f"(e.g. {extra[:2]})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise FederationError(
                f"{what}: tensor {key} has shape {tuple(value.shape)}, the {model.preset.name} "
                f"preset expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)


def check_reply(state: dict[str, Tensor], meta: dict[str, Any], preset: str) -> SegModel:
    """The client model in a reply, or a :class:`FederationError` saying why it is rejected."""
    unknown = sorted(set(meta) - set(REPLY_METADATA))
    if unknown:
        raise FederationError(f"reply carries undocumented metadata {unknown}")
    for key, kind in REPLY_METADATA.items():
        if key not in meta:
            raise FederationError(f"reply metadata lacks {key!r}")
        if not isinstance(meta[key], kind) and not (kind is float and isinstance(meta[key], int)):
            raise FederationError(f"reply metadata {key!r} is not a {kind.__name__}")
    if meta["preset"] != preset:
        raise FederationError(f"model preset is {meta['preset']!r}, the federation uses {preset!r}")
    if list(meta["class-names"]) != list(CLASS_NAMES):
        raise FederationError(
            f"model classes differ from the federation's {len(CLASS_NAMES)} classes "
            f"({len(meta['class-names'])} classes, first {list(meta['class-names'])[:3]})"
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise FederationError(f"reply entry {key!r} is not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FederationError(f"tensor {key} holds NaN or infinite values")
    model = create_model(preset)
    load_state(model, state, "the reply's model")
    return model.eval()


@dataclass
class Reply:
    """What came back from one client: a model and metadata, or the reason there is none."""

    client: str
    state: dict[str, Tensor] | None = None
    meta: dict[str, Any] | None = None
    error: str | None = None
    node_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


SendFn = Callable[[dict[str, Tensor], dict[str, Any]], list[Reply]]
"""Sends the initial model and settings to every client once; returns one :class:`Reply` each."""
