"""A faster CPU path for Mask2Former's multi-scale deformable attention (Zhu et al., ICLR 2021).

transformers samples each feature level with its own ``grid_sample`` call and stacks the
results; on a CPU the stack, its backward and the three backward passes of ``grid_sample`` cost
about a fifth of an ``m2f-cpu`` training step. Here the levels are laid side by side on one
zero-padded canvas, so one ``grid_sample`` (and one backward) reads every level's points and its
output is already in the layout the attention weights need. Each level keeps a border of zeros,
and a point farther outside its level than that border is moved off the canvas, so every point
reads exactly what it read from its own level with zero padding: the two paths agree to float
rounding (``tests/models/test_deformable.py``). The gain is small (about 3 % of a training
step, ``scripts/bench_models.py``), and only with a backward pass: without one (inference,
teachers) the module calls transformers' per-level function, which is faster there.

:func:`use_canvas_attention` switches a model's pixel-decoder attention modules to this path;
the paper-scale presets use it as well (the result is the same computation).

Under autocast (bf16 on CUDA, the training loop's ``amp``), the sampling itself runs in float32,
as Mask2Former's own pixel decoder does (its ``MSDeformAttn`` calls the op with autocast off and
``.float()`` inputs: deformable DETR's op has no half precision). The projections around it
(values, offsets, attention weights, output) stay under autocast. Without autocast nothing changes.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as MultiscaleDeformableAttention,
)
from transformers.models.mask2former.modeling_mask2former import (
    multi_scale_deformable_attention as per_level_attention,
)


def canvas_deformable_attention(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention: ``value`` (B, S, H, d) of the L levels (their (h, w) in
    ``shapes``, flattened and concatenated), ``locations`` (B, Q, H, L, P, 2) in [0, 1] as
    (x, y) of each level, ``weights`` (B, Q, H, L, P) -> (B, Q, H*d)."""
    b, _, heads, dim = value.shape
    _, q, _, levels, points, _ = locations.shape
    # the canvas: the levels left to right, each with one column and one row of zeros around it
    canvas_h = max(h for h, _ in shapes) + 2
    left, tiles = [], []
    x0 = 0
    for (h, w), part in zip(shapes, value.split([h * w for h, w in shapes], dim=1), strict=True):
        tile = part.permute(0, 2, 3, 1).reshape(b * heads, dim, h, w)
        tiles.append(F.pad(tile, (1, 1, 1, canvas_h - h - 1)))
        left.append(x0 + 1)
        x0 += w + 2
    canvas = torch.cat(tiles, dim=3)  # (B*H, d, canvas_h, x0)
    canvas_w = x0
    # level l's (u, v) in [0, 1] is its pixel (u w - 1/2, v h - 1/2) (grid_sample,
    # align_corners=False), i.e. canvas pixel (left + u w - 1/2, 1 + v h - 1/2), whose
    # normalised coordinate is u * 2w / W + (2 left / W - 1) (and the same in y)
    rows = [[w, h, x, 1] for (h, w), x in zip(shapes, left, strict=True)]
    w_, h_, x_, y_ = torch.tensor(rows, dtype=locations.dtype, device=locations.device).unbind(1)
    wh = torch.stack([w_, h_], 1)[:, None, :]  # (L, 1, 2), broadcast over the points
    scale = 2 * wh / torch.tensor([canvas_w, canvas_h], dtype=wh.dtype, device=wh.device)
    shift = 2 * torch.stack([x_ / canvas_w, y_ / canvas_h], 1)[:, None, :] - 1
    loc = locations.transpose(1, 2)  # (B, H, Q, L, P, 2)
    # farther than one pixel outside its level (u w - 1/2 < -1 or > w): off the canvas
    far = ((loc < -0.5 / wh) | (loc > 1 + 0.5 / wh)).any(-1, keepdim=True)
    grid = torch.where(far, -3.0, torch.addcmul(shift, loc, scale))
    grid = grid.reshape(b * heads, q, levels * points, 2)
    sampled = F.grid_sample(
        canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (sampled * w).sum(-1)  # (B*H, d, Q)
    return out.view(b, heads * dim, q).transpose(1, 2).contiguous()


class CanvasDeformableAttention(MultiscaleDeformableAttention):
    """transformers' pixel-decoder attention module (same parameters, same state dict) computing
    with :func:`canvas_deformable_attention`: the sampling offsets and attention weights of each
    query, at its reference point, over every level (Zhu et al.'s multi-scale deformable
    attention)."""

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        position_embeddings: Tensor | None = None,
        reference_points: Tensor | None = None,
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor]:
        queries = (
            hidden_states if position_embeddings is None else hidden_states + position_embeddings
        )
        b, nq, _ = queries.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:  # True marks padding
            value = value.masked_fill(attention_mask[..., None], 0.0)
        value = value.view(b, value.shape[1], heads, self.d_model // heads)
        offsets = self.sampling_offsets(queries).view(b, nq, heads, levels, points, 2)
        weights = self.attention_weights(queries).view(b, nq, heads, levels * points)
        dtype = value.dtype  # bf16 under autocast: the output goes back to it
        with float32_region(value.device):
            # float32 inputs (a no-op without autocast): the softmax, the sampling locations
            # and the sampling itself in full precision
            value, offsets, weights = value.float(), offsets.float(), weights.float()
            weights = _softmax(weights).view(b, nq, heads, levels, points)
            ref = reference_points.float()[:, :, None, :, None, :]
            if reference_points.shape[-1] == 2:  # points: offsets in pixels of each level
                wh = torch.tensor([[w, h] for h, w in spatial_shapes_list], device=offsets.device)
                locations = ref + offsets / wh[None, None, None, :, None, :]
            elif reference_points.shape[-1] == 4:  # boxes: offsets relative to the box size
                locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
            else:
                raise ValueError(f"reference points must end in 2 or 4 values, not {ref.shape[-1]}")
            # the canvas pays where there is a backward pass; without one transformers' path is
            # slightly faster (m2f-cpu, batch 8: inference 118 against 125 ms, training 340
            # against 329)
            attend = canvas_deformable_attention if torch.is_grad_enabled() else per_level_attention
            out = attend(value, spatial_shapes_list, locations, weights)
        return self.output_proj(out.to(dtype)), weights


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` if it is on there (so that float32 inputs are computed
    in float32), else nothing."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _softmax(x: Tensor) -> Tensor:
    """Softmax over the last dimension, written out: PyTorch's CPU kernel is slow for a short last
    dimension (the 12 levels x points here: 2.4 ms against 0.5 ms for m2f-cpu's (8, 672, 4, 12)
    weights); equal to ``x.softmax(-1)`` within rounding (1e-7)."""
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def use_canvas_attention(model: nn.Module) -> int:
    """Switch every pixel-decoder deformable attention module of ``model`` to
    :class:`CanvasDeformableAttention` (parameters untouched); returns how many were switched."""
    return _switch(model, MultiscaleDeformableAttention, CanvasDeformableAttention)


def use_transformers_attention(model: nn.Module) -> int:
    """Undo :func:`use_canvas_attention`: transformers' own per-level path (for comparisons)."""
    return _switch(model, CanvasDeformableAttention, MultiscaleDeformableAttention)


def _switch(model: nn.Module, old: type, new: type) -> int:
    modules = [m for m in model.modules() if type(m) is old]
    for module in modules:
        module.__class__ = new
    return len(modules)
