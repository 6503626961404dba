"""Seeded pixel-space degradations (a BSRGAN-lite: blur, noise, JPEG) for training VideoGen's video decoder.

VideoGen (§3.4) trains its decoder on latents of degraded frames so that it learns to clean up what a diffusion
model's samples look like; the degradation is applied to the *input* frames before the frozen encoder, the target
stays the clean clip (design doc A1, reading 10). The kind and strength are drawn per clip (or per frame with
``per_frame``), the noise per frame, all from the caller's generator, so a resumed run degrades the same way.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads on first use: the training config imports this module, and `vidiff --help` must stay fast
    import torch

__all__ = ["DegradeConfig", "Degradation", "degrade_clip", "draw_degradation"]


@dataclass
class DegradeConfig:
    """Probabilities and ranges of each degradation (``data.degrade`` of a video-decoder run); pixels in [-1, 1].

    ``blur_sigma`` Gaussian blur std in pixels, ``noise_std`` additive Gaussian noise std (in [-1, 1] units, so 0.04
    is about 5 grey levels), ``jpeg_quality`` PIL JPEG quality; each applied with its probability, in that order.
    """

    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.3, 1.2])
    noise_prob: float = 0.7
    noise_std: list[float] = field(default_factory=lambda: [0.01, 0.06])
    jpeg_prob: float = 0.5
    jpeg_quality: list[int] = field(default_factory=lambda: [40, 90])
    per_frame: bool = False

    def __post_init__(self) -> None:
        for name in ("blur_prob", "noise_prob", "jpeg_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name, low in (("blur_sigma", 0.0), ("noise_std", 0.0), ("jpeg_quality", 1)):
            pair = list(getattr(self, name))
            if len(pair) != 2:
                raise ValueError(f"{name} must be [min, max], got {pair}")
            lo, hi = pair
            if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi):
                raise ValueError(f"{name} must be [min, max] with {low} <= min <= max, got {[lo, hi]}")
        if self.jpeg_quality[1] > 100:
            raise ValueError(f"jpeg_quality must be at most 100, got {list(self.jpeg_quality)}")


@dataclass(frozen=True)
class Degradation:
    """One draw: None where that degradation is off."""

    blur_sigma: float | None
    noise_std: float | None
    jpeg_quality: int | None


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    import torch

    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def draw_degradation(cfg: DegradeConfig, generator: torch.Generator) -> Degradation:
    """Which degradations apply and how strongly (always six uniform draws, so the stream stays aligned)."""
    import torch

    u = torch.rand(3, generator=generator).tolist()
    blur = _uniform(generator, *cfg.blur_sigma)
    noise = _uniform(generator, *cfg.noise_std)
    quality = int(round(_uniform(generator, *cfg.jpeg_quality)))
    return Degradation(blur if u[0] < cfg.blur_prob else None, noise if u[1] < cfg.noise_prob else None,
                       quality if u[2] < cfg.jpeg_prob else None)


def _blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(frames, (k, k), (sigma, sigma), border_type="reflect")


def _jpeg(frame: torch.Tensor, quality: int) -> torch.Tensor:
    import numpy as np
    import torch
    from PIL import Image

    arr = ((frame.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(out).permute(2, 0, 1) / 127.5 - 1


def _apply(frames: torch.Tensor, d: Degradation, generator: torch.Generator) -> torch.Tensor:
    """``frames`` (t, 3, H, W) in [-1, 1] -> degraded, clamped to [-1, 1]."""
    import torch

    x = frames.float()
    if d.blur_sigma is not None and d.blur_sigma > 0:
        x = _blur(x, d.blur_sigma)
    if d.noise_std is not None and d.noise_std > 0:
        x = x + d.noise_std * torch.randn(x.shape, generator=generator)
    x = x.clamp(-1, 1)
    if d.jpeg_quality is not None:
        x = torch.stack([_jpeg(f, d.jpeg_quality) for f in x])
    return x


def degrade_clip(video: torch.Tensor, cfg: DegradeConfig, generator: torch.Generator) -> torch.Tensor:
    """A degraded copy of ``video`` (3, t, H, W) in [-1, 1]; ``video`` itself is left untouched."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"degrade_clip takes one clip (3, frames, height, width), got {tuple(video.shape)}")
    import torch

    frames = video.detach().cpu().permute(1, 0, 2, 3)
    if cfg.per_frame:
        out = torch.cat([_apply(f[None], draw_degradation(cfg, generator), generator) for f in frames])
    else:
        out = _apply(frames, draw_degradation(cfg, generator), generator)
    return out.permute(1, 0, 2, 3).to(video.dtype)
