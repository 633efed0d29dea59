"""A client's part of a multi-round federation (FedAvg, FedProx, FedSeg), without Flower.

:func:`client_update` trains the received global model for its round's share of the recipe's
steps (round r of R trains steps ``[(r-1)T/R, rT/R)`` of a T-step recipe, with the learning rate
the one-shot client has at those steps: every method spends the same client steps on the same
schedule) with the method's objective. The Flower side (strategies, messages, the in-process
grid) is :mod:`feds2r.federation.rounds`; this module needs no Flower. The flows' config,
:class:`~feds2r.federation.config.RoundsConfig`, lives with the federation's and is importable
from here too.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from feds2r.data import IGNORE_INDEX, open_dataset
from feds2r.data.partition import PartDataset, ignore_background, is_part_spec, open_part
from feds2r.engine.data import ResizedCache, make_batch
from feds2r.engine.repro import deterministic
from feds2r.engine.train import build_optimizer, lr_factor
from feds2r.errors import Feds2rError
from feds2r.federation.config import ROUND_LOSSES, ROUND_METHODS, RoundsConfig, client_recipe
from feds2r.federation.replies import load_state
from feds2r.losses import supervised_loss
from feds2r.losses.fedseg import (
    annotated_classes,
    empty_memory,
    fedseg_loss,
    local_to_global_contrastive,
    pseudo_labels,
    region_embeddings,
    update_memory,
)
from feds2r.models import create_model

ROUND_KEYS = ("method", "server-round", "rounds", "proximal-mu", "contrast-weight", "loss")
"""Keys of a round's train config besides the recipe
(:func:`~feds2r.federation.rounds.round_settings`)."""


def round_steps(total: int, rounds: int, server_round: int) -> tuple[int, int]:
    """The steps ``[lo, hi)`` of round ``server_round`` (1-based) of ``rounds`` in a ``total``-step
    recipe; the rounds cover every step once."""
    if not 1 <= server_round <= rounds:
        raise ValueError(f"round {server_round} is not one of 1..{rounds}")
    return (server_round - 1) * total // rounds, server_round * total // rounds


_DATA: dict[tuple[str, int], Any] = {}
"""Each client dataset resized once per process (a SuperNode's ClientApp, or the demo's)."""


def _client_cache(spec: str, height: int):
    """(resized cache, dataset) of a client's data: a dataset spec, or a part of a partition
    (``partition:FILE#PART``, :func:`feds2r.data.partition.open_part`: labels erased to the
    part's classes)."""
    key = (spec, height)
    if key not in _DATA:
        dataset = open_part(spec) if is_part_spec(spec) else open_dataset(spec)
        _DATA[key] = (ResizedCache(dataset, height, progress=False), dataset)
    return _DATA[key]


def client_classes(dataset) -> tuple[int, ...]:
    """A client's annotated classes ``C_i``: its part's, or those its dataset can label."""
    if isinstance(dataset, PartDataset):
        return dataset.part.classes
    return annotated_classes(dataset)


def proximal_term(model: torch.nn.Module, anchor: list[Tensor], mu: float) -> Tensor:
    """FedProx's ``mu/2 * sum ||w - w_global||^2`` over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))


@torch.no_grad()
def _global_view(global_model, images: Tensor, classes, labels: Tensor):
    """The global model's pixel embeddings and the anchor labels (FedSeg's pseudo-labels on the
    client's background pixels) for ``images``."""
    out = global_model(images)
    probs = out.semantic_probs(tuple(out.features.shape[-2:]))
    anchors = pseudo_labels(labels, probs.clamp_min(1e-8).log(), classes)
    return out.features, anchors


@torch.no_grad()
def fedseg_memory(global_model, cache, classes, batch_size: int = 16):
    """FedSeg's memory (sec. 3.3): the global model's region embeddings of every image of the
    client's data (un-augmented), rebuilt at the start of each round from the second on."""
    memory = None
    order = list(range(len(cache)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        shapes = {tuple(cache.images[i].shape) for i in idx}
        groups = [[i for i in idx if tuple(cache.images[i].shape) == s] for s in shapes]
        for group in groups:
            images = torch.stack([cache.images[i] for i in group])
            labels = torch.stack([cache.labels[i] for i in group]).long()
            feats, anchors = _global_view(global_model, images, classes, labels)
            if memory is None:
                memory = empty_memory(len(cache), feats.shape[1], global_model.num_classes)
            regions, present = region_embeddings(feats, anchors, global_model.num_classes)
            memory = update_memory(memory, torch.tensor(group), regions, present)
    return memory


def _annotated_loss(out, labels: Tensor) -> Tensor:
    """The model's supervised loss on ``labels``; 0 (attached to the graph) when no pixel is
    labelled, as happens on a partition's crop that shows none of the client's classes."""
    if not (labels != IGNORE_INDEX).any():
        return out.features.sum() * 0.0
    return supervised_loss(out, labels)["loss"]


def client_update(
    global_state: dict[str, Tensor], settings: dict[str, Any], data: str, *, name: str
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """One round of one client: train the received global model on its private ``data`` for its
    round's steps with the method's objective, and return the tensors and the reply's metrics
    (``num-examples``, which FedAvg weights by, ``train-steps``, ``loss``).

    ``settings`` is the round's train config (:func:`round_settings`, ``server-round`` and, for
    FedProx, ``proximal-mu``). Objectives: fedavg, the supervised loss; fedprox, plus
    :func:`proximal_term`; fedseg, plus lambda times FedSeg's local-to-global pixel contrastive
    loss against the round's :func:`fedseg_memory` (from round 2 on, as the public recipe).

    The supervised loss is the settings' ``loss`` (:data:`ROUND_LOSSES`): "backce", FedSeg's
    background-aware CE (eq. 4-5) over the client's classes (:func:`client_classes`); "ce" or
    no key, the model's own supervised loss (Mask2Former's set loss, or per-pixel CE), with a
    partition's background pixels ignored. BackCE equals plain CE on a client that can label
    every class its images hold (every built-in client, :mod:`feds2r.losses.fedseg`); it differs
    on a part of a class-heterogeneous partition (``data`` = ``partition:FILE#PART``).
    """
    method = str(settings["method"])
    if method not in ROUND_METHODS:
        raise Feds2rError(f"unknown round method {method!r}; valid: {', '.join(ROUND_METHODS)}")
    loss_name = str(settings.get("loss", ""))
    if loss_name not in ("", *ROUND_LOSSES):
        raise Feds2rError(f"unknown round loss {loss_name!r}; valid: {', '.join(ROUND_LOSSES)}")
    server_round, rounds = int(settings["server-round"]), int(settings["rounds"])
    recipe = client_recipe({k: v for k, v in settings.items() if k not in ROUND_KEYS})
    lo, hi = round_steps(recipe.steps, rounds, server_round)
    with deterministic(recipe.threads):
        model = create_model(str(settings["preset"]))
        load_state(model, global_state, "the server's global model")
        cache, dataset = _client_cache(data, recipe.height)
        model.train()
        if loss_name == "backce" and model.is_mask_classification:
            raise Feds2rError(
                f"the backce loss is per-pixel cross-entropy; {settings['preset']} is a mask "
                "classification preset: use a per-pixel one (segformer-cpu, seg-effl0)"
            )
        partitioned = isinstance(dataset, PartDataset)
        anchor, memory, classes = None, None, None
        global_model = None
        if method in ("fedprox", "fedseg"):
            global_model = copy.deepcopy(model).eval().requires_grad_(False)
        if method == "fedprox":
            anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        if method == "fedseg" or loss_name == "backce":
            classes = client_classes(dataset)
        if method == "fedseg":
            if server_round >= 2:
                memory = fedseg_memory(global_model, cache, classes)
        opt = build_optimizer(model, recipe)
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + server_round)
        aug = {
            "crop": recipe.crop,
            "scale": recipe.scale,
            "flip": recipe.flip,
            "jitter": recipe.jitter,
            "blur_prob": recipe.blur_prob,
        }
        last = 0.0
        for step in range(lo, hi):
            idx = torch.randint(len(cache), (recipe.batch_size,), generator=g).tolist()
            batch = make_batch(cache, idx, g, **aug)
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(step, recipe)
            out = model(batch["image"])
            if loss_name == "backce":
                loss = fedseg_loss(out.seg_logits, batch["label"], classes)["loss_backce"]
            elif partitioned:  # plain CE ignores the pixels the client does not annotate
                loss = _annotated_loss(out, ignore_background(batch["label"]))
            else:
                loss = supervised_loss(out, batch["label"])["loss"]
            if anchor is not None:
                loss = loss + proximal_term(model, anchor, float(settings["proximal-mu"]))
            if memory is not None:
                _, labels = _global_view(global_model, batch["image"], classes, batch["label"])
                con = local_to_global_contrastive(out.features, labels, memory, generator=g)
                loss = loss + float(settings.get("contrast-weight", 1.0)) * con
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss.detach())} at step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            last = float(loss.detach())
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics = {"num-examples": len(cache), "train-steps": hi - lo, "loss": last}
    return state, metrics


def is_round_message(settings: dict[str, Any]) -> bool:
    """Whether a train message belongs to a multi-round flow (else the one-shot flow)."""
    return str(settings.get("method", "feds2r")) in ROUND_METHODS


__all__ = [
    "ROUND_KEYS",
    "ROUND_LOSSES",
    "ROUND_METHODS",
    "RoundsConfig",
    "client_classes",
    "client_update",
    "fedseg_memory",
    "is_round_message",
    "proximal_term",
    "round_steps",
]
