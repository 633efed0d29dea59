"""The parts of Flower the demo uses, when Flower is installed (``pip install 'feds2r[flower]'``):
the measured bytes of the one-shot exchange and the multi-round federations in this process.
Without Flower both are None and :data:`FLOWER_MISSING` says why."""

from __future__ import annotations

try:
    from feds2r.federation.accounting import one_shot_bytes
    from feds2r.federation.rounds import run_rounds_in_process

    FLOWER_MISSING = ""
except ImportError as exc:  # Flower is an optional dependency
    one_shot_bytes = run_rounds_in_process = None  # type: ignore[assignment]
    FLOWER_MISSING = str(exc)
