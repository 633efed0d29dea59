"""``feds2r data check``: read every file of a dataset and name every defect precisely."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from feds2r.data.dataset import DatasetSpec, list_dataset, parse_spec
from feds2r.data.formats import Defect, get_format
from feds2r.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from feds2r.errors import DataError
from feds2r.io import read_state


@dataclass
class CheckReport:
    """What ``check_dataset`` found: counts, sizes, the class histogram and the defects."""

    spec: str
    format: str
    split: str
    labelled: bool
    num_samples: int = 0
    num_read: int = 0
    image_sizes: Counter = field(default_factory=Counter)  # "HxW" -> count
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES + 1, np.int64))
    defects: list[Defect] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.defects

    def to_dict(self) -> dict:
        total = int(self.class_pixels.sum())
        return {
            "spec": self.spec,
            "format": self.format,
            "split": self.split,
            "labelled": self.labelled,
            "ok": self.ok,
            "num_samples": self.num_samples,
            "num_read": self.num_read,
            "image_sizes": dict(self.image_sizes.most_common()),
            "class_pixels": {
                name: int(n)
                for name, n in zip(CLASS_NAMES, self.class_pixels[:NUM_CLASSES], strict=True)
            }
            | {"ignore": int(self.class_pixels[NUM_CLASSES])},
            "class_fraction": {
                name: (float(n) / total if total else 0.0)
                for name, n in zip(CLASS_NAMES, self.class_pixels[:NUM_CLASSES], strict=True)
            },
            "defects": [d.__dict__ for d in self.defects],
            "defect_counts": dict(Counter(d.kind for d in self.defects)),
        }

    def to_text(self, max_defects: int = 20) -> str:
        lines = [
            f"dataset   {self.spec}",
            f"samples   {self.num_samples} listed, {self.num_read} read cleanly"
            + ("" if self.labelled else " (images only)"),
            "sizes     "
            + ", ".join(f"{s} x{n}" for s, n in self.image_sizes.most_common(5))
            + (" ..." if len(self.image_sizes) > 5 else ""),
        ]
        total = int(self.class_pixels.sum())
        if self.labelled and total:
            lines.append("classes   (share of all label pixels)")
            for name, n in zip((*CLASS_NAMES, "ignore"), self.class_pixels, strict=True):
                lines.append(f"  {name:<14} {100.0 * n / total:6.2f} %  {int(n):>12,d} px")
        if self.defects:
            counts = Counter(d.kind for d in self.defects)
            lines.append(
                f"DEFECTS   {len(self.defects)}: "
                + ", ".join(f"{k} x{n}" for k, n in counts.most_common())
            )
            for d in self.defects[:max_defects]:
                lines.append(f"  [{d.kind}] {d.message}")
            if len(self.defects) > max_defects:
                lines.append(f"  ... {len(self.defects) - max_defects} more (use --json for all)")
        else:
            lines.append("OK        no defects found")
        return "\n".join(lines)


def check_dataset(
    spec: str | DatasetSpec,
    split: str | None = None,
    *,
    labels: bool = True,
    progress: bool = True,
    **options: str,
) -> CheckReport:
    """Pair, read and validate every file of a dataset split; never raises on bad data.

    Raises :class:`DataError` (kind ``bad_spec``) only for a bad request: an unknown format,
    split or option. A folder that a feds2r command was still writing when it stopped (its
    ``.feds2r_output.json`` says ``"complete": false``) is reported as an ``incomplete`` defect.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    fmt = get_format(parsed.format)
    chosen = split or parsed.split or fmt.default_split
    labelled = labels and fmt.kind != "unlabelled"
    report = CheckReport(str(parsed), fmt.name, chosen, labelled)
    state = read_state(parsed.path)
    if state is not None and state.get("complete") is not True:
        report.defects.append(
            Defect(
                "incomplete",
                str(parsed.path),
                f"{parsed.path} is a partial output: `feds2r {state.get('kind', '?')}` stopped "
                "before it finished writing it (killed?); run that command again",
            )
        )
    try:
        # on_error="skip" lists unpaired files as defects instead of stopping at the first;
        # list_dataset reads no file, so every unreadable one is found below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = list_dataset(parsed, chosen, labels=labelled, on_error="skip", **options)
    except DataError as exc:
        if exc.kind == "bad_spec":
            raise
        report.defects.append(Defect(exc.kind, exc.path or str(parsed.path), str(exc)))
        return report
    report.spec = str(ds.spec)
    report.defects.extend(ds.defects)
    report.num_samples = len(ds)
    for i in tqdm(range(len(ds)), desc="checking", unit="img", disable=not progress):
        try:
            item = ds.read(i)
        except DataError as exc:
            report.defects.append(Defect(exc.kind, exc.path or "", str(exc)))
            continue
        report.num_read += 1
        h, w = item["image"].shape[:2]
        report.image_sizes[f"{h}x{w}"] += 1
        if "label" in item:
            lbl = item["label"]
            hist = np.bincount(lbl.ravel(), minlength=256)
            report.class_pixels[:NUM_CLASSES] += hist[:NUM_CLASSES]
            report.class_pixels[NUM_CLASSES] += hist[IGNORE_INDEX]
    return report
