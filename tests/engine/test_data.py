"""Training views (feds2r/engine/data.py)."""

import torch

from feds2r.engine.data import random_view


def test_maps_follow_the_view_geometry():
    g = torch.Generator().manual_seed(3)
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)
    image[:, :, :64] = 255  # left half white
    maps = torch.zeros(2, 16, 32)
    maps[0, :, :16] = 1.0  # the same left half, at 1/4 resolution
    maps[1] = 1.0  # a validity channel
    for _ in range(20):
        img, _, m = random_view(
            image,
            None,
            crop=(48, 96),
            scale=(0.5, 1.5),
            flip=True,
            jitter=0.0,
            blur_prob=0.0,
            g=g,
            maps=maps,
        )
        assert m.shape == (2, 12, 24)
        small = torch.nn.functional.avg_pool2d(img[:1][None], 4)[0, 0]  # image at 1/4
        valid = m[1] > 0.5
        # where the map is valid, the map's white region matches the image's (up to edges)
        agree = ((small > 0.5) == (m[0] > 0.5))[valid].float().mean()
        assert agree > 0.85
        # padding (image black beyond the scaled image) is invalid in the maps
        assert m[1].min() >= 0
