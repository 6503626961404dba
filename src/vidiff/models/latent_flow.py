"""VideoGen's flow-based latent temporal super-resolution, its primitives (§3.3, design doc A1).

A frame between two keyframes z_0, z_1 is built in latent space by warping both toward the middle along bilateral
flows and blending them: z_w = M⊙W(z_0, F_{½→0}) + (1−M)⊙W(z_1, F_{½→1}), W a backward bilinear warp, flows in
*latent* pixels (a pixel-space flow is resized and divided by the autoencoder's factor). A refiner then denoises
around z_w, and the fusion ẑ = φ_N(z_w) + (z_r − φ_N(z_r)) (φ_N = up_N ∘ down_N, ILVR) keeps the warp's low
frequencies and the refiner's details. :func:`interpolate_latents` inserts one frame between every pair (keyframes
kept bit for bit), so 16 → 31 → 61 → 121 over three passes.

The baselines the paper compares against are here too: :func:`lerp` and :func:`slerp` (spherical interpolation of
each frame's latent as one vector).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["LatentFlowNet", "backward_warp", "bilateral_merge", "fuse_frequencies", "interpolate_latents", "lerp",
           "lowpass", "pixel_flow_to_latent", "slerp"]


def backward_warp(z: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = z(p + flow(p))``, bilinear, borders repeated. ``z`` (n, c, h, w); ``flow`` (n, 2, h, w) as
    (dx, dy) in pixels of ``z`` (dx along the width)."""
    if z.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[-2:] != z.shape[-2:]:
        raise ValueError(f"backward_warp takes z (n, c, h, w) and flow (n, 2, h, w), got {tuple(z.shape)} and "
                         f"{tuple(flow.shape)}")
    n, _, h, w = z.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=z.device, dtype=flow.dtype),
                            torch.arange(w, device=z.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)  # align_corners=True units
    return F.grid_sample(z, grid.to(z.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def bilateral_merge(z0: torch.Tensor, z1: torch.Tensor, flow_t0: torch.Tensor, flow_t1: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """M⊙W(z_0, F_{t→0}) + (1−M)⊙W(z_1, F_{t→1}); ``mask`` (n, 1, h, w) in [0, 1], the weight of z_0."""
    return mask * backward_warp(z0, flow_t0) + (1 - mask) * backward_warp(z1, flow_t1)


def pixel_flow_to_latent(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel-space flow (n, 2, H, W) in pixels → latent-space flow (n, 2, H/f, W/f) in latent pixels."""
    if flow.shape[-1] % factor or flow.shape[-2] % factor:
        raise ValueError(f"flow of size {tuple(flow.shape[-2:])} is not a multiple of the factor {factor}")
    return F.avg_pool2d(flow, factor) / factor


def lowpass(z: torch.Tensor, n: int) -> torch.Tensor:
    """φ_N = up_N ∘ down_N: the mean of each n×n block, repeated over the block (n = 1: identity). A projection
    (φ_N ∘ φ_N = φ_N), so the fusion below keeps exactly the warp's low band and the refiner's high band."""
    if n == 1:
        return z
    if z.shape[-1] % n or z.shape[-2] % n:
        raise ValueError(f"the fusion factor {n} must divide the latent size {tuple(z.shape[-2:])}")
    return F.avg_pool2d(z, n).repeat_interleave(n, dim=-2).repeat_interleave(n, dim=-1)


def fuse_frequencies(z_warp: torch.Tensor, z_refined: torch.Tensor, n: int) -> torch.Tensor:
    """ẑ = φ_N(z_w) + (z_r − φ_N(z_r)): the warp's low frequencies, the refiner's high ones (§3.3)."""
    return lowpass(z_warp, n) + (z_refined - lowpass(z_refined, n))


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float = 0.5, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation of each sample's latent as one vector (lerp where the two are parallel)."""
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)
    omega = torch.arccos(cos.clamp(-1 + eps, 1 - eps))
    so = torch.sin(omega)
    wa = torch.where(so > eps, torch.sin((1 - t) * omega) / so, torch.full_like(so, 1 - t))
    wb = torch.where(so > eps, torch.sin(t * omega) / so, torch.full_like(so, t))
    return (wa[:, None] * a + wb[:, None] * b).view_as(z0)


class LatentFlowNet(ModelMixin, ConfigMixin):
    """Bilateral flows to the middle frame and a blend mask from two latent keyframes (IFRNet-style, small).

    ``forward(z0, z1)`` → (F_{½→0}, F_{½→1}, M): flows (n, 2, h, w) in latent pixels, M (n, 1, h, w) in (0, 1).
    A two-level encoder over both keyframes, a decoder that predicts flows and mask at half resolution and refines
    them at full resolution; the flow heads start at zero and the mask at ½ (so the untrained net is a lerp).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 4, width: int = 32) -> None:
        super().__init__()
        c = latent_channels
        self.enc1 = nn.Sequential(nn.Conv2d(2 * c, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU())
        self.head_low = nn.Conv2d(2 * width, 5, 3, padding=1)
        self.refine = nn.Sequential(nn.Conv2d(width + 5 + 2 * c, width, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(width, 5, 3, padding=1))
        for head in (self.head_low, self.refine[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = self.enc1(torch.cat([z0, z1], dim=1))
        low = self.head_low(self.enc2(h1))
        up = F.interpolate(low, size=z0.shape[-2:], mode="bilinear", align_corners=False)
        up = torch.cat([up[:, :4] * 2, up[:, 4:]], dim=1)  # flows are in pixels: ×2 at twice the resolution
        out = up + self.refine(torch.cat([h1, up, z0, z1], dim=1))
        return out[:, 0:2], out[:, 2:4], torch.sigmoid(out[:, 4:5])


MiddleFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def interpolate_latents(z: torch.Tensor, middle: MiddleFn | str = "lerp") -> torch.Tensor:
    """(b, c, t, h, w) keyframes → (b, c, 2t−1, h, w): keyframes at even indices, bit for bit, and between each pair
    the frame ``middle(z_i, z_{i+1}, i)`` makes (or "lerp" / "slerp")."""
    if z.dim() != 5 or z.shape[2] < 2:
        raise ValueError(f"interpolate_latents takes (batch, channels, frames >= 2, h, w), got {tuple(z.shape)}")
    if isinstance(middle, str):
        if middle not in ("lerp", "slerp"):
            raise ValueError(f"middle must be a function, 'lerp' or 'slerp', got {middle!r}")
        blend = lerp if middle == "lerp" else slerp
        middle = lambda a, b, i: blend(a, b)  # noqa: E731
    b, c, t, h, w = z.shape
    out = z.new_empty(b, c, 2 * t - 1, h, w)
    out[:, :, 0::2] = z
    for i in range(t - 1):
        out[:, :, 2 * i + 1] = middle(z[:, :, i], z[:, :, i + 1], i)
    return out
