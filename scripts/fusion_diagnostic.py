"""Are the clients' feature spaces aligned enough to fuse? (diagnostic for docs/results.md)

For a demo run folder: pixel-wise cosine similarity between every two clients' decoder features,
the share of each teacher's predicted pixels that change when it decodes the averaged features,
the classes those fused predictions still contain, and each client's relative parameter change
from the common initial model.

    python scripts/fusion_diagnostic.py runs/demo-s0 --images 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from feds2r.data import open_dataset
from feds2r.data.world import SYNTHETIC_DOMAINS
from feds2r.engine.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a `feds2r demo` output folder")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--world", type=Path, help="the run's world folder (default RUN/world)")
    args = parser.parse_args()
    teachers = [load_checkpoint(args.run / "clients" / d)[0] for d in SYNTHETIC_DOMAINS]
    init = load_checkpoint(args.run / "init")[0]
    world = args.world or args.run / "world"
    ds = open_dataset(f"cityscapes:{world}/cityscapes-like?split=train", labels=False)
    x = torch.stack([ds[i]["image"] for i in range(min(args.images, len(ds)))])
    with torch.no_grad():
        outs = [t(x) for t in teachers]
        fused = torch.stack([o.features for o in outs]).mean(0)
        size = tuple(outs[0].features.shape[-2:])
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                cos = F.cosine_similarity(outs[i].features, outs[j].features, dim=1).mean()
                print(f"feature cosine {SYNTHETIC_DOMAINS[i]} / {SYNTHETIC_DOMAINS[j]}: {cos:.3f}")
        for name, t, o in zip(SYNTHETIC_DOMAINS, teachers, outs, strict=True):
            own = o.semantic_probs(size).argmax(1)
            fz = t.head_from_features(o, fused).semantic_probs(size).argmax(1)
            print(
                f"{name}: {float((own != fz).float().mean()):.2f} of pixels change with fused "
                f"features; fused prediction has classes {fz.unique().tolist()}"
            )
    torch.set_grad_enabled(False)
    for name, t in zip(SYNTHETIC_DOMAINS, teachers, strict=True):
        num = sum(
            ((p - q) ** 2).sum() for p, q in zip(t.parameters(), init.parameters(), strict=True)
        )
        den = sum((q**2).sum() for q in init.parameters())
        change = float((num / den) ** 0.5)
        print(f"{name}: relative parameter change from the initial model {change:.2f}")


if __name__ == "__main__":
    main()
