"""Image-to-video generation with DynamiCrafter ("dc") and VideoCrafter1 i2v ("vc") model folders.

The conditioning follows the official inference scripts (see ``official-lvdm-architecture.md`` §7):

* **vc**: the image is stretched to H×W; the U-Net gets text tokens and ``image_context`` = projector(CLIP(image)) (16
  tokens shared by all frames); the unconditional branch uses text("") and projector(CLIP(all-zero 224×224 image)).
* **dc**: the image is short-side resized and centre-cropped to H×W; ``image_context`` = projector(CLIP(image)) (16
  tokens per frame). The U-Net also sees the image itself: ``concat`` = VAE posterior *sample* × scale factor of the image,
  repeated over the frames (interpolation/looping: zeros except the first and last frame), concatenated to the noisy
  latent on channels. The unconditional branch keeps the same ``concat`` and uses text("") and projector(CLIP(zeros)).
  With ``image_guidance_scale`` the three-pass multi-condition guidance of DynamiCrafter is used.

The per-step model call and guidance live in :func:`unet_model_fn` and :func:`image_guided_denoiser`, shared by the
pipeline and the reference-fixture tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..diffusion.guidance import guided_denoiser, multi_condition_guidance, rescale_guidance, run_branches
from ..diffusion.samplers import sample
from ..diffusion.sampling import Denoiser
from ..diffusion.schedule import NoiseSchedule
from ..models.autoencoder import encode_video, latent_channels_of
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
from .image_io import ImageInput, resize_exact, resize_short_side_center_crop

__all__ = [
    "FLAVOURS",
    "ImageToVideoPipeline",
    "concat_condition",
    "image_guided_denoiser",
    "unet_model_fn",
]

FLAVOURS = ("vc", "dc")
CLASS_NAME = "ImageToVideoPipeline"
FRAME_STRIDE_FAMILIES = ("dc_256",)  # their fps/fs input is a frame stride, not frames per second


# ---------------------------------------------------------------------------------------------------------------------
# per-step model call and guidance (shared with the fixture tests)


def unet_model_fn(unet: torch.nn.Module, reuse: dict[str, Any] | None = None) -> Callable[..., torch.Tensor]:
    """``model(x, t, **conditions)`` around a U-Net, in the U-Net's dtype, returning float32.

    ``conditions`` are the U-Net's keyword arguments (``text_context``, ``image_context``, ``concat``: DynamiCrafter's
    image latent, concatenated after the noisy latent on channels; ``fps``). ``reuse`` (``deep_cache`` /
    ``attention_broadcast``) is passed to every U-Net call (feature reuse across steps).
    """
    dtype = next(unet.parameters()).dtype

    def model(x: torch.Tensor, t: torch.Tensor, **conditions: Any) -> torch.Tensor:
        cast = {k: v.to(device=x.device, dtype=dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in conditions.items()}
        return unet(x.to(dtype), t, **cast, **(reuse or {})).float()

    return model


def video_psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, per batch row) between two frames in [-1, 1] (peak-to-peak 2), capped at 100 dB for equal frames."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(dim=1)
    return (10 * torch.log10(4.0 / mse.clamp_min(4e-10))).clamp(max=100.0)


def image_guided_denoiser(
    model: Callable[..., torch.Tensor],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None,
    guidance_scale: float,
    *,
    image_guidance_scale: float | None = None,
    no_text: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    batch: bool = True,
) -> Denoiser:
    """``denoise(x, t)`` with ordinary CFG, or DynamiCrafter's multi-condition CFG when ``image_guidance_scale`` is set.

    Multi-condition: e_u (``uncond``: no text, zero image) + img·(e_ui − e_u) + txt·(e_c − e_ui), where e_ui uses
    ``no_text`` (no text, the real image). Guidance rescale then uses e_c as reference, as the official sampler.
    ``batch=False`` runs the branches as separate passes in the official order (cond, uncond, no_text);
    ``batch=True`` runs them as one batch. A scale of 1 or no ``uncond`` runs the conditional pass only.
    """
    if image_guidance_scale is None or uncond is None or guidance_scale == 1.0:
        return guided_denoiser(model, cond, uncond, guidance_scale, guidance_rescale, batch=batch)
    for name, value in (("guidance scale", guidance_scale), ("image guidance scale", image_guidance_scale)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, int | float) \
            or not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance rescale must be a number in [0, 1], got {guidance_rescale!r}")
    if not callable(model):
        raise ValueError("model must be callable as model(x, t, **kwargs)")
    if no_text is None:
        raise ValueError("multi-condition guidance needs the image-only branch (no_text: no text, the real image)")
    branches = (dict(cond), dict(uncond), dict(no_text))

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e_c, e_u, e_ui = run_branches(model, x, t, branches, batch)
        guided = multi_condition_guidance(e_c, e_ui, e_u, guidance_scale, image_guidance_scale)
        if guidance_rescale > 0.0:
            guided = rescale_guidance(guided, e_c, guidance_rescale)
        return guided

    return denoise


def concat_condition(first: torch.Tensor, num_frames: int, last: torch.Tensor | None = None) -> torch.Tensor:
    """DynamiCrafter's ``concat`` (``c_concat`` in the official code) (b, c, t, h, w) from image latents (b, c, h, w) or (b, c, 1, h, w).

    Without ``last``: the first image's latent on every frame. With ``last`` (interpolation; looping passes the first
    image again): zeros except frame 0 (``first``) and frame t−1 (``last``).
    """
    def frame(z: torch.Tensor, what: str) -> torch.Tensor:
        if z.ndim == 5:
            z = z[:, :, 0]
        if z.ndim != 4:
            raise ValueError(f"{what} latent must be (b, c, h, w) or (b, c, 1, h, w), got {tuple(z.shape)}")
        return z

    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    z0 = frame(first, "first")
    if last is None:
        return z0.unsqueeze(2).expand(-1, -1, num_frames, -1, -1).contiguous()
    z1 = frame(last, "last")
    if z1.shape != z0.shape:
        raise ValueError(f"first {tuple(z0.shape)} and last {tuple(z1.shape)} latents differ in shape")
    if num_frames < 2:
        raise ValueError("interpolation and looping need at least 2 frames (the first and the last are given)")
    out = torch.zeros(z0.shape[0], z0.shape[1], num_frames, *z0.shape[2:], dtype=z0.dtype, device=z0.device)
    out[:, :, 0] = z0
    out[:, :, -1] = z1
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the pipeline


def _base_defaults(family: str | None, flavour: str) -> dict:
    from ..model_folder import FAMILIES

    fam = FAMILIES.get(family or "") or FAMILIES["vc1_i2v_512" if flavour == "vc" else "dc_512"]
    return dict(fam.defaults)


class ImageToVideoPipeline(VideoDiffusionPipeline):
    """Image (+ optional prompt) → video with a DynamiCrafter or VideoCrafter1-i2v model folder."""

    modules = ("unet", "vae", "text_encoder", "image_encoder", "image_projector")

    @classmethod
    def folder_defaults(cls, index: dict) -> dict:
        """Base defaults, then the released family's (the official scripts'), then the folder's own."""
        return {**cls.base_defaults, **_base_defaults(index.get("family"), index.get("flavour")),
                **(index.get("defaults") or {})}

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: OpenCLIPTokenizer,
        image_encoder: torch.nn.Module,
        image_projector: torch.nn.Module,
        schedule: NoiseSchedule,
        flavour: str,
        family: str | None = None,
        defaults: dict | None = None,
    ):
        if flavour not in FLAVOURS:
            raise PipelineError(f"flavour must be one of {FLAVOURS} (VideoCrafter / DynamiCrafter), got {flavour!r}")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.image_encoder, self.image_projector = image_encoder, image_projector
        self.schedule, self.flavour, self.family = schedule, flavour, family
        super().__init__({**_base_defaults(family, flavour), **(defaults or {})})
        self._check_compatible()

    def _check_compatible(self) -> None:
        """Catch a folder whose parts do not fit together before any sampling starts."""
        cfg = self.unet.config
        latent = latent_channels_of(self.vae)
        want_in = 2 * latent if self.flavour == "dc" else latent
        problems = []
        if cfg.in_channels != want_in:
            problems.append(f"the U-Net takes {cfg.in_channels} input channels, a {self.flavour!r} model needs {want_in}")
        if not cfg.image_cross_attention:
            problems.append("the U-Net has no image cross-attention")
        width = self.image_encoder.config["width"]
        proj = self.image_projector.config
        if proj["embedding_dim"] != width:
            problems.append(f"the projector takes {proj['embedding_dim']}-wide tokens, the image encoder gives {width}")
        if proj["output_dim"] != cfg.context_dim:
            problems.append(f"the projector gives {proj['output_dim']}-wide tokens, the U-Net context is {cfg.context_dim}")
        if self.text_encoder.config["width"] != cfg.context_dim:
            problems.append(f"the text encoder width {self.text_encoder.config['width']} != U-Net context {cfg.context_dim}")
        if problems:
            raise PipelineError("incompatible image-to-video components: " + "; ".join(problems))

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
        lora=None, vae=None,
    ) -> ImageToVideoPipeline:
        """Load a model folder written by ``vidiff convert`` from an i2v checkpoint.

        ``torch_dtype`` applies to the U-Net and the encoders; the autoencoder stays in float32. ``lora``: LoRA files
        to load onto the U-Net (a path, a (path, scale) pair, or a list of them); ``vae``: decode with another
        autoencoder of the same latent space, e.g. a video decoder (:func:`~vidiff.pipelines.base.load_vae`).
        """
        folder = Path(folder)
        index = read_model_index(folder)
        name = index.get("_class_name")
        if name != CLASS_NAME:
            hint = " (a text-to-video model: use `vidiff generate`)" if name == "TextToVideoPipeline" else ""
            raise PipelineError(f"{folder} holds a {name!r} model, not an image-to-video one{hint}")
        flavour = index.get("flavour")
        if flavour not in FLAVOURS:
            raise PipelineError(f"{folder}/model_index.json: flavour must be one of {FLAVOURS}, got {flavour!r}")
        try:
            tokenizer = OpenCLIPTokenizer.from_pretrained(folder / "tokenizer")
            schedule = NoiseSchedule.from_pretrained(folder / "scheduler")
        except (FileNotFoundError, ValueError, OSError) as err:
            raise PipelineError(f"cannot load {folder}: {err}") from None
        pipe = cls(
            unet=load_component(folder, "unet", torch_dtype, index),
            vae=load_vae(folder, index, vae),  # cheap and precision-sensitive: always float32
            text_encoder=load_component(folder, "text_encoder", torch_dtype, index),
            tokenizer=tokenizer,
            image_encoder=load_component(folder, "image_encoder", torch_dtype, index),
            image_projector=load_component(folder, "image_projector", torch_dtype, index),
            schedule=schedule,
            flavour=flavour,
            family=index.get("family"),
            defaults=index.get("defaults"),
        )
        pipe.load_loras(lora)
        return pipe.to(device)

    @property
    def fps_is_frame_stride(self) -> bool:
        """True for DynamiCrafter-256, whose ``fps`` input is the frame stride of its training clips."""
        return self.family in FRAME_STRIDE_FAMILIES

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Preprocessed images (b, 3, H, W) in [-1, 1] → the U-Net's ``image_context`` for ``num_frames`` frames,
        projector(CLIP tokens): (b, frames, tokens, dim) per frame (DynamiCrafter) or (b, tokens, dim) shared."""
        return self.image_projector.image_context(self.image_encoder(images.to(self.device)), num_frames)

    @torch.no_grad()
    def encode_uncond_image(self, height: int, width: int, num_frames: int | None = None) -> torch.Tensor:
        """The unconditional ``image_context`` (batch 1): an all-zero image, 224² for VideoCrafter, H×W for DynamiCrafter."""
        if self.flavour == "vc":
            height = width = self.image_encoder.config["image_size"]
        return self.image_projector.image_context(self.image_encoder.encode_uncond(1, height, width), num_frames)

    def preprocess_image(self, image: ImageInput | Sequence[ImageInput], height: int, width: int) -> torch.Tensor:
        """Image(s) → (b, 3, H, W) in [-1, 1] with the flavour's official resize rule."""
        items = list(image) if isinstance(image, list | tuple) else [image]
        if not items:
            raise PipelineError("the image list is empty")
        resize = resize_exact if self.flavour == "vc" else resize_short_side_center_crop
        return torch.cat([resize(item, height, width) for item in items])

    def _extend(self, image, num_frames: int, window: int, generator, output_type: str, clip: dict
                ) -> VideoPipelineOutput:
        """Autoregressive extension: clips of ``window`` frames, each conditioned on the previous clip's last frame."""
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        videos, latents, seams = [], [], []
        condition, total = image, 0
        while total < num_frames:
            out = self(condition, num_frames=window, output_type="pt", generator=generator, **clip)
            video = out.frames.float()
            if videos:
                seams.append(video_psnr_db(video[:, :, 0], videos[-1][:, :, -1]))
                video, z = video[:, :, 1:], out.latents[:, :, 1:]
            else:
                z = out.latents
            videos.append(video)
            latents.append(z)
            total += video.shape[2]
            condition = video[:, :, -1].clamp(-1, 1)
        video = torch.cat(videos, dim=2)[:, :, :num_frames]
        z = torch.cat(latents, dim=2)[:, :, :num_frames]
        seam_psnr = torch.stack(seams, dim=1) if seams else None
        if output_type == "latent":
            return VideoPipelineOutput(frames=z, latents=z, seam_psnr=seam_psnr)
        if output_type == "np":
            from ..utils.video import batch_to_uint8_frames

            video = batch_to_uint8_frames(video)
        return VideoPipelineOutput(frames=video, latents=z, seam_psnr=seam_psnr)

    def _check_i2v_args(self, num_frames, loop, last_image) -> None:
        if loop and last_image is not None:
            raise PipelineError("loop and last_image are mutually exclusive: looping ends on the first image itself")
        if (loop or last_image is not None) and self.flavour != "dc":
            raise PipelineError("interpolation (last_image) and looping need a DynamiCrafter model; this is VideoCrafter i2v")
        if (loop or last_image is not None) and num_frames < 2:
            raise PipelineError(f"interpolation and looping need at least 2 frames, got num_frames={num_frames}")

    @staticmethod
    def _broadcast(x: torch.Tensor | list, b: int, what: str):
        n = len(x)
        if n == b:
            return x
        if n != 1:
            raise PipelineError(f"{n} {what} for a batch of {b}: give one or {b}")
        return x.expand(b, *x.shape[1:]) if isinstance(x, torch.Tensor) else x * b

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput],
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        last_image: ImageInput | Sequence[ImageInput] | None = None,
        loop: bool = False,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
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
        latents: torch.Tensor | None = None,
        decode_chunk_size: int = 1,
        progress: bool = True,
        callback: Callable | None = None,
    ) -> VideoPipelineOutput:
        """Animate ``image``. ``fps`` is the fps/fs conditioning (a frame stride for DynamiCrafter-256).

        ``last_image`` interpolates towards a second image; ``loop`` makes the video return to the first image (the
        duplicated closing frame is dropped, so a loop has ``num_frames − 1`` frames). ``image_guidance_scale`` enables
        DynamiCrafter's multi-condition guidance (None: ordinary CFG). ``deep_cache`` (interval, or (interval, depth))
        reuses the U-Net's deep features between steps (DeepCache; None: off, exact); ``attention_broadcast`` reuses
        attention outputs in the middle of the trajectory (PAB; False: off, exact). Random draws come from ``generator`` (or a CPU
        generator seeded with ``seed``) in this order: initial noise, image-latent posterior noise, per-step noise.

        ``window`` extends the video autoregressively past the model's length: clips of ``window`` frames, each
        animated from the last frame of the one before (its regenerated first frame dropped), until ``num_frames``;
        the output's ``seam_psnr`` says how faithfully each clip restarted from that frame (dB, per seam and video).
        """
        num_frames = self.resolve("num_frames", num_frames)
        if window is not None:
            _positive_int(window, "window")
            if window < 2:
                raise PipelineError(f"an autoregressive window needs at least 2 frames, got {window}")
            if isinstance(num_frames, int) and num_frames > window:
                if loop or last_image is not None:
                    raise PipelineError("window (autoregressive extension) cannot be combined with loop or last_image")
                if latents is not None:
                    raise PipelineError("window (autoregressive extension) draws its own latents per clip")
                clip = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                            image_guidance_scale=image_guidance_scale, guidance_rescale=guidance_rescale, fps=fps,
                            eta=eta, sampler=sampler, timestep_spacing=timestep_spacing, deep_cache=deep_cache,
                            attention_broadcast=attention_broadcast, decode_chunk_size=decode_chunk_size,
                            progress=progress, callback=callback)
                return self._extend(image, num_frames, window, seeded_generator(generator, seed), output_type, clip)
        height, width = self.resolve("height", height), self.resolve("width", width)
        steps = self.resolve("num_inference_steps", num_inference_steps)
        scale = float(self.resolve("guidance_scale", guidance_scale))
        rescale = float(self.resolve("guidance_rescale", guidance_rescale))
        fps = self.resolve("fps", fps)
        eta = float(self.resolve("eta", eta))
        spacing = self.resolve("timestep_spacing", timestep_spacing)
        if image_guidance_scale is None:  # a model folder may default to multi-condition guidance (official ones don't)
            image_guidance_scale = self.defaults.get("image_guidance_scale")
        self.check_args(height, width, num_frames, steps, output_type, guidance_scale=scale, guidance_rescale=rescale,
                        eta=eta, image_guidance_scale=image_guidance_scale)
        self._check_i2v_args(num_frames, loop, last_image)
        self.check_sampler(sampler, spacing)
        if isinstance(fps, bool) or not isinstance(fps, int) or fps < 0:
            raise PipelineError(f"fps must be a non-negative integer, got {fps!r}")
        generator = seeded_generator(generator, seed)

        images = self.preprocess_image(image, height, width)
        prompts = as_prompt_list(prompt, "prompt")
        b = max(len(prompts), images.shape[0])
        images = self._broadcast(images, b, "images")
        prompts = self._broadcast(prompts, b, "prompts")
        lasts = None
        if last_image is not None:
            lasts = self._broadcast(self.preprocess_image(last_image, height, width), b, "last images")
        elif loop:
            lasts = images
        negatives = self._broadcast(as_prompt_list(negative_prompt, "negative_prompt") if negative_prompt is not None
                                    else [""], b, "negative prompts")

        dtype = self.dtype
        image_tokens = self.encode_image(images, num_frames).to(dtype)
        text = self.encode_prompt(prompts).to(dtype)
        guided = scale != 1.0
        text_u = image_u = None
        if guided:
            text_u = self.encode_prompt(negatives).to(dtype)
            image_u = self.encode_uncond_image(height, width, num_frames).to(dtype)
            image_u = image_u.expand(b, *image_u.shape[1:])

        x_T = self.initial_latents(b, num_frames, height, width, latents, generator)

        fps_key = "frame_stride" if self.fps_is_frame_stride else "fps"
        extra = {fps_key: torch.full((b,), int(fps), dtype=torch.long, device=self.device)}
        if self.flavour == "dc":
            # Each given frame gets its own posterior sample (the official script encodes every frame it is handed).
            frames = images[:, :, None] if lasts is None else torch.stack([images, lasts], dim=2)
            z = encode_video(self.vae, frames.float(), generator=generator)
            extra["concat"] = concat_condition(z[:, :, 0], num_frames, z[:, :, -1] if lasts is not None else None)

        cond = {"text_context": text, "image_context": image_tokens, **extra}
        uncond = {"text_context": text_u, "image_context": image_u, **extra} if guided else None
        no_text = None
        if guided and image_guidance_scale is not None:
            no_text = {"text_context": text_u, "image_context": image_tokens, **extra}
        denoise = image_guided_denoiser(
            unet_model_fn(self.unet, self.feature_reuse_kwargs(deep_cache, attention_broadcast)), cond, uncond, scale,
            image_guidance_scale=image_guidance_scale, no_text=no_text, guidance_rescale=rescale,
        )
        z = sample(sampler, denoise, x_T, self.schedule, steps, eta=eta, spacing=spacing, generator=generator,
                   callback=callback, progress=progress)
        if loop:
            z = z[:, :, :-1]
        return self.finish(z, output_type, decode_chunk_size)
