"""Text-to-video generation with a VideoCrafter-style latent video diffusion model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..diffusion.guidance import guided_denoiser
from ..diffusion.long_video import reschedule_noise, windowed_denoiser
from ..diffusion.samplers import SAMPLER_NAMES, sample
from ..diffusion.schedule import NoiseSchedule
from ..models.feature_cache import AttentionBroadcast
from ..models.tokenizer import OpenCLIPTokenizer
from .base import (
    OUTPUT_TYPES,
    PipelineError,
    VideoDiffusionPipeline,
    VideoPipelineOutput,
    _positive_int,
    as_prompt_list,
    load_component,
    load_vae,
    read_model_index,
    seeded_generator,
)

__all__ = ["OUTPUT_TYPES", "SAMPLERS", "PipelineError", "TextToVideoPipeline", "VideoPipelineOutput"]

SAMPLERS = SAMPLER_NAMES


class TextToVideoPipeline(VideoDiffusionPipeline):
    """Prompt → video: OpenCLIP text encoding, sampling of the 3D U-Net with CFG (DDIM or any registered sampler),
    per-frame decoding."""

    CLASS_NAME = "TextToVideoPipeline"

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: OpenCLIPTokenizer,
        schedule: NoiseSchedule,
        defaults: dict | None = None,
        vocabulary: list[str] | None = None,
    ):
        super().__init__(defaults, vocabulary)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule = schedule

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
        lora=None, vae=None,
    ) -> TextToVideoPipeline:
        """Load a model folder; ``torch_dtype`` applies to the U-Net and text encoder (the autoencoder stays fp32).
        ``lora``: LoRA files to load onto it (a path, a (path, scale) pair, or a list of them); ``vae``: decode with
        another autoencoder of the same latent space, e.g. a video decoder (:func:`~vidiff.pipelines.base.load_vae`)."""
        folder = Path(folder)
        index = read_model_index(folder)
        if index.get("_class_name") not in (None, cls.CLASS_NAME):
            raise PipelineError(f"{folder} holds a {index['_class_name']!r} model; use the matching pipeline (vidiff animate)")
        pipe = cls(
            unet=load_component(folder, "unet", torch_dtype, index),
            vae=load_vae(folder, index, vae),
            text_encoder=load_component(folder, "text_encoder", torch_dtype, index),
            tokenizer=OpenCLIPTokenizer.from_pretrained(folder / "tokenizer"),
            schedule=NoiseSchedule.from_pretrained(folder / "scheduler"),
            defaults=index.get("defaults"),
            vocabulary=index.get("vocabulary"),
        )
        pipe.load_loras(lora)
        return pipe.to(device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
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
        deep_cache: int | tuple[int, int] | None = None,
        attention_broadcast: bool | AttentionBroadcast = False,
        window: int | None = None,
        window_stride: int | None = None,
        noise_rescheduling: bool = True,
        latents: torch.Tensor | None = None,
        decode_chunk_size: int = 1,
        progress: bool = True,
        callback: Callable | None = None,
        concat: torch.Tensor | None = None,
    ) -> VideoPipelineOutput:
        """Generate one video per prompt. Unset arguments take the model folder's defaults (the official scripts').

        ``concat`` (b, c', t, h, w): latents concatenated to the noisy latent on channels at every step, in both
        guidance branches, for U-Nets that take ``c + c'`` input channels (VideoGen's reference on frame 0:
        :class:`~vidiff.pipelines.reference.ReferenceVideoPipeline`).

        ``deep_cache`` (interval, or (interval, depth)) reuses the U-Net's deep features between steps (DeepCache;
        None: off, exact); ``attention_broadcast`` (True, or an :class:`AttentionBroadcast`) reuses attention outputs
        in the middle of the trajectory (PAB; False: off, exact).

        ``window`` generates ``num_frames`` > window frames by co-denoising overlapping windows of that many frames,
        ``window_stride`` apart (default window // 4), each frame's prediction fused over its windows (Gen-L-Video),
        from noise rescheduled as FreeNoise does (``noise_rescheduling``); up to ``window`` frames nothing changes.
        """
        prompts = as_prompt_list(prompt, "prompt")
        num_frames, height, width = (self.resolve(k, v) for k, v in
                                     (("num_frames", num_frames), ("height", height), ("width", width)))
        steps = self.resolve("num_inference_steps", num_inference_steps)
        scale = float(self.resolve("guidance_scale", guidance_scale))
        rescale = float(self.resolve("guidance_rescale", guidance_rescale))
        fps = self.resolve("fps", fps)
        eta = float(self.resolve("eta", eta))
        spacing = self.resolve("timestep_spacing", timestep_spacing)
        window = self.check_window(num_frames, window, window_stride, deep_cache, attention_broadcast)
        windowed = window is not None
        self.check_args(height, width, window if windowed else num_frames, steps, output_type, guidance_scale=scale,
                        guidance_rescale=rescale, eta=eta)
        _positive_int(num_frames, "num_frames")
        self.check_sampler(sampler, spacing)
        generator = seeded_generator(generator, seed)
        self.warn_unknown_words(prompts)

        b = len(prompts)
        negatives = as_prompt_list(negative_prompt, "negative_prompt") if negative_prompt is not None else [""]
        if len(negatives) == 1:
            negatives = negatives * b
        if len(negatives) != b:
            raise PipelineError(f"{len(negatives)} negative prompts for {b} prompts")
        dtype = self.dtype
        context = self.encode_prompt(prompts).to(dtype)
        uncond_context = self.encode_prompt(negatives).to(dtype) if scale != 1.0 else None
        x_T = self.initial_latents(b, num_frames, height, width, latents, generator)
        stride = window_stride or max(window // 4, 1) if windowed else None
        if windowed and noise_rescheduling and latents is None:
            x_T = reschedule_noise(x_T, window, stride, generator)

        fps_tensor = torch.full((b,), int(fps), dtype=torch.long, device=self.device)
        cond = {"text_context": context, "fps": fps_tensor}
        uncond = {"text_context": uncond_context, "fps": fps_tensor} if uncond_context is not None else None
        if concat is not None:
            if windowed:
                raise PipelineError("window generation does not take a concatenated condition")
            if concat.dim() != 5 or concat.shape[0] != b or tuple(concat.shape[2:]) != tuple(x_T.shape[2:]):
                raise PipelineError(f"concat must be (batch, channels, frames, h, w) matching the latents "
                                    f"{tuple(x_T.shape)}, got {tuple(concat.shape)}")
            cond["concat"] = concat.to(self.device, dtype)
            if uncond is not None:
                uncond["concat"] = cond["concat"]
        want = self.unet.config.in_channels - x_T.shape[1]
        got = 0 if concat is None else concat.shape[1]
        if want != got:
            raise PipelineError(f"this U-Net takes {self.unet.config.in_channels} input channels: "
                                + (f"give a {want}-channel concat" if concat is None else
                                   f"the latent has {x_T.shape[1]} and concat {got}"))

        extra = self.feature_reuse_kwargs(deep_cache, attention_broadcast)

        def model(x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
            return self.unet(x.to(dtype), t, **kw, **extra).float()

        denoise = guided_denoiser(model, cond, uncond, scale, rescale)
        if windowed:
            denoise = windowed_denoiser(denoise, window, stride)
        z = sample(sampler, denoise, x_T, self.schedule, steps, eta=eta, spacing=spacing, generator=generator,
                   callback=callback, progress=progress)
        return self.finish(z, output_type, decode_chunk_size)
