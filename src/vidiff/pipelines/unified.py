"""UniVid (arXiv 2603.13739): text-to-video, image-to-video and text+image-to-video with one model, the modes chosen
and blended by the weights of the dual-stream cross-attention (Eq. 7): λ_t (``text_scale``) on the text stream, λ_v
(``image_scale``) on the image stream. The image enters only through that stream (all the image encoder's patch
tokens, no concatenated latent), so λ_v = 0 makes the output exactly independent of the image, and λ_t = 0 of the text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..diffusion.samplers import sample
from ..diffusion.schedule import NoiseSchedule
from ..models.tokenizer import OpenCLIPTokenizer
from .base import (
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
from .image_io import ImageInput, resize_short_side_center_crop
from .image_to_video import image_guided_denoiser, unet_model_fn

__all__ = ["UnifiedVideoPipeline", "stream_weights"]


def stream_weights(prompt_given: bool, image_given: bool, text_scale: float, image_scale: float) -> tuple[float, float]:
    """(λ_t, λ_v) of a call: a missing prompt forces λ_t = 0, a missing image λ_v = 0; one-line errors otherwise."""
    for name, value in (("text_scale", text_scale), ("image_scale", image_scale)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise PipelineError(f"{name} must be a finite number >= 0, got {value!r}")
    if not prompt_given and not image_given:
        raise PipelineError("give a prompt, an image, or both")
    lam_t = float(text_scale) if prompt_given else 0.0
    lam_v = float(image_scale) if image_given else 0.0
    if lam_t == 0.0 and lam_v == 0.0:
        raise PipelineError("both streams are off (text_scale and image_scale are 0 for what was given): the video "
                            "would follow neither the prompt nor the image")
    return lam_t, lam_v


class UnifiedVideoPipeline(VideoDiffusionPipeline):
    """Prompt and/or image → video with a UniVid U-Net (``vidiff generate --model UNIVID [--image IMG]``).

    Guidance follows the training null (empty text, λ_v = 0): ``guidance_scale`` pulls toward the call's streams. With
    both streams on, ``image_guidance_scale`` splits it as DynamiCrafter does, the image-only branch being the I2V mode
    (λ_t = 0): e_u + s_img·(e_i − e_u) + s·(e_ti − e_i).
    """

    modules = ("unet", "vae", "text_encoder", "image_encoder")

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: OpenCLIPTokenizer,
        image_encoder: torch.nn.Module,
        schedule: NoiseSchedule,
        defaults: dict | None = None,
        vocabulary: list[str] | None = None,
    ):
        super().__init__(defaults, vocabulary)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.image_encoder, self.schedule = image_encoder, schedule
        if not unet.config.image_cross_attention:
            raise PipelineError("this U-Net has no image stream (image_cross_attention): it is not a UniVid model")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", lora=None, vae=None) -> UnifiedVideoPipeline:
        folder = Path(folder)
        index = read_model_index(folder)
        if index.get("_class_name") != "UnifiedVideoPipeline":
            raise PipelineError(f"{folder} holds a {index.get('_class_name')!r} model, not a UniVid model "
                                "(UnifiedVideoPipeline)")
        pipe = cls(
            unet=load_component(folder, "unet", torch_dtype, index),
            vae=load_vae(folder, index, vae),
            text_encoder=load_component(folder, "text_encoder", torch_dtype, index),
            tokenizer=OpenCLIPTokenizer.from_pretrained(folder / "tokenizer"),
            image_encoder=load_component(folder, "image_encoder", torch_dtype, index),
            schedule=NoiseSchedule.from_pretrained(folder / "scheduler"),
            defaults=index.get("defaults"),
            vocabulary=index.get("vocabulary"),
        )
        pipe.load_loras(lora)
        return pipe.to(device)

    def preprocess_image(self, image: ImageInput | Sequence[ImageInput], height: int, width: int) -> torch.Tensor:
        """Image(s) → (b, 3, H, W) in [-1, 1] (short side resized, centre crop)."""
        items = list(image) if isinstance(image, list | tuple) else [image]
        if not items:
            raise PipelineError("the image list is empty")
        return torch.cat([resize_short_side_center_crop(item, height, width) for item in items])

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [-1, 1] → every patch token of the image encoder, (b, tokens, width): the image stream."""
        return self.image_encoder(images.to(self.device, self.dtype)).float()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | Sequence[ImageInput] | torch.Tensor | None = None,
        text_scale: float = 1.0,
        image_scale: float = 1.0,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_rescale: float | None = None,
        fps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        output_type: str = "np",
        sampler: str = "ddim",
        timestep_spacing: str | None = None,
        latents: torch.Tensor | None = None,
        decode_chunk_size: int = 1,
        progress: bool = True,
        callback: Callable | None = None,
    ) -> VideoPipelineOutput:
        """One video per prompt (or per image). ``image``: a path, PIL image, array, or a (b, 3, H, W) tensor in
        [-1, 1]; ``text_scale``/``image_scale``: λ_t and λ_v (0 switches a stream off; values between blend)."""
        lam_t, lam_v = stream_weights(prompt is not None, image is not None, text_scale, image_scale)
        num_frames, height, width = (self.resolve(k, v) for k, v in
                                     (("num_frames", num_frames), ("height", height), ("width", width)))
        steps = self.resolve("num_inference_steps", num_inference_steps)
        scale = float(self.resolve("guidance_scale", guidance_scale))
        rescale = float(self.resolve("guidance_rescale", guidance_rescale))
        fps = self.resolve("fps", fps)
        eta = float(self.resolve("eta", eta))
        spacing = self.resolve("timestep_spacing", timestep_spacing)
        self.check_args(height, width, num_frames, steps, output_type, guidance_scale=scale, guidance_rescale=rescale,
                        eta=eta)
        _positive_int(num_frames, "num_frames")
        self.check_sampler(sampler, spacing)
        if image_guidance_scale is not None and not (lam_t and lam_v):
            raise PipelineError("image_guidance_scale splits the guidance between two streams: it needs both a prompt "
                                "and an image")
        generator = seeded_generator(generator, seed)

        prompts = as_prompt_list(prompt, "prompt") if prompt is not None else None
        images = None
        if image is not None:
            images = image if isinstance(image, torch.Tensor) else self.preprocess_image(image, height, width)
            if images.ndim != 4 or images.shape[1] != 3:
                raise PipelineError(f"image tensors must be (batch, 3, height, width), got {tuple(images.shape)}")
        b = len(prompts) if prompts is not None else images.shape[0]
        if prompts is not None and images is not None and images.shape[0] != b:
            if images.shape[0] != 1:
                raise PipelineError(f"{images.shape[0]} images for {b} prompts")
            images = images.expand(b, -1, -1, -1)
        if prompts is not None:
            self.warn_unknown_words(prompts)
        negatives = as_prompt_list(negative_prompt, "negative_prompt") if negative_prompt is not None else [""]
        if len(negatives) == 1:
            negatives = negatives * b
        if len(negatives) != b:
            raise PipelineError(f"{len(negatives)} negative prompts for {b} videos")

        context = self.encode_prompt(prompts if prompts is not None else [""] * b)
        image_context = self.encode_image(images) if images is not None else None
        if image_context is None:  # the stream is off (λ_v = 0); zero tokens keep the batch layout of the branches
            width_v = self.image_encoder.config["width"]
            image_context = torch.zeros(b, 1, width_v, device=self.device)
        fps_tensor = torch.full((b,), int(fps), dtype=torch.long, device=self.device)

        def row(value: float) -> torch.Tensor:
            return torch.full((b,), value, device=self.device)

        cond = {"text_context": context, "image_context": image_context, "fps": fps_tensor,
                "text_scale": row(lam_t), "image_scale": row(lam_v)}
        uncond = no_text = None
        if scale != 1.0:
            uncond = {"text_context": self.encode_prompt(negatives), "image_context": image_context,
                      "fps": fps_tensor, "text_scale": row(1.0), "image_scale": row(0.0)}
        if image_guidance_scale is not None:
            no_text = {**cond, "text_scale": row(0.0)}
        denoise = image_guided_denoiser(unet_model_fn(self.unet), cond, uncond, scale,
                                        image_guidance_scale=image_guidance_scale, no_text=no_text,
                                        guidance_rescale=rescale)
        x_T = self.initial_latents(b, num_frames, height, width, latents, generator)
        z = sample(sampler, denoise, x_T, self.schedule, steps, eta=eta, spacing=spacing, generator=generator,
                   callback=callback, progress=progress)
        return self.finish(z, output_type, decode_chunk_size)
