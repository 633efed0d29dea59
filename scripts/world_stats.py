"""Class pixel shares of each built-in domain, next to the published statistics they follow.

Renders ``--num`` scenes per domain (nothing is written) and prints, per class, the share of all
pixels in percent; where a published table exists for the dataset a domain imitates, it is printed
beside it (sources in ``docs/world.md``).

    python scripts/world_stats.py --num 300 --size 128x256
"""

from __future__ import annotations

import argparse

import numpy as np

from feds2r.data.labels import CLASS_NAMES
from feds2r.data.world.domains import ACDC_CONDITIONS, DOMAINS
from feds2r.data.world.synth import _SCENE_TO_TRAIN, _draw, _rng, sample_spec

# Share of all pixels (%), per class in train-id order. Cityscapes fine train set, GTA5 and
# SYNTHIA-RAND-CITYSCAPES as tabulated in m-birke/automotive-segmentation-datasets.
PUBLISHED = {
    "cityscapes": (32.7, 5.3, 20.1, 0.59, 0.77, 1.12, 0.18, 0.50, 14.3, 0.98, 3.5, 1.1, 0.13, 6.0,
                   0.24, 0.23, 0.19, 0.085, 0.40),
    "gta5": (32.1, 8.28, 16.9, 1.84, 0.63, 1.06, 0.13, 0.08, 7.6, 2.2, 13.5, 0.36, 0.03, 2.52,
             1.13, 0.37, 0.065, 0.03, 0.005),
    "synthia": (18.4, 19.3, 29.3, 0.27, 0.27, 1.04, 0.04, 0.10, 10.3, 0.0, 6.9, 4.3, 0.47, 4.1,
                0.0, 1.5, 0.0, 0.21, 0.22),
}  # fmt: skip
REFERENCE = {"gta5-like": "gta5", "synthia-like": "synthia", "synscapes-like": "cityscapes",
             "cityscapes-like": "cityscapes", "acdc-like": "cityscapes"}  # fmt: skip


def domain_shares(name: str, num: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Per-class share (%) of all pixels over ``num`` rendered scenes, plus ignore last."""
    dom = DOMAINS[name]
    counts = np.zeros(256, np.int64)
    for i in range(num):
        cond = ACDC_CONDITIONS[i % 4] if dom.format == "acdc" else None
        rng = _rng(seed, name, "stats", i, size)
        spec = sample_spec(dom.layout, rng, cond)
        _, lbl = _draw(spec, dom.style, dom.layout, size, rng, jpeg=False)
        counts += np.bincount(_SCENE_TO_TRAIN[lbl].ravel(), minlength=256)
    shares = np.append(counts[:19], counts[255]) * 100.0 / counts.sum()
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    table = {name: domain_shares(name, args.num, size, args.seed) for name in DOMAINS}
    names = list(CLASS_NAMES) + ["ignore"]
    cols = list(DOMAINS)
    if args.markdown:
        print("| class | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for k, cls in enumerate(names):
            cells = []
            for c in cols:
                ref = REFERENCE.get(c)
                pub = f" ({PUBLISHED[ref][k]:g})" if ref and k < 19 else ""
                cells.append(f"{table[c][k]:.2f}{pub}")
            print(f"| {cls} | " + " | ".join(cells) + " |")
        return
    print(f"{'class':<14}" + "".join(f"{c[:12]:>14}" for c in cols))
    for k, cls in enumerate(names):
        row = f"{cls:<14}"
        for c in cols:
            ref = REFERENCE.get(c)
            pub = f"/{PUBLISHED[ref][k]:.2f}" if ref and k < 19 else ""
            row += f"{table[c][k]:>8.2f}{pub:>6}"[-14:].rjust(14)
        print(row)


if __name__ == "__main__":
    main()
