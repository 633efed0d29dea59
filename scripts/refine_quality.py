"""How much does region refinement improve pseudo-labels? (issue 11, item 2)

Re-renders generated images of the built-in world together with their rendered labels (the
``builtin`` generator keeps only the image; the same scene spec and seed give the same scene),
lets a teacher predict them, and scores its pseudo-labels against the rendered labels before and
after refinement (:mod:`feds2r.server.refine`), for each region proposer and threshold.

The images are those of an earlier ``server augment`` / demo run (``--generated``, read from its
``prompts.jsonl``: the very images the server trained on) or, without it, new ones from builtin
prompts about ``--classes``. TEACHER is one or more checkpoint folders (more than one: their
mean). The labels are only read to score; nothing here trains.

For each setting: mIoU (%) on the pixels that keep a pseudo-label, and coverage, the share of
labelled pixels that keep one (a rule that drops the hard pixels scores higher on fewer pixels;
read both). ``threshold=0, min_share=0`` labels every pixel and compares directly with the
teacher's plain arg-max.

    OMP_NUM_THREADS=1 python scripts/refine_quality.py runs/demo-s1/feds2r \\
        --generated runs/demo-s1/generated --images 150 --json runs/refine-quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from feds2r.data.labels import IGNORE_INDEX
from feds2r.data.world import SceneSpec, render_scene
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.device import resolve_device
from feds2r.engine.evaluate import predict_probs
from feds2r.metrics import ConfusionMatrix
from feds2r.server.prompts import builtin_prompts
from feds2r.server.refine import confident_labels, make_proposer, refine
from feds2r.server.teachers import TeacherEnsemble


def scenes_from_run(folder: Path, num: int) -> list[tuple[SceneSpec, int, tuple[int, int], Path]]:
    """The first ``num`` images of a ``server augment`` output, as (spec, seed, size, file)."""
    summary = json.loads((folder / "generated.json").read_text())
    if summary.get("generator") != "builtin":
        raise SystemExit(f"{folder}: made by {summary.get('generator')!r}, not builtin: no labels")
    size = tuple(summary["size"])
    lines = (folder / "prompts.jsonl").read_text().splitlines()[:num]
    out = []
    for line in lines:
        p = json.loads(line)
        spec = SceneSpec(tuple(p["classes"]), p["weather"], p["time"], p["layout"])
        out.append((spec, p["seed"], size, folder / p["file"]))
    return out


def scenes_from_prompts(classes: list[str], num: int, size: tuple[int, int], seed: int):
    per = math.ceil(num / len(classes))
    prompts = builtin_prompts(dict.fromkeys(classes, per), seed=seed)
    prompts = [prompts[i * per + j] for j in range(per) for i in range(len(classes))][:num]
    return [
        (SceneSpec(p.classes, p.weather, p.time, p.layout), seed + k, size, None)
        for k, p in enumerate(prompts)
    ]


def score(cm: ConfusionMatrix, pred: torch.Tensor, label: torch.Tensor, counts: list) -> None:
    """Add one image: the confusion of the kept pixels, and (kept, labelled) pixel counts."""
    kept = pred != IGNORE_INDEX
    target = torch.where(kept, label, IGNORE_INDEX)
    cm.update(torch.where(kept, pred, 0), target)
    counts[0] += int((target != IGNORE_INDEX).sum())
    counts[1] += int((label != IGNORE_INDEX).sum())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("teacher", nargs="+", type=Path, help="checkpoint folder(s)")
    parser.add_argument("--generated", type=Path, help="a builtin `server augment` output folder")
    parser.add_argument("--classes", default="car,person,bicycle,motorcycle,bus,rider,truck")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", default="128x256", help="HxW without --generated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=96, help="teacher inference height")
    parser.add_argument("--proposers", default="builtin,watershed")
    parser.add_argument("--sam-dir", type=Path, help="a local SAM model folder (adds `sam`)")
    parser.add_argument("--thresholds", default="0,0.5,0.7,0.968")
    parser.add_argument("--min-share", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write the table here too")
    args = parser.parse_args()

    device = resolve_device(args.device)
    models = [load_checkpoint(p, device)[0] for p in args.teacher]
    teacher = models[0] if len(models) == 1 else TeacherEnsemble(models)
    if args.generated:
        scenes = scenes_from_run(args.generated, args.images)
    else:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        scenes = scenes_from_prompts(args.classes.split(","), args.images, size, args.seed)
    proposers = {n: make_proposer(n) for n in args.proposers.split(",") if n}
    if args.sam_dir:
        proposers["sam"] = make_proposer("sam", model_dir=args.sam_dir, device=args.device)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    # setting name -> (confusion, [kept, labelled]); seconds per proposer
    settings: dict[str, tuple[ConfusionMatrix, list]] = {}
    seconds = dict.fromkeys(proposers, 0.0)

    def add(name: str, pred: torch.Tensor, label: torch.Tensor) -> None:
        cm, counts = settings.setdefault(name, (ConfusionMatrix(), [0, 0]))
        score(cm, pred, label, counts)

    differ = 0  # re-rendered images that are not the stored ones (there should be none)
    for spec, seed, size, file in scenes:
        image, label = render_scene(spec, "generated", size=size, seed=seed)
        if file is not None and file.is_file():
            differ += not np.array_equal(cv2.imread(str(file))[..., ::-1], image)
        img = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)  # (1, 3, H, W)
        label = torch.from_numpy(label.astype(np.int64))
        probs = predict_probs(teacher, img, height=args.height, out_size=size)[0].cpu()
        for t in thresholds:
            add(f"per pixel, t={t:g}", confident_labels(probs, t), label)
        for name, proposer in proposers.items():
            start = time.perf_counter()
            regions = proposer.regions(img[0])
            seconds[name] += time.perf_counter() - start
            add(f"{name}, t=0, all pixels", refine(probs, regions, threshold=0, min_share=0), label)
            for t in thresholds:
                refined = refine(probs, regions, threshold=t, min_share=args.min_share)
                add(f"{name}, t={t:g}, share>={args.min_share:g}", refined, label)

    rows = []
    for name, (cm, (kept, labelled)) in settings.items():
        s = cm.summary()
        rows.append(
            {
                "setting": name,
                "miou": s["miou"],
                "pixel_acc": s["pixel_acc"],
                "coverage": 100 * kept / max(labelled, 1),
            }
        )
    print(f"{len(scenes)} generated images, teacher {', '.join(map(str, args.teacher))}")
    if differ:
        print(f"warning: {differ} re-rendered images differ from the stored ones")
    print(f"| {'setting':34s} | mIoU | pixel acc | coverage |")
    print(f"|{'-' * 36}|------|-----------|----------|")
    for r in rows:
        print(
            f"| {r['setting']:34s} | {r['miou']:4.1f} | {r['pixel_acc']:9.1f} |"
            f" {r['coverage']:7.1f}% |"
        )
    timing = {n: 1000 * s / len(scenes) for n, s in seconds.items()}
    print("region proposal, ms/image: " + ", ".join(f"{n} {v:.1f}" for n, v in timing.items()))
    if args.json:
        args.json.write_text(
            json.dumps({"images": len(scenes), "rows": rows, "ms_per_image": timing}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
