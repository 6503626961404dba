"""Temporal super-resolution in latent space (VideoGen §3.3): a video, or latent clip, at ×2 / ×4 / ×8 its frame rate.

Each pass inserts one frame between every pair of keyframes (t → 2t − 1; keyframes kept bit for bit in latent space),
built by ``guidance``: ``flow`` warps both keyframes to the middle along the flow network's bilateral flows and blends
them with its mask (:mod:`vidiff.models.latent_flow`); ``lerp`` and ``slerp`` are the interpolation baselines. The
refiner diffusion model and the frequency fusion of the paper are not part of this pipeline yet.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.autoencoder import decode_video, encode_video, spatial_factor_of
from ..models.latent_flow import bilateral_merge, interpolate_latents
from .base import OUTPUT_TYPES, PipelineError, VideoPipelineOutput, load_component, read_model_index

__all__ = ["GUIDANCE", "TemporalSuperResolutionPipeline"]

CLASS_NAME = "TemporalSuperResolutionPipeline"
GUIDANCE = ("flow", "lerp", "slerp")


class TemporalSuperResolutionPipeline:
    """``vae`` encodes and decodes; ``flow_net`` (a :class:`~vidiff.models.latent_flow.LatentFlowNet`, or None for the
    interpolation baselines only) predicts the bilateral flows."""

    def __init__(self, vae: torch.nn.Module, flow_net: torch.nn.Module | None = None,
                 defaults: dict | None = None) -> None:
        self.vae, self.flow_net, self.defaults = vae, flow_net, dict(defaults or {})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> TemporalSuperResolutionPipeline:
        folder = Path(folder)
        index = read_model_index(folder)
        if index.get("_class_name") != CLASS_NAME:
            raise PipelineError(f"{folder} holds a {index.get('_class_name')!r} model, not a temporal "
                                f"super-resolution model ({CLASS_NAME})")
        vae = load_component(folder, "vae", None, index).to(device)
        flow_net = load_component(folder, "flow_net", None, index).to(device)
        return cls(vae, flow_net, index.get("defaults"))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _video_tensor(self, video: Any) -> torch.Tensor:
        """(b, 3, t, H, W) in [-1, 1] from such a tensor, or from uint8 frames (t, H, W, 3) / (b, t, H, W, 3)."""
        if isinstance(video, np.ndarray) or (isinstance(video, torch.Tensor) and video.dtype == torch.uint8):
            x = torch.as_tensor(np.asarray(video))
            if x.dim() == 4:
                x = x[None]
            if x.dim() != 5 or x.shape[-1] != 3:
                raise PipelineError(f"uint8 frames must be (frames, H, W, 3) or (batch, frames, H, W, 3), got "
                                    f"{tuple(x.shape)}")
            x = x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        elif isinstance(video, torch.Tensor):
            x = video.float()
            if x.dim() != 5 or x.shape[1] != 3:
                raise PipelineError(f"a video tensor must be (batch, 3, frames, H, W) in [-1, 1], got {tuple(x.shape)}")
        else:
            raise PipelineError(f"video must be uint8 frames or a (batch, 3, frames, H, W) tensor, got "
                                f"{type(video).__name__}")
        f = spatial_factor_of(self.vae)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise PipelineError(f"frame size {tuple(x.shape[-2:])} is not a multiple of the autoencoder's factor {f}")
        return x

    def _middle(self, guidance: str):
        if guidance in ("lerp", "slerp"):
            return guidance
        if self.flow_net is None:
            raise PipelineError("guidance 'flow' needs a flow network (a temporal super-resolution model folder)")

        def middle(a: torch.Tensor, b: torch.Tensor, i: int) -> torch.Tensor:
            f0, f1, mask = self.flow_net(a, b)
            return bilateral_merge(a, b, f0, f1, mask)

        return middle

    @torch.no_grad()
    def __call__(self, video: Any = None, factor: int = 2, guidance: str = "flow", latents: torch.Tensor | None = None,
                 output_type: str = "np") -> VideoPipelineOutput:
        """``video`` (frames) or ``latents`` (b, c, t, h, w, scaled); ``factor`` a power of two; the output has
        (t − 1)·factor + 1 frames."""
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or factor & (factor - 1):
            raise PipelineError(f"factor must be a power of two >= 2 (2, 4, 8), got {factor!r}")
        if guidance not in GUIDANCE:
            raise PipelineError(f"guidance must be one of {', '.join(GUIDANCE)}, got {guidance!r}")
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if (video is None) == (latents is None):
            raise PipelineError("give a video or latents (one of them)")
        z = encode_video(self.vae, self._video_tensor(video).to(self.device), sample=False) if latents is None \
            else latents.to(self.device).float()
        if z.shape[2] < 2:
            raise PipelineError(f"temporal super-resolution needs at least 2 frames, got {z.shape[2]}")
        middle = self._middle(guidance)
        for _ in range(int(math.log2(factor))):
            z = interpolate_latents(z, middle)
        if output_type == "latent":
            return VideoPipelineOutput(frames=z, latents=z)
        frames = decode_video(self.vae, z, chunk_size=16)
        if output_type == "pt":
            return VideoPipelineOutput(frames=frames, latents=z)
        from ..utils.video import batch_to_uint8_frames

        return VideoPipelineOutput(frames=batch_to_uint8_frames(frames.clamp(-1, 1)), latents=z)
