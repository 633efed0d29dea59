"""How much the client models disagree, class by class, on the server's unlabelled images.

Definition (our choice; the FedS2R summary says only that inconsistency is measured per class).
For class c and clients i, j, let M_i^c be the pixels that client i labels c (argmax of its
semantic probabilities). Over the whole server set,

    IoU_ij^c = sum |M_i^c ∩ M_j^c| / sum |M_i^c ∪ M_j^c|        (sums over all images)
    inconsistency_c = 1 - mean_{i<j} IoU_ij^c

The mean runs over the pairs where at least one of the two clients predicts c somewhere (a pair
where neither does agrees on c and is left out).

0 means every client marks exactly the same pixels as c; 1 means no two clients overlap on c.
Accumulating over the set (not averaging per image) weighs images by how much of c they show, as
mIoU does. A class that no client predicts anywhere has no defined score (None) and is not
selected: the clients agree it is absent, and no client could teach it on generated images.

Selection: a class is *unstable* if its score is at least the mean plus ``std_factor`` standard
deviations of the defined scores; at least ``min_unstable`` and at most ``max_unstable`` classes
are taken, highest scores first.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from feds2r.data.labels import CLASS_NAMES, NUM_CLASSES
from feds2r.errors import Feds2rError


class PairwiseAgreement:
    """Accumulates, per class and client pair, the intersection and union of predicted masks."""

    def __init__(self, num_clients: int, num_classes: int = NUM_CLASSES) -> None:
        if num_clients < 2:
            raise ValueError("inconsistency needs at least two clients")
        self.pairs = list(itertools.combinations(range(num_clients), 2))
        self.inter = torch.zeros(len(self.pairs), num_classes, dtype=torch.float64)
        self.union = torch.zeros(len(self.pairs), num_classes, dtype=torch.float64)
        self.num_classes = num_classes

    def update(self, preds: Tensor) -> None:
        """``preds`` (N_clients, B, H, W): each client's predicted train ids for the same images."""
        k = self.num_classes
        onehot = torch.nn.functional.one_hot(preds.long(), k).flatten(1, -2).bool()  # (N, P, K)
        for p, (i, j) in enumerate(self.pairs):
            a, b = onehot[i], onehot[j]
            self.inter[p] += (a & b).sum(0).double()
            self.union[p] += (a | b).sum(0).double()

    def scores(self) -> list[float | None]:
        """Inconsistency per class (1 - mean pairwise IoU), None where no client predicts it."""
        # a pair where neither client predicts the class agrees on it: it is left out of the mean
        seen = self.union > 0  # (pairs, K)
        iou = torch.where(seen, self.inter / self.union.clamp_min(1), torch.zeros(()))
        defined = seen.any(0)
        score = 1 - iou.sum(0) / seen.sum(0).clamp_min(1)
        return [float(s) if d else None for s, d in zip(score, defined, strict=True)]


def teacher_agreement(agree: PairwiseAgreement, num_clients: int) -> list[list[float | None]]:
    """Per client and class, its mean IoU with the other clients (None: no pair predicts it)."""
    iou = agree.inter / agree.union.clamp_min(1)
    seen = agree.union > 0
    out = []
    for n in range(num_clients):
        rows = [p for p, pair in enumerate(agree.pairs) if n in pair]
        s = seen[rows]
        mean = torch.where(s, iou[rows], torch.zeros(())).sum(0) / s.sum(0).clamp_min(1)
        out.append([float(m) if d else None for m, d in zip(mean, s.any(0), strict=True)])
    return out


@dataclass(frozen=True)
class UnstableRule:
    """Which classes count as unstable (see the module docstring)."""

    std_factor: float = 0.5
    """A class is unstable if its score is at least the mean plus this many standard deviations
    of the defined scores."""
    min_unstable: int = 3
    """At least this many classes are taken (the highest scores), whatever the threshold."""
    max_unstable: int = 6
    """At most this many classes are taken (the highest scores above the threshold)."""

    def __post_init__(self) -> None:
        from feds2r.config import check_types

        check_types(self)
        if not 0 <= self.min_unstable <= self.max_unstable:
            raise ValueError("need 0 <= min_unstable <= max_unstable")


@dataclass
class Inconsistency:
    """Per-class scores, the selected unstable classes, and the threshold used."""

    scores: dict[str, float | None]
    unstable: list[str]
    threshold: float
    num_images: int = 0
    clients: list[str] = field(default_factory=list)
    agreement: list[list[float | None]] = field(default_factory=list)
    """Per client and class: its mean IoU with the other clients (for weighting teachers)."""

    def to_dict(self) -> dict:
        return {
            "definition": "1 - mean pairwise IoU of the clients' predicted masks, per class, "
            "accumulated over the server set",
            "scores": self.scores,
            "unstable_classes": self.unstable,
            "threshold": self.threshold,
            "num_images": self.num_images,
            "clients": self.clients,
            "agreement": self.agreement,
        }


