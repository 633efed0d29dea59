"""feds2r: one-shot federated domain generalization for synthetic-to-real segmentation.

The public Python API (``docs/api.md`` has an example of the whole pipeline)::

    import feds2r

    model = feds2r.create_model("m2f-cpu", backbone_weights="public")
    feds2r.train_client("gta5:data/gta5", "m2f-cpu", "runs/gta5", feds2r.TrainConfig(steps=300))
    summary = feds2r.run_server_pipeline(clients, "cityscapes:data/cs", "runs/server",
                                         feds2r.ServerConfig())

The dataset API and the errors load with the package; every other name is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from feds2r.__version__ import __version__
from feds2r.data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, open_dataset
from feds2r.errors import DataError, Feds2rError

_LAZY = {
    # models and checkpoints
    "PRESETS": "feds2r.models",
    "SegModel": "feds2r.models",
    "create_model": "feds2r.models",
    "load_checkpoint": "feds2r.engine.checkpoint",
    "save_checkpoint": "feds2r.engine.checkpoint",
    # training and evaluation
    "TrainConfig": "feds2r.engine.train",
    "train": "feds2r.engine.train",
    "train_client": "feds2r.client",
    "evaluate": "feds2r.engine.evaluate",
    "pretrain": "feds2r.pretrain",
    "PretrainConfig": "feds2r.pretrain",
    # the server's stages and their configs
    "ServerConfig": "feds2r.server.pipeline",
    "GenerationConfig": "feds2r.server.pipeline",
    "UnstableRule": "feds2r.server.inconsistency",
    "DistillConfig": "feds2r.server.distill",
    "find_unstable": "feds2r.server.pipeline",
    "generate_images": "feds2r.server.pipeline",
    "run_distill": "feds2r.server.distill",
    "evaluate_checkpoint": "feds2r.server.pipeline",
    "run_server_pipeline": "feds2r.server.pipeline",
    "TeacherEnsemble": "feds2r.server.teachers",
    "fedavg": "feds2r.server.distill",
    "SelfTrainConfig": "feds2r.server.selftrain",
    "self_train": "feds2r.server.selftrain",
    "LiteConfig": "feds2r.server.lite",
    "distill_lite": "feds2r.server.lite",
    # the multi-round baselines (need Flower: pip install 'feds2r[flower]')
    "RoundsConfig": "feds2r.federation.round_client",
    "run_rounds": "feds2r.federation.rounds",
    # the whole demo
    "run_demo": "feds2r.demo",
}

__all__ = [  # the dataset API, then the lazily loaded names of _LAZY (a test keeps both equal)
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "DataError",
    "Feds2rError",
    "__version__",
    "open_dataset",
    "DistillConfig",
    "GenerationConfig",
    "LiteConfig",
    "PRESETS",
    "PretrainConfig",
    "RoundsConfig",
    "SegModel",
    "SelfTrainConfig",
    "ServerConfig",
    "TeacherEnsemble",
    "TrainConfig",
    "UnstableRule",
    "create_model",
    "distill_lite",
    "evaluate",
    "evaluate_checkpoint",
    "fedavg",
    "find_unstable",
    "generate_images",
    "load_checkpoint",
    "pretrain",
    "run_demo",
    "run_distill",
    "run_rounds",
    "run_server_pipeline",
    "save_checkpoint",
    "self_train",
    "train",
    "train_client",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'feds2r' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from feds2r.client import train_client
    from feds2r.demo import run_demo
    from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
    from feds2r.engine.evaluate import evaluate
    from feds2r.engine.train import TrainConfig, train
    from feds2r.federation.round_client import RoundsConfig
    from feds2r.federation.rounds import run_rounds
    from feds2r.models import PRESETS, SegModel, create_model
    from feds2r.pretrain import PretrainConfig, pretrain
    from feds2r.server.distill import DistillConfig, fedavg, run_distill
    from feds2r.server.inconsistency import UnstableRule
    from feds2r.server.lite import LiteConfig, distill_lite
    from feds2r.server.pipeline import (
        GenerationConfig,
        ServerConfig,
        evaluate_checkpoint,
        find_unstable,
        generate_images,
        run_server_pipeline,
    )
    from feds2r.server.selftrain import SelfTrainConfig, self_train
    from feds2r.server.teachers import TeacherEnsemble
