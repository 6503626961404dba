"""The shapes world's ground truth for frame interpolation: bilateral flows to a middle frame and its blend mask.

The world renders each object's per-frame velocity (``flow`` (T−1, 2, H, W): the displacement of the object's pixels
from frame j to j+1, (dx, dy)) and coverage masks. For keyframes j−1 and j+1 around a middle frame j, an object pixel
p of frame j came from p − v and goes to p + v (motion is linear), so F_{j→0}(p) = −v and F_{j→1}(p) = +v there, and
background pixels do not move. The blend mask takes a background pixel from the keyframe where the object does not
cover it (no ghost of the object where it left) and averages everywhere else. It is the oracle of VideoGen's flow
distillation (design doc A1: "the toy teacher is the analytic flow the world already renders").
"""

from __future__ import annotations

import torch

__all__ = ["bilateral_flow", "latent_bilateral_flow"]


def bilateral_flow(masks: torch.Tensor, flow: torch.Tensor, middle: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """(F_{m→0}, F_{m→1}, M) for the middle frame ``middle`` between keyframes ``middle − 1`` and ``middle + 1``, in
    pixels: flows (2, H, W), mask (1, H, W) (the weight of keyframe 0). ``masks`` (T, H, W) object coverage,
    ``flow`` (T−1, 2, H, W) as a shapes-world sample gives them."""
    t = masks.shape[0]
    if not 1 <= middle <= t - 2:
        raise ValueError(f"the middle frame must have a keyframe on each side: 1 <= middle <= {t - 2}, got {middle}")
    on = masks[middle] > 0
    v = flow[middle] * on  # the object's velocity on its pixels of the middle frame
    to0, to1 = -v, v
    weight = torch.full_like(masks[middle], 0.5)
    background = ~on
    weight[background & (masks[middle - 1] > 0)] = 0.0  # the object has left this pixel: take keyframe 1 there
    weight[background & (masks[middle + 1] > 0)] = 1.0  # the object will cover it: take keyframe 0 there
    return to0, to1, weight[None]


def latent_bilateral_flow(masks: torch.Tensor, flow: torch.Tensor, middles: list[int], factor: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`bilateral_flow` for a batch (``masks`` (b, T, H, W), ``flow`` (b, T−1, 2, H, W), one middle frame per
    clip), in the latent space of an autoencoder of spatial ``factor``: flows area-resized and divided by the factor
    (latent pixels), the mask area-resized. Returns (F_{m→0}, F_{m→1}) (b, 2, H/f, W/f) and M (b, 1, H/f, W/f)."""
    import torch.nn.functional as F

    from vidiff.models.latent_flow import pixel_flow_to_latent

    oracle = [bilateral_flow(masks[i], flow[i], m) for i, m in enumerate(middles)]
    to0 = pixel_flow_to_latent(torch.stack([o[0] for o in oracle]), factor)
    to1 = pixel_flow_to_latent(torch.stack([o[1] for o in oracle]), factor)
    return to0, to1, F.avg_pool2d(torch.stack([o[2] for o in oracle]), factor)
