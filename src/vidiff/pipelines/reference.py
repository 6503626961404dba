"""VideoGen's reference-guided text-to-video (§3.2): a reference image fixes the content, the video model adds motion.

The reference is a user image, or an image the folder's text-to-image model draws from the same prompt (VideoGen's
reference model; ``reference_model`` in ``model_index.json``). Its latent (posterior mean) enters the U-Net
concatenated on channels on frame 0 only, zeros on the other frames (:func:`vidiff.models.conditions.first_frame_concat`);
frame 0 is denoised like the others. Guidance is on the text, the reference kept in both branches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..models.autoencoder import encode_video
from ..models.conditions import first_frame_concat, upsample_latents
from .base import PipelineError, VideoPipelineOutput, as_prompt_list, read_model_index
from .image_io import ImageInput, resize_short_side_center_crop
from .text_to_video import TextToVideoPipeline

__all__ = ["ReferenceVideoPipeline"]


class ReferenceVideoPipeline(TextToVideoPipeline):
    """Prompt (+ reference image) → video; without an image the reference comes from ``reference_pipeline`` (a
    text-to-image :class:`TextToVideoPipeline`), drawn with the same seed."""

    CLASS_NAME = "ReferenceVideoPipeline"

    def __init__(self, *args: Any, reference_pipeline: TextToVideoPipeline | None = None,
                 lowres_factor: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference_pipeline = reference_pipeline
        self.lowres_factor = lowres_factor  # a super-resolution stage: the stage below's latents, upsampled

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", lora=None, vae=None,
                        reference_model: str | os.PathLike | None = None,
                        load_reference_model: bool = True) -> ReferenceVideoPipeline:
        """A reference-guided model folder; ``reference_model`` (default: the folder's ``reference_model``, a path
        relative to the folder, or the name of an embedded model) is the text-to-image model that draws references
        (``load_reference_model=False``: none, references are given)."""
        pipe = super().from_pretrained(folder, torch_dtype, device, lora, vae)
        index = read_model_index(folder)
        pipe.lowres_factor = index.get("lowres_factor")
        source = reference_model if reference_model is not None else index.get("reference_model")
        if source is not None and load_reference_model:
            path = _resolve_reference(Path(folder), str(source))
            pipe.reference_pipeline = TextToVideoPipeline.from_pretrained(path, torch_dtype, device)
            if pipe.reference_pipeline.defaults.get("num_frames") != 1:
                raise PipelineError(f"the reference model {path} is not a text-to-image model (num_frames 1)")
        return pipe

    def _lowres_condition(self, lowres: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        f = self.lowres_factor
        if lowres is None:
            raise PipelineError(f"this super-resolution stage needs lowres_latents: the stage below's latents at 1/{f} "
                                "the size (CascadedVideoPipeline passes them)")
        b, c, t, h, w = shape
        want = (b, c, t, h // f, w // f)
        if tuple(lowres.shape) != want:
            raise PipelineError(f"lowres_latents must have shape {want}, got {tuple(lowres.shape)}")
        return upsample_latents(lowres.to(self.device, torch.float32), f)

    @torch.no_grad()
    def reference_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [-1, 1] → (b, c, h, w) scaled latents (posterior mean)."""
        return encode_video(self.vae, images[:, :, None].to(self.device, torch.float32), sample=False)[:, :, 0]

    def draw_reference(self, prompts: list[str], height: int, width: int, seed: int | None,
                       steps: int | None = None) -> torch.Tensor:
        """The reference model's images for ``prompts``, (b, 3, H, W) in [-1, 1]."""
        if self.reference_pipeline is None:
            raise PipelineError("no reference image given and this model has no reference model: pass "
                                "reference_image (vidiff generate --reference IMG)")
        out = self.reference_pipeline(prompts, num_frames=1, height=height, width=width, seed=seed,
                                      num_inference_steps=steps, output_type="pt", progress=False)
        return out.frames[:, :, 0].clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], reference_image: ImageInput | Sequence[ImageInput] | torch.Tensor
                 | None = None, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 seed: int | None = None, reference_steps: int | None = None, return_reference: bool = False,
                 lowres_latents: torch.Tensor | None = None, **kwargs: Any) -> VideoPipelineOutput:
        """``reference_image``: one image (or one per prompt); None draws it with the reference model (its own
        default steps, or ``reference_steps``). ``lowres_latents`` (b, c, t, h/f, w/f): a super-resolution stage's
        condition, the stage below's output latents. Other arguments as :class:`TextToVideoPipeline`. With
        ``return_reference`` the output's ``reference`` holds the (b, 3, H, W) references used."""
        prompts = as_prompt_list(prompt, "prompt")
        num_frames, height, width = (self.resolve(k, v) for k, v in
                                     (("num_frames", num_frames), ("height", height), ("width", width)))
        if reference_image is None:
            images = self.draw_reference(prompts, height, width, seed, reference_steps)
        else:
            images = reference_images(reference_image, len(prompts), height, width)
        concat = first_frame_concat(self.reference_latents(images), num_frames)
        concat = torch.cat([concat, self._lowres_condition(lowres_latents, concat.shape)], dim=1) \
            if self.lowres_factor is not None else concat
        if self.lowres_factor is None and lowres_latents is not None:
            raise PipelineError("lowres_latents condition a super-resolution stage; this model is a base stage")
        out = super().__call__(prompts, num_frames=num_frames, height=height, width=width, seed=seed, concat=concat,
                               **kwargs)
        if return_reference:
            out.reference = images
        return out


def reference_images(image: ImageInput | Sequence[ImageInput], count: int, height: int, width: int) -> torch.Tensor:
    """One image (for every prompt) or one per prompt → (count, 3, H, W) in [-1, 1] (short side resized, centred)."""
    items = list(image) if isinstance(image, list | tuple) else [image]
    images = torch.cat([resize_short_side_center_crop(item, height, width) for item in items])
    if images.shape[0] == 1 and count > 1:
        images = images.expand(count, -1, -1, -1)
    if images.shape[0] != count:
        raise PipelineError(f"{images.shape[0]} reference images for {count} prompts")
    return images


def _resolve_reference(folder: Path, source: str) -> Path:
    """A reference model path: absolute, relative to the model folder, or an embedded model's name."""
    embedded = Path(__file__).resolve().parents[1] / "assets" / "models"
    for candidate in (Path(source), folder / source, embedded / source):
        if (candidate / "model_index.json").is_file():
            return candidate
    raise PipelineError(f"reference model {source!r} not found (as a path, inside {folder}, or as an embedded model)")
