"""Weight-free metrics: PSNR, SSIM and pixel-space frame consistency.

``psnr`` and ``ssim`` are the plain formulas on float tensors ``(..., C, H, W)`` with an explicit ``data_range``. SSIM is
Wang et al. (2004) with the standard 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, computed on the valid
region only and averaged over channels and pixels, i.e. scikit-image's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)``. (The reference MATLAB code additionally downsamples large images first; we do
not.) The filtering is kornia's.

``video_psnr`` / ``video_ssim`` apply them to paired video sets in vidiff's layouts: both sets are mapped to [0, 1]
(data range 1), scored per frame, averaged over frames, then over videos.

``pixel_frame_consistency`` is the weight-free analogue of CLIP frame consistency: the cosine similarity between
consecutive frames as flat pixel vectors in [-1, 1] (so mid-grey is the origin), averaged over pairs and videos.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from vidiff.metrics.protocols import (
    FrameConsistencyProtocol,
    PSNRProtocol,
    SSIMProtocol,
    as_videos,
    iter_batches,
    metric_result,
)

__all__ = ["pixel_frame_consistency", "psnr", "ssim", "video_psnr", "video_ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5  # fixed by kornia's window; recorded in SSIMProtocol
SSIM_K1, SSIM_K2 = 0.01, 0.03  # kornia's constants: C1 = (K1 L)^2, C2 = (K2 L)^2


def _check_pair(preds: torch.Tensor, target: torch.Tensor, data_range: float) -> None:
    for name, x in (("preds", preds), ("target", target)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor (..., C, H, W)")
    if preds.shape != target.shape or preds.ndim < 3:
        raise ValueError(f"preds and target must have the same shape (..., C, H, W), got {tuple(preds.shape)} "
                         f"and {tuple(target.shape)}")
    if not isinstance(data_range, (int, float)) or isinstance(data_range, bool) or not data_range > 0:
        raise ValueError(f"data_range must be a positive number (e.g. 1.0 for [0, 1], 255 for uint8), got {data_range!r}")


def psnr(preds: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-image PSNR in dB over the last three dims, float64 ``(...)``; identical images give ``inf``."""
    _check_pair(preds, target, data_range)
    mse = (preds.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)


def ssim(preds: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-image SSIM over the last three dims, float64 ``(...)`` (Gaussian 11x11, sigma 1.5, valid region)."""
    _check_pair(preds, target, data_range)
    *lead, c, h, w = preds.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    p = preds.double().reshape(-1, c, h, w)
    t = target.double().reshape(-1, c, h, w)
    ssim_map = kornia.metrics.ssim(p, t, SSIM_WINDOW, max_val=float(data_range), eps=0.0, padding="valid")
    return ssim_map.mean(dim=(1, 2, 3)).reshape(lead)


def _zip_exact(a: Iterator[Any], b: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    sentinel = object()
    for x, y in itertools.zip_longest(a, b, fillvalue=sentinel):
        if x is sentinel or y is sentinel:
            raise ValueError("real and fake videos hold different numbers of videos")
        yield x, y


def _paired_frames(real: Any, fake: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matching batches of both sets as float ``(n, t, 3, h, w)`` in [0, 1]."""
    for r, f in _zip_exact(iter_batches(real, batch_size, "real_videos"), iter_batches(fake, batch_size, "fake_videos")):
        r, f = as_videos(torch.as_tensor(r), "real_videos"), as_videos(torch.as_tensor(f), "fake_videos")
        if r.shape != f.shape:
            raise ValueError(f"real and fake videos must have the same shape, got {tuple(r.shape)} and {tuple(f.shape)}")
        yield ((r + 1) / 2).transpose(1, 2), ((f + 1) / 2).transpose(1, 2)


def _per_video(real: Any, fake: Any, batch_size: int, fn: Any) -> tuple[list[float], int]:
    per_video: list[float] = []
    num_frames = 0
    for r, f in _paired_frames(real, fake, batch_size):
        if per_video and r.shape[1] != num_frames:
            raise ValueError(f"all videos must have the same number of frames, got {num_frames} and {r.shape[1]}")
        num_frames = r.shape[1]
        per_video.extend(float(v) for v in fn(r, f, 1.0).mean(dim=1))
    return per_video, num_frames


def video_psnr(real_videos: Any, fake_videos: Any, batch_size: int = 16) -> dict[str, Any]:
    """PSNR between paired videos (frame by frame, data range 1 after mapping to [0, 1])."""
    per_video, t = _per_video(real_videos, fake_videos, batch_size, psnr)
    return metric_result("psnr", float(np.mean(per_video)), PSNRProtocol(num_videos=len(per_video), num_frames=t),
                         std=float(np.std(per_video)), per_video=per_video)


def video_ssim(real_videos: Any, fake_videos: Any, batch_size: int = 16) -> dict[str, Any]:
    """SSIM between paired videos (frame by frame, data range 1 after mapping to [0, 1])."""
    per_video, t = _per_video(real_videos, fake_videos, batch_size, ssim)
    protocol = SSIMProtocol(num_videos=len(per_video), num_frames=t, window=f"Gaussian {SSIM_WINDOW}x{SSIM_WINDOW}, "
                            f"sigma {SSIM_SIGMA}", k1=SSIM_K1, k2=SSIM_K2)
    return metric_result("ssim", float(np.mean(per_video)), protocol, std=float(np.std(per_video)),
                         per_video=per_video)


def pixel_frame_consistency(videos: Any, batch_size: int = 16) -> dict[str, Any]:
    """Mean cosine similarity of consecutive frames as flat pixel vectors in [-1, 1] (no network needed)."""
    per_video: list[float] = []
    num_frames = 0
    for batch in iter_batches(videos, batch_size, "videos"):
        x = as_videos(torch.as_tensor(batch)).double()
        if x.shape[2] < 2:
            raise ValueError("frame consistency needs videos with at least 2 frames")
        if per_video and x.shape[2] != num_frames:
            raise ValueError(f"all videos must have the same number of frames, got {num_frames} and {x.shape[2]}")
        num_frames = x.shape[2]
        flat = x.transpose(1, 2).flatten(2)  # (n, t, 3 * h * w)
        cos = F.cosine_similarity(flat[:, :-1], flat[:, 1:], dim=-1, eps=1e-12)
        per_video.extend(float(v) for v in cos.mean(dim=1))
    protocol = FrameConsistencyProtocol(num_videos=len(per_video), num_frames=num_frames, space="pixel",
                                        pixel_range="[-1, 1] (uint8 mapped by x / 127.5 - 1)")
    return metric_result("frame_consistency_pixel", float(np.mean(per_video)), protocol,
                         std=float(np.std(per_video)), per_video=per_video)
