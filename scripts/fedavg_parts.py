"""Why does the one-shot parameter mean (FedAvg) collapse? Average one part of the model at a time.

For a demo run folder: on the server's unlabelled images, how often each model's arg-max agrees
with the clients' ensemble, for (a) every client, (b) the full parameter mean, (c) the mean of the
backbones only, each client keeping its own pixel decoder and transformer decoder, and (d) the
mean of the decoders only, each client keeping its own backbone. If (c) stays close to (a) and (d)
collapses like (b), the backbones (which start from the shared pretrained weights) still average
well and the decoders (which start random) do not.

    python scripts/fedavg_parts.py runs/demo --images 32
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from feds2r.data import open_dataset
from feds2r.data.world import SYNTHETIC_DOMAINS
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache


def _mean_into(models, part: str):
    """Copies of ``models`` whose ``part`` ("backbone" or "decoders") is the models' mean."""
    backbone_ids = [{id(p) for p in m.backbone().parameters()} for m in models]
    params = [dict(m.named_parameters()) for m in models]
    out = [copy.deepcopy(m) for m in models]
    for key in params[0]:
        in_backbone = id(params[0][key]) in backbone_ids[0]
        if in_backbone != (part == "backbone"):
            continue
        mean = torch.stack([p[key].detach() for p in params]).mean(0)
        for m in out:
            dict(m.named_parameters())[key].data.copy_(mean)
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a `feds2r demo` output folder")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args()
    clients = [load_checkpoint(args.run / "clients" / d)[0] for d in SYNTHETIC_DOMAINS]
    fedavg = load_checkpoint(args.run / "fedavg-oneshot")[0]
    world = args.run / "world"
    ds = open_dataset(f"cityscapes:{world}/cityscapes-like?split=train", labels=False)
    sub = torch.utils.data.Subset(ds, range(min(args.images, len(ds))))
    x = torch.stack(ResizedCache(sub, args.height, with_labels=False, progress=False).images)
    size = tuple(x.shape[-2:])
    probs = [m.predict(x, size) for m in clients]
    ensemble = torch.stack(probs).mean(0).argmax(1)

    def agree(model) -> float:
        return float((model.predict(x, size).argmax(1) == ensemble).float().mean())

    print(f"{'model':40s} agreement with the ensemble")
    for name, m in zip(SYNTHETIC_DOMAINS, clients, strict=True):
        print(f"{'client ' + name:40s} {agree(m):.3f}")
    print(f"{'full parameter mean (fedavg-oneshot)':40s} {agree(fedavg):.3f}")
    for part, label in (("backbone", "mean backbone, own decoders"),
                        ("decoders", "mean decoders, own backbone")):  # fmt: skip
        for name, m in zip(SYNTHETIC_DOMAINS, _mean_into(clients, part), strict=True):
            print(f"{label + ' (' + name + ')':40s} {agree(m):.3f}")


if __name__ == "__main__":
    main()
