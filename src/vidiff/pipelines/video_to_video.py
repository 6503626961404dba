"""Video editing with a text-to-video model: SDEdit and inversion + new prompt.

SDEdit (Meng et al. 2022) noises the video's latent to a strength s (the timestep s·T) and denoises it under the new
prompt: structure (position, motion) survives from the source, detail follows the prompt. With ``inversion="ddim"``
the noisy latent is not drawn but reached by deterministic DDIM inversion under the *source* prompt, so whatever the
new prompt does not change is reconstructed instead of re-sampled (the "inversion + new prompt" editing of the
survey's video-editing section, without prompt-to-prompt attention control).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion.guidance import guided_denoiser
from ..diffusion.samplers import invert, sample, timesteps_of
from ..models.autoencoder import encode_video
from .base import PipelineError, VideoPipelineOutput, as_prompt_list, seeded_generator
from .text_to_video import TextToVideoPipeline

__all__ = ["INVERSIONS", "VideoToVideoPipeline", "load_video"]

INVERSIONS = (None, "ddim")
VideoInput = str | os.PathLike | np.ndarray | torch.Tensor


def load_video(video: VideoInput, height: int, width: int) -> torch.Tensor:
    """A path, uint8 frames (t, H, W, 3) / (b, t, H, W, 3) or a float tensor (b, 3, t, H, W) in [-1, 1] → float
    (b, 3, t, height, width) in [-1, 1], frames resized (antialiased bilinear) where their size differs."""
    if isinstance(video, str | os.PathLike):
        from ..utils.video import read_video

        if not Path(video).is_file():
            raise PipelineError(f"video not found: {video}")
        video = read_video(video)[0]
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim not in (4, 5) or video.shape[-1] != 3:
            raise PipelineError(f"video arrays must be uint8 (t, H, W, 3) or (b, t, H, W, 3), got {video.dtype} "
                                f"{video.shape}")
        frames = torch.from_numpy(np.ascontiguousarray(video if video.ndim == 5 else video[None]))
        video = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3 or not video.is_floating_point():
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise PipelineError(f"a video tensor must be float (b, 3, t, H, W) in [-1, 1], got {got}")
    if video.shape[2] < 1:
        raise PipelineError("the video has no frames")
    video = video.float().clamp(-1, 1)
    b, c, t, h, w = video.shape
    if (h, w) != (height, width):
        flat = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        flat = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        video = flat.reshape(b, t, c, height, width).permute(0, 2, 1, 3, 4)
    return video.contiguous()


def _per_row(items: list[str], b: int, what: str) -> list[str]:
    """One prompt per batch row: a single one is repeated, ``b`` are kept, anything else is an error."""
    if len(items) not in (1, b):
        raise PipelineError(f"{len(items)} {what} for a batch of {b}: give one or {b}")
    return items * (b // len(items))


class VideoToVideoPipeline(TextToVideoPipeline):
    """Edit a video toward a new prompt with a text-to-video model folder (the same folder ``vidiff generate`` uses)."""

    @torch.no_grad()
    def __call__(
        self,
        video: VideoInput,
        prompt: str | list[str],
        strength: float = 0.6,
        inversion: str | None = None,
        inversion_iterations: int = 0,
        source_prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        fps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        output_type: str = "np",
        sampler: str = "ddim",
        timestep_spacing: str | None = None,
        decode_chunk_size: int = 1,
        progress: bool = True,
        callback: Callable | None = None,
    ) -> VideoPipelineOutput:
        """Edit ``video`` toward ``prompt``: the last ⌈strength·steps⌉ sampling steps are run under the new prompt.

        ``inversion=None`` (SDEdit) starts from the video's latent noised with fresh noise; ``"ddim"`` from its DDIM
        inversion under ``source_prompt`` (no guidance), with ``inversion_iterations`` fixed-point refinements per step
        (see :func:`vidiff.diffusion.samplers.invert`); with inversion η defaults to 0, so the path back is the mirror
        of the path up. Strength 1 regenerates from pure noise (SDEdit) or from the fully inverted latent.
        """
        if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 < strength <= 1.0:
            raise PipelineError(f"strength must be a number in (0, 1], got {strength!r}")
        if inversion not in INVERSIONS:
            raise PipelineError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")
        if isinstance(inversion_iterations, bool) or not isinstance(inversion_iterations, int) or inversion_iterations < 0:
            raise PipelineError(f"inversion_iterations must be an int >= 0, got {inversion_iterations!r}")
        if inversion is None and inversion_iterations:
            raise PipelineError("inversion_iterations needs inversion='ddim'")
        prompts = as_prompt_list(prompt, "prompt")
        height, width = self.resolve("height", height), self.resolve("width", width)
        steps = self.resolve("num_inference_steps", num_inference_steps)
        scale = float(self.resolve("guidance_scale", guidance_scale))
        rescale = float(self.resolve("guidance_rescale", guidance_rescale))
        fps = self.resolve("fps", fps)
        eta = float(eta if eta is not None else (0.0 if inversion else self.resolve("eta", None)))
        spacing = self.resolve("timestep_spacing", timestep_spacing)
        frames = load_video(video, height, width)
        self.check_args(height, width, frames.shape[2], steps, output_type, guidance_scale=scale,
                        guidance_rescale=rescale, eta=eta)
        self.check_sampler(sampler, spacing)
        generator = seeded_generator(generator, seed)
        self.warn_unknown_words(prompts)
        b = max(len(prompts), frames.shape[0])
        if frames.shape[0] not in (1, b):
            raise PipelineError(f"{frames.shape[0]} videos and {len(prompts)} prompts: give one or {b} of each")
        frames, prompts = frames.expand(b, -1, -1, -1, -1), _per_row(prompts, b, "prompts")
        sources = _per_row(as_prompt_list(source_prompt, "source_prompt") if source_prompt else [""], b,
                           "source prompts")

        dtype = self.dtype
        z0 = encode_video(self.vae, frames.to(self.device), sample=False).float()
        timesteps = timesteps_of(sampler, self.schedule, steps, spacing)
        skip = min(max(steps - math.ceil(strength * steps), 0), steps - 1)
        fps_tensor = torch.full((b,), int(fps), dtype=torch.long, device=self.device)

        def model(x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
            return self.unet(x.to(dtype), t, **kw).float()

        if inversion == "ddim":
            source = {"text_context": self.encode_prompt(sources).to(dtype), "fps": fps_tensor}
            x_start = invert(guided_denoiser(model, source, None, 1.0), z0, self.schedule,
                             timesteps[skip:][::-1].copy(), iterations=inversion_iterations, progress=progress)
        else:
            noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else "cpu").to(self.device)
            x_start = self.schedule.add_noise(z0, noise, int(timesteps[skip]))

        negatives = _per_row(as_prompt_list(negative_prompt, "negative_prompt") if negative_prompt is not None
                             else [""], b, "negative prompts")
        cond = {"text_context": self.encode_prompt(prompts).to(dtype), "fps": fps_tensor}
        uncond = {"text_context": self.encode_prompt(negatives).to(dtype), "fps": fps_tensor} if scale != 1.0 else None
        denoise = guided_denoiser(model, cond, uncond, scale, rescale)
        z = sample(sampler, denoise, x_start, self.schedule, steps, eta=eta, spacing=spacing, generator=generator,
                   callback=callback, progress=progress, skip_steps=skip)
        return self.finish(z, output_type, decode_chunk_size)
