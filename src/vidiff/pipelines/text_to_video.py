"""Text-to-video generation with a VideoCrafter-style latent video diffusion model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..diffusion.guidance import guided_denoiser
from ..diffusion.sampling import sample_ddim, sample_ddpm
from ..diffusion.schedule import NoiseSchedule
from ..models.autoencoder import decode_video, spatial_factor_of
from ..models.tokenizer import OpenCLIPTokenizer

OUTPUT_TYPES = ("pt", "np", "latent")
SAMPLERS = ("ddim", "ddpm")


@dataclass
class VideoPipelineOutput:
    """``frames``: uint8 (b, t, H, W, 3) for "np"; float (b, 3, t, H, W) in [-1, 1] for "pt"; latents for "latent"."""

    frames: torch.Tensor
    latents: torch.Tensor


class PipelineError(ValueError):
    """Bad pipeline arguments or a model folder that cannot be loaded."""


def read_model_index(folder: str | os.PathLike) -> dict:
    path = Path(folder)
    if not path.is_dir():
        raise PipelineError(f"model folder not found: {path}")
    index = path / "model_index.json"
    if not index.is_file():
        raise PipelineError(f"{path} is not a vidiff model folder (no model_index.json); convert a checkpoint first")
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise PipelineError(f"{index} is not valid JSON: {err}") from None


def load_component(folder: Path, name: str, torch_dtype: torch.dtype | None) -> torch.nn.Module:
    from ..models.autoencoder import LDMAutoencoderKL
    from ..models.text_encoder import OpenCLIPTextEncoder
    from ..models.unet3d import UNet3DModel

    loaders: dict[str, Callable] = {
        "unet": UNet3DModel.from_pretrained,
        "vae": LDMAutoencoderKL.from_pretrained,
        "text_encoder": OpenCLIPTextEncoder.from_pretrained,
    }
    sub = folder / name
    if not sub.is_dir():
        raise PipelineError(f"model folder {folder} lacks its {name}/ component")
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return loaders[name](sub, **kwargs).eval()


def _as_list(prompt: str | list[str], what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise PipelineError(f"{what} list is empty")
    if not all(isinstance(p, str) for p in prompts):
        raise PipelineError(f"{what} must be a string or a list of strings")
    return prompts


class TextToVideoPipeline:
    """Prompt → video: OpenCLIP text encoding, DDIM (or DDPM) sampling of the 3D U-Net with CFG, per-frame decoding."""

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: OpenCLIPTokenizer,
        schedule: NoiseSchedule,
        defaults: dict | None = None,
    ):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule = schedule
        self.defaults = {
            "num_frames": 16,
            "height": 320,
            "width": 512,
            "num_inference_steps": 50,
            "guidance_scale": 12.0,
            "guidance_rescale": 0.0,
            "eta": 1.0,
            "fps": 16,
            "timestep_spacing": "uniform",
            **(defaults or {}),
        }

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> TextToVideoPipeline:
        folder = Path(folder)
        index = read_model_index(folder)
        pipe = cls(
            unet=load_component(folder, "unet", torch_dtype),
            vae=load_component(folder, "vae", None),  # the autoencoder stays in fp32: it is cheap and precision-sensitive
            text_encoder=load_component(folder, "text_encoder", torch_dtype),
            tokenizer=OpenCLIPTokenizer.from_pretrained(folder / "tokenizer"),
            schedule=NoiseSchedule.from_pretrained(folder / "scheduler"),
            defaults=index.get("defaults"),
        )
        return pipe.to(device)

    def to(self, device: str | torch.device) -> TextToVideoPipeline:
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.text_encoder(tokens)

    def _resolve(self, name: str, value):
        return self.defaults[name] if value is None else value

    def _check_size(self, height: int, width: int, num_frames: int) -> None:
        factor = spatial_factor_of(self.vae)
        for what, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v <= 0 or v % factor:
                raise PipelineError(f"{what} must be a positive multiple of {factor} (the autoencoder's factor), got {v!r}")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise PipelineError(f"num_frames must be a positive integer, got {num_frames!r}")

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
        latents: torch.Tensor | None = None,
        decode_chunk_size: int = 1,
        progress: bool = True,
        callback: Callable | None = None,
    ) -> VideoPipelineOutput:
        prompts = _as_list(prompt, "prompt")
        num_frames, height, width = (self._resolve(k, v) for k, v in
                                     (("num_frames", num_frames), ("height", height), ("width", width)))
        steps = self._resolve("num_inference_steps", num_inference_steps)
        scale = float(self._resolve("guidance_scale", guidance_scale))
        rescale = float(self._resolve("guidance_rescale", guidance_rescale))
        fps = self._resolve("fps", fps)
        eta = float(self._resolve("eta", eta))
        spacing = self._resolve("timestep_spacing", timestep_spacing)
        self._check_size(height, width, num_frames)
        if not isinstance(steps, int) or steps < 1:
            raise PipelineError(f"num_inference_steps must be a positive integer, got {steps!r}")
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if sampler not in SAMPLERS:
            raise PipelineError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(int(seed))

        b = len(prompts)
        negatives = _as_list(negative_prompt, "negative_prompt") if negative_prompt is not None else [""]
        if len(negatives) == 1:
            negatives = negatives * b
        if len(negatives) != b:
            raise PipelineError(f"{len(negatives)} negative prompts for {b} prompts")
        dtype = next(self.unet.parameters()).dtype
        context = self.encode_prompt(prompts).to(dtype)
        uncond_context = self.encode_prompt(negatives).to(dtype) if scale != 1.0 else None

        factor = spatial_factor_of(self.vae)
        shape = (b, self.unet.config.out_channels, num_frames, height // factor, width // factor)
        if latents is None:
            # Drawn on the CPU in float32 so a seed gives the same video on every device and dtype.
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise PipelineError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        x_T = latents.to(self.device)

        fps_tensor = torch.full((b,), int(fps), dtype=torch.long, device=self.device)
        cond = {"context": context, "fps": fps_tensor}
        uncond = {"context": uncond_context, "fps": fps_tensor} if uncond_context is not None else None

        def model(x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
            return self.unet(x.to(dtype), t, **kw).float()

        denoise = guided_denoiser(model, cond, uncond, scale, rescale)
        if sampler == "ddim":
            z = sample_ddim(denoise, x_T, self.schedule, steps, eta=eta, spacing=spacing, generator=generator,
                            callback=callback, progress=progress)
        else:
            z = sample_ddpm(denoise, x_T, self.schedule, generator=generator, callback=callback, progress=progress,
                            num_steps=steps)
        if output_type == "latent":
            return VideoPipelineOutput(frames=z, latents=z)
        video = decode_video(self.vae, z.float(), chunk_size=decode_chunk_size)
        if output_type == "pt":
            return VideoPipelineOutput(frames=video, latents=z)
        from ..utils.video import batch_to_uint8_frames

        return VideoPipelineOutput(frames=batch_to_uint8_frames(video), latents=z)