def select_unstable(
    scores: list[float | None], rule: UnstableRule = UnstableRule()
) -> tuple[list[str], float]:
    """Unstable class names (highest score first) and the threshold used."""
    defined = [(s, CLASS_NAMES[k]) for k, s in enumerate(scores) if s is not None]
    if not defined:
        return [], float("nan")
    values = np.array([s for s, _ in defined])
    threshold = float(values.mean() + rule.std_factor * values.std())
    ranked = sorted(defined, key=lambda t: -t[0])
    chosen = [name for s, name in ranked if s >= threshold][: rule.max_unstable]
    if len(chosen) < rule.min_unstable:
        chosen = [name for _, name in ranked[: rule.min_unstable]]
    return chosen, threshold


def _image_groups(dataset, batch_size: int):
    """The dataset's items in order, in groups of up to ``batch_size`` images of one size: only
    the group in use is held, never the set."""
    group: list[dict] = []
    for i in range(len(dataset)):
        item = dataset[i]
        if group and (len(group) == batch_size or group[0]["image"].shape != item["image"].shape):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


@torch.no_grad()
def measure_inconsistency(
    clients: list,
    dataset,
    *,
    rule: UnstableRule = UnstableRule(),
    height: int = 128,
    batch_size: int = 8,
    device="cpu",
    progress: bool = True,
    names: list[str] | None = None,
) -> Inconsistency:
    """Run every client model on every image of ``dataset`` (labels unused) and score classes.

    The images are read batch by batch and only the per-class, per-pair sums
    (:class:`PairwiseAgreement`) are kept: memory does not grow with the server set."""
    from tqdm import tqdm

    from feds2r.engine.evaluate import predict_probs

    agree = PairwiseAgreement(len(clients))
    bar = tqdm(total=len(dataset), desc="inconsistency", unit="img", disable=not progress)
    for group in _image_groups(dataset, batch_size):
        images = torch.stack([it["image"] for it in group]).to(device)
        size = tuple(images.shape[-2:])
        preds = torch.stack(
            [
                predict_probs(m, images, height=height, out_size=size).argmax(1).cpu()
                for m in clients
            ]
        )
        agree.update(preds)
        bar.update(len(group))
    bar.close()
    scores = agree.scores()
    unstable, threshold = select_unstable(scores, rule)
    return Inconsistency(
        scores=dict(zip(CLASS_NAMES, scores, strict=True)),
        unstable=unstable,
        threshold=threshold,
        num_images=len(dataset),
        clients=names or [f"client{i}" for i in range(len(clients))],
        agreement=teacher_agreement(agree, len(clients)),
    )


def plot_inconsistency(result: Inconsistency, dest) -> None:
    """Bar chart of the per-class scores, unstable classes highlighted, threshold dashed."""
    import os
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest = Path(dest)
    names = list(result.scores)
    values = [v if v is not None else 0.0 for v in result.scores.values()]
    colors = ["tab:red" if n in result.unstable else "tab:gray" for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(range(len(names)), values, color=colors)
    for k, v in enumerate(result.scores.values()):
        if v is None:
            ax.text(k, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    if result.threshold == result.threshold:  # not NaN
        ax.axhline(result.threshold, ls="--", color="k", lw=0.8, label="threshold")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("inconsistency (1 - mean pairwise IoU)")
    ax.set_ylim(0, 1)
    ax.set_title("client disagreement per class (red: unstable)", fontsize=9)
    fig.tight_layout()
    tmp = dest.with_name(f".{dest.name}.tmp.png")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, dest)


def load_inconsistency(path: str | Path) -> dict:
    """An inconsistency report (``Inconsistency.to_dict`` plus what it was measured on) from its
    JSON file or the folder holding ``inconsistency.json``; one clear error otherwise."""
    import json

    source = Path(path)
    if source.is_dir():
        source = source / "inconsistency.json"
    try:
        report = json.loads(source.read_text())
        if not isinstance(report, dict):
            raise KeyError("not a JSON object")
        for key in ("scores", "unstable_classes"):
            if key not in report:
                raise KeyError(key)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise Feds2rError(
            f"cannot read an inconsistency report from {source}: {exc}; run "
            "`feds2r server inconsistency` first"
        ) from None
    return report
