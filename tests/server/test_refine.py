"""Pseudo-label refinement with class-agnostic regions (feds2r/server/refine.py): the rule on
hand-made region maps, the builtin and watershed proposers, and the SAM proposer with a tiny
random model built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feds2r.data.labels import IGNORE_INDEX, NUM_CLASSES
from feds2r.data.world import SceneSpec, render_scene
from feds2r.errors import Feds2rError
from feds2r.server.refine import (
    RegionRefiner,
    SamProposer,
    confident_labels,
    make_proposer,
    refine,
)


def probs_from(labels: np.ndarray, conf: np.ndarray, k: int = 3) -> torch.Tensor:
    """Probabilities (K, H, W): ``conf`` on ``labels``, the rest spread over the other classes."""
    labels, conf = torch.as_tensor(labels), torch.as_tensor(conf, dtype=torch.float32)
    p = ((1 - conf) / (k - 1))[None].repeat(k, 1, 1)
    return p.scatter(0, labels[None].long(), conf[None])


def test_a_noisy_minority_takes_the_majority_label():
    regions = np.array([[1, 1, 1, 2, 2, 2]] * 4)
    labels = np.array([[0, 0, 0, 2, 2, 2]] * 4)
    labels[0, 0] = labels[3, 1] = 1  # a confident but wrong minority in region 1
    probs = probs_from(labels, np.full(labels.shape, 0.99))
    out = refine(probs, regions, threshold=0.9)
    assert out.dtype == torch.int64 and out.shape == (4, 6)
    assert (out[:, :3] == 0).all() and (out[:, 3:] == 2).all()


def test_a_region_the_teacher_is_unsure_about_is_dropped():
    regions = np.array([[1, 1, 1, 2, 2, 2]] * 4)
    labels = np.array([[0, 0, 0, 2, 2, 2]] * 4)
    conf = np.full(labels.shape, 0.99)
    conf[:, 3:] = 0.5  # region 2: nowhere confident
    conf[:, 0] = conf[1:, 1] = 0.5  # region 1: 5 of 12 pixels confident
    out = refine(probs_from(labels, conf), regions, threshold=0.9, min_share=0.5)
    assert (out == IGNORE_INDEX).all()
    # a lower minimum keeps region 1 (5/12 >= 0.4), whole; region 2 has no vote at all
    out = refine(probs_from(labels, conf), regions, threshold=0.9, min_share=0.4)
    assert (out[:, :3] == 0).all() and (out[:, 3:] == IGNORE_INDEX).all()


def test_a_region_split_between_two_classes_is_dropped():
    regions = np.ones((2, 4), np.int32)
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])  # confident, but half and half
    probs = probs_from(labels, np.full(labels.shape, 0.99))
    assert (refine(probs, regions, threshold=0.9, min_share=0.51) == IGNORE_INDEX).all()
    assert refine(probs, regions, threshold=0.9, min_share=0.5).unique().numel() == 1


def test_pixels_of_no_region_keep_their_own_confident_label_and_batches_work():
    regions = np.array([[0, 0, 1, 1]] * 2)
    labels = np.array([[1, 2, 0, 1]] * 2)
    conf = np.array([[0.99, 0.5, 0.99, 0.99]] * 2)
    probs = probs_from(labels, conf)
    out = refine(probs, regions, threshold=0.9, min_share=0.5)
    assert out[:, 0].eq(1).all() and out[:, 1].eq(IGNORE_INDEX).all()
    assert out[:, 2:].eq(0).all() or out[:, 2:].eq(1).all()  # a tie: one class, whole region
    # a batch of two images with the same region ids: each image's regions are its own
    batch = torch.stack([probs, probs_from(np.full((2, 4), 2), np.full((2, 4), 0.99))])
    both = refine(batch, np.stack([regions, regions]), threshold=0.9)
    assert torch.equal(both[0], out) and both[1].eq(2).all()
    # threshold 0, min_share 0: every pixel of every region is labelled
    assert (refine(probs, np.ones((2, 4)), threshold=0, min_share=0) != IGNORE_INDEX).all()
    assert torch.equal(confident_labels(probs, 0.9)[0], torch.tensor([1, 255, 0, 1]))


def test_refine_checks_its_inputs():
    probs = probs_from(np.zeros((2, 4), int), np.full((2, 4), 0.9))
    with pytest.raises(ValueError, match="do not fit"):
        refine(probs, np.ones((2, 5)))
    with pytest.raises(ValueError, match="min_share"):
        refine(probs, np.ones((2, 4)), min_share=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        refine(probs, -np.ones((2, 4)))


def two_halves(h: int = 32, w: int = 48) -> np.ndarray:
    """A (3, H, W) uint8 image: a dark left half, a bright right half, mild noise."""
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 40, np.uint8)
    img[:, w // 2 :] = (200, 180, 60)
    img = np.clip(img + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    return img.transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["builtin", "watershed"])
def test_offline_proposers_follow_a_colour_edge(name):
    proposer = make_proposer(name)
    img = two_halves()
    regions = proposer.regions(img)
    assert regions.shape == (32, 48) and regions.dtype == np.int32 and regions.min() >= 1
    left, right = set(np.unique(regions[:, :23])), set(np.unique(regions[:, 25:]))
    assert not left & right  # no region crosses the edge
    batch = torch.from_numpy(np.stack([img, img])).float() / 255  # float in [0, 1] too
    assert proposer.regions(batch).shape == (2, 32, 48)


def test_builtin_refinement_repairs_noisy_labels_of_a_rendered_scene():
    image, label = render_scene(SceneSpec(("car",)), "generated", size=(64, 128), seed=3)
    truth = torch.from_numpy(label.astype(np.int64))
    valid = truth != IGNORE_INDEX
    g = torch.Generator().manual_seed(0)
    noisy = torch.where(valid, truth, 0)
    flip = torch.rand(noisy.shape, generator=g) < 0.25  # a quarter of the pixels wrong
    noisy = torch.where(flip, torch.randint(0, NUM_CLASSES, noisy.shape, generator=g), noisy)
    probs = torch.nn.functional.one_hot(noisy, NUM_CLASSES).permute(2, 0, 1).float()
    regions = make_proposer("builtin").regions(torch.from_numpy(image).permute(2, 0, 1))
    out = refine(probs, regions, threshold=0.5, min_share=0.5)
    kept = valid & (out != IGNORE_INDEX)
    before = (noisy[valid] == truth[valid]).float().mean()
    after = (out[kept] == truth[kept]).float().mean()
    assert before < 0.8 and after > 0.9 and kept.sum() > 0.8 * valid.sum()


def test_region_refiner_works_at_the_probabilities_size():
    refiner = RegionRefiner(make_proposer("builtin"), threshold=0.5)
    images = torch.from_numpy(np.stack([two_halves(), two_halves()]))
    labels = torch.zeros(2, 16, 24, dtype=torch.long)
    labels[..., 12:] = 1
    probs = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    out = refiner(images, probs)
    assert out.shape == (2, 16, 24) and torch.equal(out, labels)


def test_make_proposer_names_the_valid_ones():
    with pytest.raises(Feds2rError, match="builtin, watershed, sam"):
        make_proposer("slic")
    with pytest.raises(Feds2rError, match="model_dir"):
        make_proposer("sam")


def tiny_sam(path) -> None:
    """A random SAM small enough for a test (a 64-pixel input, 16-channel embeddings); its
    weights are drawn wide so that its masks are not all empty."""
    from transformers import SamConfig, SamModel

    vision = dict(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        window_size=2,
        global_attn_indexes=[1],
        num_pos_feats=8,
        mlp_dim=64,
        initializer_range=0.5,
    )
    prompt = dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = dict(
        hidden_size=16,
        mlp_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        iou_head_hidden_dim=16,
    )
    config = SamConfig(
        vision_config=vision,
        prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    SamModel(config).save_pretrained(path)


def test_sam_proposer_from_a_tiny_random_model(tmp_path):
    tiny_sam(tmp_path / "sam")
    # thresholds of 0 keep every non-empty mask: the painting runs on many overlapping masks
    proposer = make_proposer(
        "sam",
        model_dir=tmp_path / "sam",
        device="cpu",
        points_per_side=4,
        points_per_batch=5,
        pred_iou_thresh=0.0,
        stability_thresh=0.0,
    )
    img = np.random.default_rng(0).integers(0, 256, (3, 40, 72), dtype=np.uint8)
    regions = proposer.regions(img)
    assert regions.shape == (40, 72) and regions.dtype == np.int32
    assert regions.min() >= 0 and len(np.unique(regions[regions > 0])) >= 1
    batch = proposer.regions(torch.from_numpy(np.stack([img, img])))
    assert batch.shape == (2, 40, 72) and np.array_equal(batch[0], regions)
    # the default thresholds keep few or none of a random model's masks: still a valid map
    strict = SamProposer(tmp_path / "sam", device="cpu", points_per_side=4)
    assert strict.regions(img).shape == (40, 72)
    probs = probs_from(np.zeros((40, 72), int), np.full((40, 72), 0.99))
    assert refine(probs, regions, threshold=0.9).shape == (40, 72)


def test_sam_proposer_explains_a_missing_or_wrong_folder(tmp_path):
    with pytest.raises(Feds2rError, match="no config.json"):
        make_proposer("sam", model_dir=tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    with pytest.raises(Feds2rError, match="not Segment Anything"):
        make_proposer("sam", model_dir=tmp_path / "other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(Feds2rError, match="cannot load the SAM model"):
        make_proposer("sam", model_dir=tmp_path / "broken", device="cpu")
