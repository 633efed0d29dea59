"""FedSeg's losses on hand-made tensors, and a client's annotated classes from its data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from feds2r.data import open_dataset
from feds2r.data.labels import class_index
from feds2r.data.world import DOMAINS, synth_domain
from feds2r.errors import DataError
from feds2r.losses import (
    PixelMemory,
    annotated_classes,
    back_cross_entropy,
    empty_memory,
    fedseg_loss,
    local_to_global_contrastive,
    pseudo_labels,
    region_embeddings,
    update_memory,
)
from feds2r.losses.fedseg import _sample_anchors

SIZE = (32, 64)


# ----------------------------------------------------------------------------- eq. (4)-(7)


def test_back_ce_is_plain_ce_when_the_client_annotates_every_class():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 4, 5)
    labels = torch.randint(0, 19, (2, 4, 5))
    labels[0, 0] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    for as_background in (False, True):  # no class is missing, so there is no background
        got = back_cross_entropy(logits, labels, range(19), ignore_is_background=as_background)
        assert torch.allclose(got, expected, atol=1e-6)


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_back_ce_gradient_is_eq_7_on_a_background_pixel_and_eq_6_on_an_annotated_one():
    # Client i annotates only class l (here `cls` = 1), the case of the paper's eq. (7); K = 4.
    cls = 1
    z_bg = [0.5, 1.0, -0.3, 0.2]  # pixel 0: labelled 3, a class the client does not annotate
    z_fg = [0.1, 2.0, -1.0, 0.4]  # pixel 1: labelled cls
    logits = torch.tensor([z_bg, z_fg]).T.reshape(1, 4, 1, 2).requires_grad_()
    labels = torch.tensor([[[3, cls]]])
    loss = back_cross_entropy(logits, labels, [cls])
    loss.backward()

    p_bg, p_fg = _softmax(z_bg), _softmax(z_fg)
    rest = sum(math.exp(z) for k, z in enumerate(z_bg) if k != cls)  # Σ_{k≠l} e^{z_k}
    # eq. (7): ∂L/∂z_c = -p_c · e^{z_l} / Σ_{k≠l} e^{z_k} for c ≠ l; z_l is only in the softmax
    # normaliser, so ∂L/∂z_l = p_l. Eq. (6) on the annotated pixel: p_c - [c = l].
    grad_bg = [p_bg[cls] if c == cls else -p_bg[c] * math.exp(z_bg[cls]) / rest for c in range(4)]
    grad_fg = [p_fg[c] - (1.0 if c == cls else 0.0) for c in range(4)]
    expected = torch.tensor([grad_bg, grad_fg]).T.reshape(1, 4, 1, 2) / 2  # mean over 2 pixels
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert all(g < 0 for c, g in enumerate(grad_bg) if c != cls)  # plain CE would push them down
    value = -(math.log(sum(p for c, p in enumerate(p_bg) if c != cls)) + math.log(p_fg[cls])) / 2
    assert loss.item() == pytest.approx(value, abs=1e-6)


def test_back_ce_gradient_with_several_annotated_classes():
    # C_i = {0, 2}: at a background pixel ∂L/∂z_c = -p_c Σ_{k∈C_i} e^{z_k} / Σ_{k∉C_i} e^{z_k}.
    z = [0.3, -0.7, 1.2, 0.0, 0.8]
    logits = torch.tensor(z).reshape(1, 5, 1, 1).requires_grad_()
    back_cross_entropy(logits, torch.tensor([[[4]]]), {0, 2}).backward()
    p = _softmax(z)
    inside = math.exp(z[0]) + math.exp(z[2])
    outside = math.exp(z[1]) + math.exp(z[3]) + math.exp(z[4])
    expected = [p[c] if c in (0, 2) else -p[c] * inside / outside for c in range(5)]
    assert torch.allclose(logits.grad.flatten(), torch.tensor(expected), atol=1e-6)


def test_a_pixel_of_an_unannotated_class_is_background_and_255_stays_ignored():
    torch.manual_seed(1)
    logits = torch.randn(1, 5, 1, 3)
    p = logits.softmax(1)[0, :, 0]  # (5, 3)
    client = [0, 1]
    # pixel 0 labelled 2 and pixel 0 labelled 4: the same background target, Σ_{k∉C_i} q_k
    for label in (2, 4):
        labels = torch.tensor([[[label, 255, 255]]])
        expected = -p[2:, 0].sum().log()
        assert torch.allclose(back_cross_entropy(logits, labels, client), expected, atol=1e-6)
    # 255 ignored by default; with ignore_is_background (the public recipe) it is background too
    labels = torch.tensor([[[1, 255, 255]]])
    assert torch.allclose(back_cross_entropy(logits, labels, client), -p[1, 0].log(), atol=1e-6)
    merged = back_cross_entropy(logits, labels, client, ignore_is_background=True)
    expected = -(p[1, 0].log() + p[2:, 1].sum().log() + p[2:, 2].sum().log()) / 3
    assert torch.allclose(merged, expected, atol=1e-6)
    # a value that is neither a class id nor the ignore index is refused
    with pytest.raises(ValueError, match="neither class ids"):
        back_cross_entropy(logits, torch.tensor([[[5, 0, 0]]]), client)
    with pytest.raises(ValueError, match="client_classes"):
        back_cross_entropy(logits, torch.tensor([[[0, 0, 0]]]), [7])


def test_back_ce_without_pixels_is_zero_and_keeps_the_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = back_cross_entropy(logits, torch.full((1, 2, 2), 255), [0])
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


# ----------------------------------------------------------------------------- eq. (8)


def _prototype_memory(num_classes: int = 3, dim: int = 4) -> PixelMemory:
    """One 'image' whose region of class k is the unit vector e_k."""
    regions = torch.eye(dim)[:num_classes][None]  # (1, K, D)
    return PixelMemory(regions, torch.ones(1, num_classes, dtype=torch.bool))


def test_contrastive_is_lower_when_local_embeddings_align_with_their_class():
    memory = _prototype_memory()
    labels = torch.tensor([[[0, 1, 2], [2, 1, 0]]])  # (1, 2, 3)
    protos = memory.regions[0]  # (3, 4)
    aligned = protos[labels[0]].permute(2, 0, 1)[None]  # (1, 4, 2, 3)
    shifted = protos[(labels[0] + 1) % 3].permute(2, 0, 1)[None]
    low = local_to_global_contrastive(aligned, labels, memory)
    high = local_to_global_contrastive(shifted, labels, memory)
    assert torch.isfinite(low) and torch.isfinite(high)
    assert low < high
    # perfect alignment at τ = 0.07: -log(e^{1/τ} / (e^{1/τ} + 2 e^0)), close to 0
    assert low.item() == pytest.approx(math.log1p(2 * math.exp(-1 / 0.07)), abs=1e-6)


def test_contrastive_matches_eq_8_by_hand():
    # memory: 2 images; class 0 in both (two positives), class 1 in image 1 (one negative)
    regions = torch.zeros(2, 2, 2)
    regions[0, 0] = torch.tensor([1.0, 0.0])
    regions[1, 0] = torch.tensor([0.6, 0.8])
    regions[1, 1] = torch.tensor([0.0, 1.0])
    present = torch.tensor([[True, False], [True, True]])
    memory = PixelMemory(regions, present)
    v = torch.tensor([0.8, 0.6])  # unit norm
    emb = v.reshape(1, 2, 1, 1)
    tau = 0.5
    loss = local_to_global_contrastive(emb, torch.tensor([[[0]]]), memory, temperature=tau)
    pos = [0.8, 0.8 * 0.6 + 0.6 * 0.8]
    neg = 0.6
    terms = [-math.log(math.exp(s / tau) / (math.exp(s / tau) + math.exp(neg / tau))) for s in pos]
    assert loss.item() == pytest.approx(sum(terms) / 2, abs=1e-6)


def test_contrastive_ignores_255_and_classes_missing_from_the_memory():
    torch.manual_seed(2)
    regions = F.normalize(torch.randn(1, 4, 8), dim=-1)
    present = torch.tensor([[True, True, True, False]])  # class 3 has no global region
    memory = PixelMemory(regions, present)
    labels = torch.tensor([[[0, 1, 255], [2, 3, 255]]])
    emb = torch.randn(1, 8, 2, 3, requires_grad=True)
    loss = local_to_global_contrastive(emb, labels, memory)
    loss.backward()
    changed = emb.detach().clone()
    changed[..., :, 2] = torch.randn(1, 8, 2)  # the 255 pixels
    changed[..., 1, 1] = torch.randn(1, 8)  # the class-3 pixel
    assert torch.allclose(local_to_global_contrastive(changed, labels, memory), loss)
    assert emb.grad[..., :, 2].abs().sum() == 0 and emb.grad[..., 1, 1].abs().sum() == 0
    assert emb.grad[..., 0, 0].abs().sum() > 0
    # nothing usable: 0, attached to the graph
    none = local_to_global_contrastive(emb, torch.full((1, 2, 3), 255), memory)
    assert none.item() == 0.0 and none.requires_grad


def test_gradient_reaches_only_the_local_embeddings():
    torch.manual_seed(3)
    regions = F.normalize(torch.randn(2, 3, 8), dim=-1).requires_grad_()
    memory = PixelMemory(regions, torch.ones(2, 3, dtype=torch.bool))
    emb = torch.randn(2, 8, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))  # at twice the embeddings' resolution
    loss = local_to_global_contrastive(emb, labels, memory)
    loss.backward()
    assert torch.isfinite(loss) and emb.grad.abs().sum() > 0
    assert regions.grad is None


def test_one_class_memory_has_no_negatives_and_stays_finite():
    memory = _prototype_memory(num_classes=1)
    emb = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = local_to_global_contrastive(emb, torch.zeros(1, 2, 2, dtype=torch.long), memory)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(emb.grad).all()


def test_anchors_are_split_evenly_over_classes():
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    picked = _sample_anchors(labels, 20, torch.Generator().manual_seed(0))
    assert (labels[picked] == 0).sum() == 10 and (labels[picked] == 1).sum() == 10
    assert picked.unique().numel() == 20


# ----------------------------------------------------------------------------- the memory


def test_region_embeddings_and_memory_update():
    emb = torch.zeros(1, 2, 2, 2)
    emb[0, :, 0, 0] = torch.tensor([2.0, 0.0])
    emb[0, :, 0, 1] = torch.tensor([0.0, 2.0])
    emb[0, :, 1, :] = torch.tensor([0.0, -3.0])[:, None]
    labels = torch.tensor([[[0, 0], [2, 255]]])
    regions, present = region_embeddings(emb, labels, num_classes=3)
    assert present.tolist() == [[True, False, True]]
    s = 1 / math.sqrt(2)
    assert torch.allclose(regions[0, 0], torch.tensor([s, s]))  # mean (1, 1), normalised
    assert torch.allclose(regions[0, 2], torch.tensor([0.0, -1.0]))

    memory = empty_memory(3, dim=2, num_classes=3)
    new = update_memory(memory, torch.tensor([1]), regions, present)
    assert not memory.present.any()  # the input is left unchanged
    assert new.present.tolist() == [[False] * 3, [True, False, True], [False] * 3]
    bank, classes = new.bank()
    assert classes.tolist() == [0, 2] and torch.allclose(bank[1], torch.tensor([0.0, -1.0]))
    with pytest.raises(ValueError, match="PixelMemory"):
        PixelMemory(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))


def test_pseudo_labels_fill_only_confident_background_pixels():
    labels = torch.tensor([[[0, 255, 255, 2]]])  # (1, 1, 4)
    logits = torch.full((1, 3, 1, 4), -10.0)
    logits[0, 1, 0, :] = 10.0  # the global model says class 1, confidently...
    logits[0, :, 0, 2] = 0.0  # ...except at pixel 2 (p = 1/3 < θ)
    assert pseudo_labels(labels, logits).tolist() == [[[0, 1, 255, 2]]]
    # with client_classes {0, 1}, the pixel labelled 2 is background as well
    assert pseudo_labels(labels, logits, client_classes=[0, 1]).tolist() == [[[0, 1, 255, 1]]]


def test_fedseg_loss_is_eq_9_with_its_parts():
    torch.manual_seed(4)
    seg = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 8, 8))
    emb = torch.randn(1, 8, 4, 4, requires_grad=True)
    memory = PixelMemory(F.normalize(torch.randn(2, 3, 8), dim=-1), torch.ones(2, 3, dtype=bool))
    parts = fedseg_loss(seg, labels, [0, 1], embeddings=emb, memory=memory, contrast_weight=0.5)
    assert set(parts) == {"loss", "loss_backce", "loss_con"}
    assert torch.allclose(parts["loss"], parts["loss_backce"] + 0.5 * parts["loss_con"])
    parts["loss"].backward()
    assert seg.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0
    first_round = fedseg_loss(seg, labels, [0, 1])  # no memory yet: L_con = 0
    assert first_round["loss_con"].item() == 0.0
    with pytest.raises(ValueError, match="both"):
        fedseg_loss(seg, labels, [0, 1], embeddings=emb)


# ----------------------------------------------------------------------------- C_i from the data


def test_annotated_classes_of_the_synthia_like_world(tmp_path):
    s = synth_domain("synthia-like", tmp_path, split="train", num=1, size=SIZE, progress=False)
    ds = open_dataset(s["spec"])
    classes = annotated_classes(ds)
    missing = {class_index(n) for n in ("truck", "train", "terrain")}
    assert set(classes) == set(range(19)) - missing
    # so a SYNTHIA-like pixel never carries a class the client does not annotate
    assert set(ds[0]["label"].unique().tolist()) <= set(classes) | {255}


def test_annotated_classes_follow_the_world_manifest(tmp_path):
    s = synth_domain("gta5-like", tmp_path / "a", split="val", num=1, size=SIZE, progress=False)
    assert annotated_classes(open_dataset(s["spec"])) == tuple(range(19))
    gta = DOMAINS["gta5-like"]
    no_bus = dataclasses.replace(gta, layout=dataclasses.replace(gta.layout, absent=("bus",)))
    s = synth_domain(no_bus, tmp_path / "b", split="val", num=1, size=SIZE, progress=False)
    assert class_index("bus") not in annotated_classes(open_dataset(s["spec"]))


def test_annotated_classes_need_labels(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="no pixel labels"):
        annotated_classes(open_dataset(f"folder:{tmp_path}", labels=False))
