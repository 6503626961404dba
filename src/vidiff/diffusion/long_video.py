"""Videos longer than a model's trained length by temporal co-denoising of overlapping windows.

Gen-L-Video (Wang et al. 2023) denoises overlapping clips of the trained length in parallel and fuses each frame's
prediction across the clips that contain it; FreeNoise (Qiu et al. 2024) adds *noise rescheduling*, so the initial
noise of later windows repeats the first window's frames in locally shuffled order, which keeps content consistent
from window to window without retraining. Both act on the ``denoise(x, t)`` callable the samplers use, so they work
with every sampler and any guidance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["reschedule_noise", "window_starts", "window_weights", "windowed_denoiser"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_window(num_frames: int, window: int, stride: int) -> None:
    for name, value in (("num_frames", num_frames), ("window", window), ("window stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if stride > window:
        raise ValueError(f"the window stride ({stride}) must not exceed the window ({window}), or frames are skipped")


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frame of each window: 0, stride, 2·stride, ..., and a last window ending at the last frame."""
    _check_window(num_frames, window, stride)
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


def window_weights(window: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-frame fusion weights of a window: highest in the middle, falling linearly to 1/(window/2+1) at its ends, so
    a frame's fused prediction leans on the windows that see it with the most context."""
    i = torch.arange(window, dtype=torch.float64)
    centre = (window - 1) / 2
    w = 1.0 - (i - centre).abs() / (centre + 1.0)
    return w.to(dtype)


def windowed_denoiser(denoise: Denoiser, window: int, stride: int) -> Denoiser:
    """``denoise`` applied to every window of ``window`` frames (``stride`` apart), the outputs fused per frame by a
    weighted mean; a video of at most ``window`` frames goes through ``denoise`` unchanged."""
    _check_window(window, window, stride)

    def fused(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        if frames <= window:
            return denoise(x, t)
        weights = window_weights(window, x.dtype).to(x.device).view(1, 1, window, 1, 1)
        total = torch.zeros_like(x)
        norm = torch.zeros(1, 1, frames, 1, 1, dtype=x.dtype, device=x.device)
        for start in window_starts(frames, window, stride):
            out = denoise(x[:, :, start:start + window], t)
            total[:, :, start:start + window] += out * weights
            norm[:, :, start:start + window] += weights
        return total / norm

    return fused


def reschedule_noise(noise: torch.Tensor, window: int, stride: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """FreeNoise's rescheduling: frames past the first window repeat the first window's noise, each block of ``stride``
    frames a shuffled copy of the matching block of that window (frames t ≥ window take frames from the block
    (t − window) // stride mod (window // stride))."""
    b, c, frames, h, w = noise.shape
    _check_window(frames, window, stride)
    if frames <= window:
        return noise
    out = noise.clone()
    blocks = max(window // stride, 1)
    for k, start in enumerate(range(window, frames, stride)):
        src = (k % blocks) * stride
        size = min(stride, frames - start, window - src)
        perm = torch.randperm(size, generator=generator, device=generator.device if generator else "cpu")
        out[:, :, start:start + size] = noise[:, :, src:src + size][:, :, perm.to(noise.device)]
        if size < min(stride, frames - start):  # a stride that does not divide the window: fill from its start
            rest = min(stride, frames - start) - size
            out[:, :, start + size:start + size + rest] = noise[:, :, :rest]
    return out
