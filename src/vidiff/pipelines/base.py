"""What the video pipelines share: model-folder loading, argument checks, text encoding, initial noise, decoding."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.autoencoder import decode_video, spatial_factor_of

OUTPUT_TYPES = ("pt", "np", "latent")


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
    """Load ``folder/name`` with the class that component is stored as."""
    from ..models.autoencoder import LDMAutoencoderKL
    from ..models.image_encoder import OpenCLIPImageEncoder
    from ..models.resampler import Resampler
    from ..models.text_encoder import OpenCLIPTextEncoder
    from ..models.unet3d import UNet3DModel

    loaders: dict[str, Callable] = {
        "unet": UNet3DModel.from_pretrained,
        "vae": LDMAutoencoderKL.from_pretrained,
        "text_encoder": OpenCLIPTextEncoder.from_pretrained,
        "image_encoder": OpenCLIPImageEncoder.from_pretrained,
        "image_projector": Resampler.from_pretrained,
    }
    sub = folder / name
    if not sub.is_dir():
        raise PipelineError(f"model folder {folder} lacks its {name}/ component")
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        return loaders[name](sub, **kwargs).eval()
    except (FileNotFoundError, OSError, ValueError) as err:
        raise PipelineError(f"cannot load {sub}: {err}") from None


def as_prompt_list(prompt: str | list[str], what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise PipelineError(f"{what} list is empty")
    if not all(isinstance(p, str) for p in prompts):
        raise PipelineError(f"{what} must be a string or a list of strings")
    return prompts


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"{what} must be a positive integer, got {value!r}")


class VideoDiffusionPipeline:
    """Base of the latent video pipelines; subclasses hold the modules named in ``modules``."""

    modules: tuple[str, ...] = ("unet", "vae", "text_encoder")
    base_defaults = {
        "num_frames": 16,
        "height": 320,
        "width": 512,
        "num_inference_steps": 50,
        "guidance_scale": 12.0,
        "guidance_rescale": 0.0,
        "eta": 1.0,
        "fps": 16,
        "timestep_spacing": "uniform",
    }

    def __init__(self, defaults: dict | None = None, vocabulary: list[str] | None = None):
        self.defaults = {**self.base_defaults, **(defaults or {})}
        # Models trained on a closed vocabulary (the shapes-world defaults) list it in model_index.json.
        self.vocabulary = frozenset(vocabulary) if vocabulary else None

    def unknown_words(self, prompts: list[str]) -> list[str]:
        """Words of the prompts that a closed-vocabulary model never saw (empty for open-vocabulary models)."""
        if self.vocabulary is None:
            return []
        words = [w for p in prompts for w in re.findall(r"[a-z]+", p.lower())]
        return list(dict.fromkeys(w for w in words if w not in self.vocabulary))

    def warn_unknown_words(self, prompts: list[str]) -> None:
        unknown = self.unknown_words(prompts)
        if unknown:
            warnings.warn(
                f"the model never saw these words, they will have little or no effect: {', '.join(unknown)}",
                UserWarning,
                stacklevel=3,
            )

    def to(self, device: str | torch.device):
        for name in self.modules:
            getattr(self, name).to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def resolve(self, name: str, value):
        """``value``, or the model's default for ``name`` when it is None."""
        return self.defaults[name] if value is None else value

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.tokenizer(prompts).to(self.device))

    def check_args(self, height: int, width: int, num_frames: int, steps: int, output_type: str) -> None:
        factor = spatial_factor_of(self.vae)
        for what, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % factor:
                raise PipelineError(f"{what} must be a positive multiple of {factor} (the autoencoder's factor), got {v!r}")
        _positive_int(num_frames, "num_frames")
        _positive_int(steps, "num_inference_steps")
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")

    def initial_latents(
        self, batch: int, num_frames: int, height: int, width: int,
        latents: torch.Tensor | None, generator: torch.Generator | None,
    ) -> torch.Tensor:
        factor = spatial_factor_of(self.vae)
        shape = (batch, self.unet.config.out_channels, num_frames, height // factor, width // factor)
        if latents is None:
            # Drawn on the CPU in float32 so a seed gives the same video on every device and dtype.
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise PipelineError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.device, torch.float32)

    def finish(self, z: torch.Tensor, output_type: str, decode_chunk_size: int) -> VideoPipelineOutput:
        if output_type == "latent":
            return VideoPipelineOutput(frames=z, latents=z)
        video = decode_video(self.vae, z.float(), chunk_size=decode_chunk_size)
        if output_type == "pt":
            return VideoPipelineOutput(frames=video, latents=z)
        from ..utils.video import batch_to_uint8_frames

        return VideoPipelineOutput(frames=batch_to_uint8_frames(video), latents=z)


def seeded_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is None and seed is not None:
        return torch.Generator("cpu").manual_seed(int(seed))
    return generator
