"""FedSeg's client losses (Miao et al., "FedSeg: Class-Heterogeneous Federated Learning for
Semantic Segmentation", CVPR 2023; ``fedseg-paper.txt``).

FedSeg is FedAvg (its eq. (2)) whose clients train with

- the **background-aware cross-entropy** :func:`back_cross_entropy`, eq. (4)–(5): at a pixel
  that is background for client *i* (it carries none of the classes ``C_i`` the client
  annotates), the target probability is the summed probability of every class the client does
  not annotate, ``q̂(j, bg) = Σ_{k ∈ C \\ C_i} q(j, k)``. Its gradient, eq. (7), pushes the logits
  of the un-annotated classes *up* on background pixels, where plain CE only pushes them down;
- the **local-to-global pixel contrastive loss** :func:`local_to_global_contrastive`, eq. (8) in
  its pixel-to-region form (sec. 3.3): each sampled pixel embedding of the local model is pulled
  towards the global model's region embeddings of its class (one per local image and class, the
  memory ``V_g^r`` ∈ (N, K, D), :class:`PixelMemory`) and pushed from those of other classes;
- combined as eq. (9), ``L = L_backce + λ L_con`` (:func:`fedseg_loss`).

Values not given in the paper's text are those of its public recipe, ``lightas/FedSeg``
(``run_city.sh``, the Cityscapes run, and the code it calls), cited where each is used:
τ = 0.07, λ = 1, at most 4096 anchors per batch spread evenly over the classes present,
pseudo-label threshold θ = 0.8, L2-normalised embeddings and region means, the memory rebuilt
from the global model at the start of every round from the second round on.

**What "background" is in feds2r's label space.** Every label map holds the 19 Cityscapes train
ids and 255 (ignore); there is no background id. A client's annotated set ``C_i`` is what its
data can label (:func:`annotated_classes`: the format's id table and, for the built-in world, the
domain's classes; SYNTHIA: 16 classes, no terrain, truck or train). Eq. (5) is applied literally:

- a pixel labelled with an annotated class ``c ∈ C_i`` keeps ``q(j, c)`` (plain CE);
- a pixel labelled with a train id the client does *not* annotate is background: its target is
  the merged mass of ``C \\ C_i`` (whichever of those classes its label names). Reading a
  dataset never yields such a pixel (the id table maps un-annotated native ids to 255), but an
  experiment that hides classes from a client, as the paper's own partitions do (sec. 4.1: "each
  subset maintains one or two semantic classes and sets other classes as background"), passes
  the full labels and a smaller ``client_classes``, and the hidden classes become background;
- a pixel labelled 255 stays ignored by default, as in plain CE. feds2r's 255 pixels are not
  "one of the un-annotated classes": they are void, the ego vehicle and SYNTHIA's lane markings
  (which are road for Cityscapes), so merging them into, e.g., SYNTHIA's truck/train/terrain
  mass would teach wrong classes. The public recipe does merge them (its ``BackCELoss`` maps
  255 to the background channel whenever a class is missing from the batch, because its
  partitions write the erased classes as 255); ``ignore_is_background=True`` reproduces that.

- a pixel labelled :data:`~feds2r.data.partition.BACKGROUND_INDEX` (254) is background: the
  value a class-heterogeneous partition (:mod:`feds2r.data.partition`, the paper's sec. 4.1)
  writes where it erased a class the client does not annotate, so that the client never sees
  which class it was.

Consequence: with ``ignore_is_background=False`` and the annotated set of a dataset read as it
is, ``back_cross_entropy`` equals plain CE on every built-in client; it differs only on
background pixels, which exist when classes are hidden from a client (a partition's parts, or
full labels with a smaller ``client_classes``) or 255 is taken as background.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.data.dataset import SegmentationDataset
from feds2r.data.labels import IGNORE_INDEX, NUM_CLASSES, class_index
from feds2r.data.partition import BACKGROUND_INDEX
from feds2r.data.world.domains import DOMAINS
from feds2r.data.world.synth import MANIFEST
from feds2r.errors import DataError

# The public recipe's values (lightas/FedSeg run_city.sh; see the module docstring).
TEMPERATURE = 0.07  # run_city.sh TEMP=0.07 (options.py --temperature default 0.07)
CONTRAST_WEIGHT = 1.0  # run_city.sh CON_LAMB=1: λ of eq. (9) (options.py default 0.1)
MAX_ANCHORS = 4096  # run_city.sh MAX_ANCHOR=4096 (options.py default 1024)
PSEUDO_THRESHOLD = 0.8  # θ of sec. 3.3; segmentation/update.py keeps a pseudo label at p >= 0.8


# ----------------------------------------------------------------------------- eq. (4)-(5)


def _annotated_mask(client_classes: Iterable[int], num_classes: int, device) -> Tensor:
    """(K,) bool: True for the classes the client annotates."""
    classes = sorted({int(c) for c in client_classes})
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"client_classes {bad} are not class ids 0..{num_classes - 1}")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[classes] = True
    return mask


def back_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    client_classes: Iterable[int],
    ignore_index: int = IGNORE_INDEX,
    *,
    ignore_is_background: bool = False,
    background_index: int = BACKGROUND_INDEX,
) -> Tensor:
    """FedSeg's background-aware cross-entropy ``L_backce``, eq. (4)–(5); a scalar.

    ``logits`` (B, K, H, W), ``labels`` (B, H, W) int64 with values in 0..K-1, ``ignore_index``
    or ``background_index`` (a partition's erased pixels: background whatever class they were);
    ``client_classes``: the train ids the client annotates (``C_i``).
    With ``q = softmax(logits)`` over K and ``P`` the pixels not ignored::

        L = -1/|P| Σ_{j∈P} log q̂(j, y_j)
        q̂(j, c) = q(j, c)                    if c ∈ C_i
                 = Σ_{k ∈ C \\ C_i} q(j, k)    if c ∉ C_i   (background)

    Gradient at a background pixel (eq. (7) for ``C_i = {l}``): ``∂L/∂z_c = p_c`` for
    ``c ∈ C_i`` and ``∂L/∂z_c = -p_c · Σ_{k∈C_i} e^{z_k} / Σ_{k∉C_i} e^{z_k}`` (< 0) for
    ``c ∉ C_i``; at an annotated pixel it is plain CE's eq. (6), ``p_c - [c = y_j]``.

    Pixels labelled ``ignore_index`` are ignored; with ``ignore_is_background`` they are
    background instead (the public recipe's choice, see the module docstring) unless the client
    annotates every class, where no background exists. Equals ``F.cross_entropy(logits, labels,
    ignore_index=ignore_index)`` when ``client_classes`` holds every class. No pixel left: 0,
    still attached to the graph.
    """
    b, k, h, w = logits.shape
    if labels.shape != (b, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    annotated = _annotated_mask(client_classes, k, logits.device)  # (K,)
    ignored = labels == ignore_index
    marked = labels == background_index  # erased by a partition: background
    invalid = ~ignored & ~marked & ((labels < 0) | (labels >= k))
    if invalid.any():
        values = torch.unique(labels[invalid])[:10].tolist()
        raise ValueError(
            f"labels hold {values}: neither class ids 0..{k - 1}, {ignore_index} (ignore) nor "
            f"{background_index} (background)"
        )
    if annotated.all() and marked.any():
        raise ValueError(
            "labels mark background pixels but client_classes holds every class, so no class "
            "is left to merge into background; pass the classes the client annotates"
        )
    safe = labels.masked_fill(ignored | marked, 0)  # (B, H, W), a valid index everywhere
    log_q = F.log_softmax(logits, dim=1)  # (B, K, H, W)
    log_target = log_q.gather(1, safe[:, None]).squeeze(1)  # (B, H, W): log q(j, y_j)
    if not annotated.all():
        # labelled with an un-annotated class, or erased by a partition
        background = (~annotated[safe] & ~ignored) | marked
        if ignore_is_background:
            background |= ignored
            ignored = torch.zeros_like(ignored)
        log_bg = torch.logsumexp(log_q[:, ~annotated], dim=1)  # (B, H, W): log Σ_{k∉C_i} q
        log_target = torch.where(background, log_bg, log_target)
    kept = ~ignored
    if not kept.any():
        return logits.sum() * 0.0
    return -log_target[kept].mean()


# ----------------------------------------------------------------------------- sec. 3.3


@dataclass(frozen=True)
class PixelMemory:
    """The global model's region embeddings over one client's local images (sec. 3.3).

    ``regions`` (N, K, D): for local image n and class k, the L2-normalised mean of the global
    model's pixel embeddings labelled k in that image (the paper's ``V_g^r``);
    ``present`` (N, K) bool: whether image n holds class k at all (else that slot is unused).
    Built with :func:`empty_memory` and :func:`update_memory`; never trained (no gradient).
    """

    regions: Tensor
    present: Tensor

    def __post_init__(self) -> None:
        if self.regions.ndim != 3 or self.present.shape != self.regions.shape[:2]:
            raise ValueError(
                f"PixelMemory needs regions (N, K, D) and present (N, K); got "
                f"{tuple(self.regions.shape)} and {tuple(self.present.shape)}"
            )

    def bank(self) -> tuple[Tensor, Tensor]:
        """The used slots as a flat bank: embeddings (M, D) and their classes (M,)."""
        index = self.present.nonzero()  # (M, 2): image, class
        return self.regions[index[:, 0], index[:, 1]], index[:, 1]


def empty_memory(
    num_images: int, dim: int, num_classes: int = NUM_CLASSES, device=None
) -> PixelMemory:
    """A memory of ``num_images`` images with no region yet."""
    return PixelMemory(
        regions=torch.zeros(num_images, num_classes, dim, device=device),
        present=torch.zeros(num_images, num_classes, dtype=torch.bool, device=device),
    )


def _resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H, W) labels to (B, h, w) by nearest neighbour (no blended ids)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def region_embeddings(
    embeddings: Tensor,
    labels: Tensor,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Per-image class means of pixel embeddings: the pixel-to-region step of sec. 3.3.

    ``embeddings`` (B, D, h, w), ``labels`` (B, H, W) (resized to (h, w) by nearest neighbour;
    ``ignore_index`` pixels count for no class). Returns ``regions`` (B, K, D), each mean
    L2-normalised as in the public recipe (``federated_main.py`` normalises the region means), and
    ``present`` (B, K) bool. Computed without gradient: it describes the global model.
    """
    with torch.no_grad():
        b, d, h, w = embeddings.shape
        lbl = _resize_labels(labels, (h, w)).flatten(1)  # (B, h*w)
        onehot = F.one_hot(lbl.masked_fill(lbl == ignore_index, num_classes), num_classes + 1)
        onehot = onehot[..., :num_classes].to(embeddings.dtype)  # (B, h*w, K)
        counts = onehot.sum(1)  # (B, K)
        sums = torch.einsum("bpk,bdp->bkd", onehot, embeddings.flatten(2))  # (B, K, D)
        regions = F.normalize(sums / counts.clamp_min(1)[..., None], dim=-1)
    return regions, counts > 0


def update_memory(
    memory: PixelMemory, indices: Tensor, regions: Tensor, present: Tensor
) -> PixelMemory:
    """A new memory with the slots of local images ``indices`` (B,) replaced.

    ``regions`` (B, K, D) and ``present`` (B, K) from :func:`region_embeddings` of the global
    model on those images. The public recipe rebuilds the whole memory at the start of every
    round (``federated_main.py`` calls ``get_protos`` with the new global model), so a slot is
    replaced, not blended. The input memory is left unchanged.
    """
    idx = indices.to(memory.regions.device).long()
    new_regions = memory.regions.clone()
    new_present = memory.present.clone()
    new_regions[idx] = regions.detach().to(new_regions.dtype)
    new_present[idx] = present.to(new_present.device)
    return PixelMemory(new_regions, new_present)


def pseudo_labels(
    labels: Tensor,
    global_logits: Tensor,
    client_classes: Iterable[int] | None = None,
    threshold: float = PSEUDO_THRESHOLD,
    ignore_index: int = IGNORE_INDEX,
    background_index: int = BACKGROUND_INDEX,
) -> Tensor:
    """Labels (B, H, W) whose background pixels take the global model's confident prediction.

    Sec. 3.3: "we employ the global model to provide pseudo labels for the background pixels
    ... the predicted probability of a pixel greater than θ is annotated as the pseudo label".
    Background: pixels labelled ``ignore_index``, ``background_index`` (a partition's erased
    pixels) or a class outside ``client_classes`` (None: every class annotated).
    ``global_logits`` (B, K, h, w) are upsampled bilinearly to (H, W); a background pixel whose
    highest probability is at least ``threshold`` (θ = 0.8, the recipe's ``update.py``) gets
    that class, the others stay ``ignore_index``. Annotated pixels keep their label. Used for
    the memory and the anchors alike.
    """
    with torch.no_grad():
        k = global_logits.shape[1]
        probs = F.softmax(
            F.interpolate(global_logits.float(), size=labels.shape[-2:], mode="bilinear",
                          align_corners=False),
            dim=1,
        )  # fmt: skip
        confidence, guess = probs.max(1)  # (B, H, W)
        ignored = labels == ignore_index
        marked = labels == background_index
        background = ignored | marked
        if client_classes is not None:
            annotated = _annotated_mask(client_classes, k, labels.device)
            background |= ~annotated[labels.masked_fill(background, 0)] & ~background
        guess = guess.masked_fill(confidence < threshold, ignore_index)
        return torch.where(background, guess, labels)


def _sample_anchors(labels: Tensor, max_anchors: int, generator) -> Tensor:
    """Indices of at most ``max_anchors`` pixels, split evenly over the classes present.

    As the public recipe's ``_anchor_sampling`` (``myseg/bisenet_utils.py``): each class gets
    ``max_anchors // n_classes`` pixels, drawn at random where it has more.
    """
    classes = torch.unique(labels)
    if classes.numel() == 0:
        return labels.new_zeros(0)
    quota = max(max_anchors // classes.numel(), 1)
    picked = []
    for c in classes:
        where = (labels == c).nonzero().flatten()
        if where.numel() > quota:
            order = torch.randperm(where.numel(), generator=generator, device="cpu")
            where = where[order[:quota].to(where.device)]
        picked.append(where)
    return torch.cat(picked)


def local_to_global_contrastive(
    embeddings: Tensor,
    labels: Tensor,
    memory: PixelMemory,
    *,
    temperature: float = TEMPERATURE,
    max_anchors: int = MAX_ANCHORS,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FedSeg's local-to-global pixel contrastive loss ``L_con``, eq. (8) pixel-to-region; scalar.

    ``embeddings`` (B, D, h, w): the **local** model's pixel embeddings (L2-normalised here over
    D, as the recipe's projection head does); ``labels`` (B, H, W), resized to (h, w) by nearest
    neighbour (pass :func:`pseudo_labels` to use the global model's labels on background pixels);
    ``memory``: the **global** model's region embeddings (:class:`PixelMemory`), detached, so the
    gradient reaches only ``embeddings``. For an anchor ``v_l`` of class c, with ``P`` the memory's
    regions of class c and ``N`` those of the other classes::

        L_j = 1/|P| Σ_{v+∈P} -log( e^{v_l·v+/τ} / (e^{v_l·v+/τ} + Σ_{v-∈N} e^{v_l·v-/τ}) )

    averaged over the anchors: at most ``max_anchors`` labelled pixels spread evenly over their
    classes (random draws from ``generator``). Pixels labelled ``ignore_index`` and pixels of a
    class with no region in the memory are never anchors. τ = 0.07, 4096 anchors: the recipe's
    ``run_city.sh``. No anchor: 0, still attached to the graph.
    """
    b, d, h, w = embeddings.shape
    bank, bank_classes = memory.bank()  # (M, D), (M,)
    bank = bank.detach().to(embeddings.dtype)
    flat = F.normalize(embeddings, dim=1).permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
    lbl = _resize_labels(labels, (h, w)).flatten()  # (B*h*w,)
    known = memory.present.any(0).to(lbl.device)  # (K,): classes with a region in the memory
    k = known.numel()
    labelled = lbl != ignore_index
    if (labelled & ((lbl < 0) | (lbl >= k))).any():
        raise ValueError(f"labels hold values that are neither class ids 0..{k - 1} nor ignore")
    valid = labelled & known[lbl.clamp(0, k - 1)]
    pixels = valid.nonzero().flatten()
    if pixels.numel() == 0:
        return embeddings.sum() * 0.0
    pixels = pixels[_sample_anchors(lbl[pixels], max_anchors, generator)]
    anchors, anchor_classes = flat[pixels], lbl[pixels]  # (A, D), (A,)
    sim = anchors @ bank.T / temperature  # (A, M)
    positive = anchor_classes[:, None] == bank_classes[None, :]  # (A, M)
    floor = torch.finfo(sim.dtype).min  # a finite -inf: no NaN gradient when N is empty
    negatives = torch.logsumexp(sim.masked_fill(positive, floor), dim=1, keepdim=True)  # (A, 1)
    log_ratio = sim - torch.logaddexp(sim, negatives)  # (A, M): log of eq. (8)'s fraction
    per_anchor = -(log_ratio * positive).sum(1) / positive.sum(1)  # (A,)
    return per_anchor.mean()


# ----------------------------------------------------------------------------- eq. (9)


def fedseg_loss(
    seg_logits: Tensor,
    labels: Tensor,
    client_classes: Iterable[int],
    *,
    embeddings: Tensor | None = None,
    memory: PixelMemory | None = None,
    anchor_labels: Tensor | None = None,
    contrast_weight: float = CONTRAST_WEIGHT,
    temperature: float = TEMPERATURE,
    max_anchors: int = MAX_ANCHORS,
    ignore_is_background: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A FedSeg client's objective, eq. (9): ``L = L_backce + λ L_con``, as loss parts.

    ``seg_logits`` (B, K, h, w) are upsampled bilinearly to ``labels`` (B, H, W) for
    :func:`back_cross_entropy`. ``embeddings`` (B, D, h', w') and ``memory`` give
    :func:`local_to_global_contrastive` on ``anchor_labels`` (default ``labels``; the paper
    uses :func:`pseudo_labels`); without them (the first round, before any global model has
    filled the memory: the recipe's ``PROTO_START_EPOCH=1``) ``L_con`` is 0. λ = 1
    (``run_city.sh`` ``CON_LAMB=1``). Returns ``loss``, ``loss_backce`` and ``loss_con``.
    """
    logits = F.interpolate(seg_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    backce = back_cross_entropy(
        logits, labels, client_classes, ignore_is_background=ignore_is_background
    )
    if (embeddings is None) != (memory is None):
        raise ValueError("fedseg_loss needs both embeddings and memory, or neither")
    if embeddings is None:
        con = backce.new_zeros(())
    else:
        con = local_to_global_contrastive(
            embeddings,
            labels if anchor_labels is None else anchor_labels,
            memory,
            temperature=temperature,
            max_anchors=max_anchors,
            generator=generator,
        )
    return {"loss": backce + contrast_weight * con, "loss_backce": backce, "loss_con": con}


# ----------------------------------------------------------------------------- C_i from the data


def annotated_classes(dataset: SegmentationDataset) -> tuple[int, ...]:
    """The train ids a dataset can label (a FedSeg client's ``C_i``), sorted.

    From the format's id table: the train ids its valid native ids map to (SYNTHIA's 16-class
    protocol leaves out terrain, truck and train; Cityscapes, GTA5 and the others have all 19).
    For a built-in world dataset, recognised by the manifest ``feds2r_world.json`` that
    :func:`feds2r.data.world.synth_domain` writes at the dataset's root, the classes its layout
    never shows (``Layout.absent``, as recorded in the manifest, else the named domain's) are
    left out too. Raises :class:`DataError` for a format without labels.
    """
    fmt = dataset.format
    native = np.flatnonzero(fmt.valid_ids)
    native = native[native < fmt.lut.size]
    ids = {int(t) for t in fmt.lut[native] if t != IGNORE_INDEX}
    if not ids:
        raise DataError(
            f"{dataset.spec} has no pixel labels (format {fmt.name!r}), so no annotated classes",
            kind="bad_spec",
        )
    for name in _world_absent(dataset):
        ids.discard(class_index(name))
    return tuple(sorted(ids))


def _world_absent(dataset: SegmentationDataset) -> tuple[str, ...]:
    """Class names a built-in world dataset never shows; () for any other dataset."""
    path = dataset.spec.path / MANIFEST
    if not path.is_file():
        return ()
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return ()
    if not isinstance(manifest, dict) or manifest.get("format") != dataset.format.name:
        return ()
    layout = manifest.get("layout")
    if isinstance(layout, dict) and "absent" in layout:
        return tuple(layout["absent"])
    domain = DOMAINS.get(manifest.get("domain", ""))
    return domain.layout.absent if domain is not None else ()
