"""What the stages after distillation learn from (:class:`StageInputs`), in a module of its own:
the pipeline that runs those stages and the stages themselves (self-training, the lightweight
route) both import it, and neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass

from feds2r.config import check_types


@dataclass(frozen=True)
class StageInputs:
    """What a stage after distillation learns from (self-training, the lightweight route): the
    ``[server]`` table of its ``config.toml`` and of a config file given to ``feds2r server
    self-train`` or ``feds2r server lite``."""

    model: str = ""
    """The global model the stage starts from (self-training) or learns through (the large
    student of the lightweight route): a checkpoint folder."""
    clients: tuple[str, ...] = ()
    """The client checkpoints (folders): their combined targets are a term of the stage."""
    data: str = ""
    """The server's unlabelled real images (a dataset spec)."""
    generated: str = ""
    """Generated images (a dataset spec, or a folder written by ``feds2r server augment``)."""

    def __post_init__(self) -> None:
        check_types(self)
