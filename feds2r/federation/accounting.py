"""What the one-shot exchange moves, measured as Flower serialises its messages.

The server sends each client one train message (the initial model's tensors and the training
settings, :func:`~feds2r.federation.config.train_settings`); each client replies once with its
model's tensors and the reply metadata (:data:`~feds2r.federation.replies.REPLY_METADATA`).
Both are built here as the ServerApp and the ClientApp build them and sized with
:func:`~feds2r.federation.rounds.content_bytes`; the multi-round flows count their own messages
(:mod:`feds2r.federation.rounds`).
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from feds2r.federation.config import FederationConfig, train_settings
from feds2r.federation.replies import reply_metadata
from feds2r.federation.rounds import content_bytes
from feds2r.models import SegModel


def one_shot_bytes(
    initial: SegModel, clients: Mapping[str, SegModel], config: FederationConfig
) -> tuple[int, int]:
    """(bytes of the train message to one client, bytes of all ``clients``' replies together)
    of a one-shot exchange under ``config``; ``clients``: each client's trained model by name."""
    train = {
        "arrays": ArrayRecord(torch_state_dict=initial.state_dict()),
        "config": ConfigRecord(train_settings(config)),
    }
    down = content_bytes(RecordDict(train))
    up = 0
    for name, model in clients.items():
        # a float's size does not depend on its value: 0 s stands for the training time
        meta = reply_metadata(name, model.preset.name, config.clients.steps, 0.0)
        arrays = ArrayRecord(torch_state_dict=model.state_dict())
        up += content_bytes(RecordDict({"arrays": arrays, "meta": ConfigRecord(meta)}))
    return down, up
