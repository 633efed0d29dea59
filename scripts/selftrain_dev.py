"""Self-training from an existing demo run's `feds2r` model; dev mIoU before and after.

    python scripts/selftrain_dev.py RUN WORLD OUT SEED ['{"threshold": 0.7, "refine": "builtin"}']

RUN: a `feds2r demo` output (default profile); WORLD: its world folder; the JSON holds
SelfTrainConfig fields. Scores on the server domain's dev split only (docs/results.md).
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

from feds2r.data import open_dataset
from feds2r.demo import PROFILES, world_spec
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.evaluate import evaluate
from feds2r.server.distill import DistillConfig
from feds2r.server.selftrain import SelfTrainConfig, self_train

run, world, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
over = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
p = PROFILES["public"]  # the default profile when these runs were made
recipe = dataclasses.replace(p.server.train, seed=seed)
clients = [run / "clients" / d for d in ("gta5-like", "synthia-like", "synscapes-like")]
t = time.perf_counter()
self_train(
    run / "feds2r",
    clients,
    world_spec(world, "cityscapes-like", "train"),
    out,
    SelfTrainConfig(**over),
    DistillConfig(feature_fusion=True),
    recipe,
    generated=f"folder:{run / 'generated' / 'images'}",
    progress=False,
)
dev = open_dataset(world_spec(world, "cityscapes-like", "dev"))
for name, path in (("feds2r", run / "feds2r"), ("feds2r+st", out)):
    m, _ = load_checkpoint(path)
    print(
        name, "dev mIoU", round(evaluate(m, dev, height=recipe.height, progress=False)["miou"], 2)
    )
print("seconds", round(time.perf_counter() - t))
