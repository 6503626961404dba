"""Temporal super-resolution in latent space (VideoGen §3.3): a video, or latent clip, at ×2 / ×4 / ×8 its frame rate.

Each pass inserts one frame between every pair of keyframes (t → 2t − 1; keyframes kept bit for bit in latent space),
built by ``guidance``: ``flow`` warps both keyframes to the middle along the flow network's bilateral flows and blends
them with its mask (:mod:`vidiff.models.latent_flow`); ``lerp`` and ``slerp`` are the interpolation baselines. With a
refiner (:class:`TemporalRefinerPipeline`, a diffusion U-Net over the dense clip conditioned on keyframes and warps)
each pass then samples the refined clip, puts the keyframes back exactly and fuses the inserted frames:
ẑ = φ_N(z_w) + (z_r − φ_N(z_r)) (``fusion`` N; the warp's low frequencies, the refiner's details).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.autoencoder import decode_video, encode_video, spatial_factor_of
from ..models.latent_flow import bilateral_merge, fuse_frequencies, interpolate_latents
from .base import OUTPUT_TYPES, PipelineError, VideoPipelineOutput, load_component, read_model_index
from .text_to_video import TextToVideoPipeline

__all__ = ["GUIDANCE", "TemporalRefinerPipeline", "TemporalSuperResolutionPipeline"]

CLASS_NAME = "TemporalSuperResolutionPipeline"
GUIDANCE = ("flow", "lerp", "slerp")


class TemporalRefinerPipeline(TextToVideoPipeline):
    """VideoGen's refiner (``vidiff train`` task temporal_refiner): a U-Net of ``2c + 1`` input channels that denoises
    a dense clip given ``[c ‖ m]`` (keyframes and warps, keyframe mask), with the empty caption."""

    CLASS_NAME = "TemporalRefinerPipeline"

    @property
    def window(self) -> int:
        """Frames per refiner call: the clip length it was trained on (odd)."""
        return int(self.defaults.get("num_frames", 9))

    @torch.no_grad()
    def refine(self, condition: torch.Tensor, num_inference_steps: int | None = None, seed: int | None = None,
               fps: int | None = None) -> torch.Tensor:
        """``condition`` (b, c + 1, T, h, w) → refined latents (b, c, T, h, w), sampled from noise."""
        from ..models.autoencoder import spatial_factor_of

        b, _, t, h, w = condition.shape
        f = spatial_factor_of(self.vae)
        out = self([""] * b, num_frames=t, height=h * f, width=w * f, num_inference_steps=num_inference_steps,
                   guidance_scale=1.0, seed=seed, fps=fps, output_type="latent", progress=False, concat=condition)
        return out.latents


class TemporalSuperResolutionPipeline:
    """``vae`` encodes and decodes; ``flow_net`` (a :class:`~vidiff.models.latent_flow.LatentFlowNet`, or None for the
    interpolation baselines only) predicts the bilateral flows; ``refiner`` (optional) refines each pass."""

    def __init__(self, vae: torch.nn.Module, flow_net: torch.nn.Module | None = None,
                 defaults: dict | None = None, refiner: TemporalRefinerPipeline | None = None) -> None:
        self.vae, self.flow_net, self.defaults, self.refiner = vae, flow_net, dict(defaults or {}), refiner

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu",
                        refiner: str | os.PathLike | None = None) -> TemporalSuperResolutionPipeline:
        """A temporal super-resolution folder (flow network + autoencoder); ``refiner`` a refiner model folder
        (default: the folder's ``refiner`` entry, relative to it, if any)."""
        folder = Path(folder)
        index = read_model_index(folder)
        if index.get("_class_name") != CLASS_NAME:
            raise PipelineError(f"{folder} holds a {index.get('_class_name')!r} model, not a temporal "
                                f"super-resolution model ({CLASS_NAME})")
        vae = load_component(folder, "vae", None, index).to(device)
        flow_net = load_component(folder, "flow_net", None, index).to(device)
        source = refiner if refiner is not None else (folder / index["refiner"] if index.get("refiner") else None)
        refine = TemporalRefinerPipeline.from_pretrained(source, device=device) if source is not None else None
        return cls(vae, flow_net, index.get("defaults"), refine)

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

    def _refined(self, dense: torch.Tensor, fusion: int, steps: int | None, seed: int | None,
                 fps: int | None) -> torch.Tensor:
        """Refine a dense clip (keyframes at even indices, warps at odd) in windows of the refiner's length that share
        their boundary keyframes; keyframes come back exactly, inserted frames fused with their warps."""
        b, c, t, h, w = dense.shape
        key = torch.zeros(b, 1, t, h, w, dtype=dense.dtype, device=dense.device)
        key[:, :, 0::2] = 1
        cond = torch.cat([dense, key], dim=1)
        window = min(self.refiner.window, t)
        if window % 2 == 0 or window < 3:
            raise PipelineError(f"the refiner's window must be an odd number of frames >= 3, got {window}")
        out = dense.clone()
        start = 0
        while start < t - 1:
            stop = min(start + window, t)
            refined = self.refiner.refine(cond[:, :, start:stop], steps, seed, fps)
            odd = slice(1, stop - start, 2)
            out[:, :, start:stop][:, :, odd] = torch.stack(
                [fuse_frequencies(dense[:, :, start + j], refined[:, :, j], fusion)
                 for j in range(1, stop - start, 2)], dim=2)
            start = stop - 1
        return out

    @torch.no_grad()
    def __call__(self, video: Any = None, factor: int = 2, guidance: str = "flow", latents: torch.Tensor | None = None,
                 output_type: str = "np", refine: bool = True, fusion: int = 2, refine_steps: int | None = None,
                 seed: int | None = 0, fps: int | None = None) -> VideoPipelineOutput:
        """``video`` (frames) or ``latents`` (b, c, t, h, w, scaled); ``factor`` a power of two; the output has
        (t − 1)·factor + 1 frames. With a refiner and ``refine``, each pass is refined (``refine_steps`` sampling
        steps, ``seed``) and fused at block size ``fusion`` (1: the warp alone); ``fps`` is the input's rate (the
        refiner is conditioned on the doubled rate of each pass)."""
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
        rate = fps or int(self.defaults.get("fps", 8))
        for _ in range(int(math.log2(factor))):
            z = interpolate_latents(z, middle)
            rate *= 2
            if self.refiner is not None and refine:
                z = self._refined(z, fusion, refine_steps, seed, rate)
        if output_type == "latent":
            return VideoPipelineOutput(frames=z, latents=z)
        frames = decode_video(self.vae, z, chunk_size=16)
        if output_type == "pt":
            return VideoPipelineOutput(frames=frames, latents=z)
        from ..utils.video import batch_to_uint8_frames

        return VideoPipelineOutput(frames=batch_to_uint8_frames(frames.clamp(-1, 1)), latents=z)
