"""VideoGen's cascade (§3.2): reference image → base stage → spatial super-resolution stages → pixels.

The reference is a user image or is drawn once, at the last stage's size, by the text-to-image reference model. Every
stage receives it at its own resolution (on frame 0); each super-resolution stage also receives the latents of the
stage below, upsampled (``lowres_factor``). The last stage's autoencoder decodes (a video decoder when its folder
has one: ``--vae`` at conversion or training time).

A cascade folder is ``model_index.json`` (``_class_name: CascadedVideoPipeline``, ``stages``, ``reference_model``)
and one reference-guided model folder per stage: :func:`write_cascade_folder` assembles one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import PipelineError, VideoPipelineOutput, as_prompt_list, read_model_index
from .image_io import ImageInput
from .reference import ReferenceVideoPipeline, _resolve_reference, reference_images
from .text_to_video import TextToVideoPipeline

__all__ = ["CascadedVideoPipeline", "write_cascade_folder"]

CLASS_NAME = "CascadedVideoPipeline"


class CascadedVideoPipeline:
    """``stages[0]`` a base reference-guided model, ``stages[k]`` super-resolution stages of ``lowres_factor`` over
    the stage below; ``reference_pipeline`` a text-to-image :class:`TextToVideoPipeline` (or None: images only)."""

    def __init__(self, stages: Sequence[ReferenceVideoPipeline],
                 reference_pipeline: TextToVideoPipeline | None = None, temporal_sr: Any = None,
                 video_decoder: torch.nn.Module | None = None) -> None:
        if not stages:
            raise PipelineError("a cascade needs at least one stage")
        sizes = [(int(s.defaults["height"]), int(s.defaults["width"])) for s in stages]
        if stages[0].lowres_factor is not None:
            raise PipelineError("the first stage of a cascade is a base stage (no lowres_factor)")
        for k in range(1, len(stages)):
            f = stages[k].lowres_factor
            if f is None:
                raise PipelineError(f"stage {k} is not a super-resolution stage (no lowres_factor)")
            if sizes[k] != (sizes[k - 1][0] * f, sizes[k - 1][1] * f):
                raise PipelineError(f"stage {k} makes {sizes[k]} from ×{f} of stage {k - 1}'s {sizes[k - 1]}: the "
                                    "sizes do not chain")
        self.stages = list(stages)
        self.sizes = sizes
        self.reference_pipeline = reference_pipeline
        self.temporal_sr = temporal_sr  # a TemporalSuperResolutionPipeline on the last stage's latent space, or None
        self.video_decoder = video_decoder  # a TemporalDecoderAutoencoderKL on that latent space, or None

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> CascadedVideoPipeline:
        folder = Path(folder)
        index = read_model_index(folder)
        if index.get("_class_name") != CLASS_NAME:
            raise PipelineError(f"{folder} holds a {index.get('_class_name')!r} model, not a cascade ({CLASS_NAME})")
        names = index.get("stages")
        if not isinstance(names, list) or not names:
            raise PipelineError(f"{folder}/model_index.json lists no stages")
        # the cascade draws the reference once, at the last stage's size: the stages' own reference models stay unloaded
        stages = [ReferenceVideoPipeline.from_pretrained(folder / n, torch_dtype, device, load_reference_model=False)
                  for n in names]
        reference = None
        if index.get("reference_model"):
            path = _resolve_reference(folder, str(index["reference_model"]))
            reference = TextToVideoPipeline.from_pretrained(path, torch_dtype, device)
        temporal = None
        if index.get("temporal_sr"):
            from .temporal_sr import TemporalSuperResolutionPipeline

            temporal = TemporalSuperResolutionPipeline.from_pretrained(folder / index["temporal_sr"], device=device)
        decoder = None
        if index.get("video_decoder"):
            from .base import load_vae

            last = folder / names[-1]
            decoder = load_vae(last, read_model_index(last), folder / index["video_decoder"]).to(device)
        return cls(stages, reference, temporal, decoder)

    def _reference(self, prompts: list[str], image: Any, seed: int | None, steps: int | None) -> torch.Tensor:
        h, w = self.sizes[-1]
        if image is None:
            if self.reference_pipeline is None:
                raise PipelineError("no reference image given and this cascade has no reference model")
            out = self.reference_pipeline(prompts, num_frames=1, height=h, width=w, seed=seed,
                                          num_inference_steps=steps, output_type="pt", progress=False)
            return out.frames[:, :, 0].clamp(-1, 1)
        return reference_images(image, len(prompts), h, w)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], reference_image: ImageInput | Sequence[ImageInput] | None = None,
                 stages: int | None = None, num_frames: int | None = None, seed: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 reference_steps: int | None = None, output_type: str = "np", return_intermediates: bool = False,
                 progress: bool = True, temporal_factor: int = 1, decoder: str | None = None,
                 **kwargs: Any) -> VideoPipelineOutput:
        """Run the first ``stages`` stages (default all), then, with ``temporal_factor`` > 1, the folder's temporal
        super-resolution on the last latents. ``return_intermediates`` adds each stage's latents as
        ``out.intermediates``; ``out.reference`` is the reference image (at the last stage's size). ``decoder``:
        "video" (the folder's video decoder; the default when it has one) or "image" (the last stage's autoencoder)."""
        if decoder not in (None, "video", "image"):
            raise PipelineError(f"decoder must be 'video' or 'image', got {decoder!r}")
        if decoder == "video" and self.video_decoder is None:
            raise PipelineError("decoder 'video' needs a cascade with a video decoder "
                                "(write_cascade_folder(..., video_decoder=FOLDER))")
        if temporal_factor != 1 and self.temporal_sr is None:
            raise PipelineError("temporal_factor > 1 needs a cascade with a temporal super-resolution model "
                                "(write_cascade_folder(..., temporal_sr=FOLDER))")
        prompts = as_prompt_list(prompt, "prompt")
        n = len(self.stages) if stages is None else int(stages)
        if not 1 <= n <= len(self.stages):
            raise PipelineError(f"stages must be in [1, {len(self.stages)}], got {stages}")
        reference = self._reference(prompts, reference_image, seed, reference_steps)
        z, steps_out = None, []
        for k, stage in enumerate(self.stages[:n]):
            h, w = self.sizes[k]
            ref_k = reference if (h, w) == self.sizes[-1] else F.interpolate(reference, size=(h, w), mode="area")
            out = stage(prompts, ref_k, lowres_latents=z, num_frames=num_frames, seed=seed,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        output_type="latent", progress=progress, **kwargs)
            z = out.latents
            steps_out.append(z)
        if temporal_factor != 1:
            if n != len(self.stages):
                raise PipelineError("temporal super-resolution runs on the last stage's latents: run every stage")
            fps = kwargs.get("fps") or self.stages[-1].defaults.get("fps")
            z = self.temporal_sr(latents=z, factor=temporal_factor, output_type="latent",
                                 fps=int(fps) if fps else None).latents
            steps_out.append(z)
        last = self.stages[n - 1]
        use_video = self.video_decoder is not None and decoder != "image" and n == len(self.stages)
        image_vae = last.vae
        if use_video:
            last.vae = self.video_decoder  # finish() decodes with the pipeline's autoencoder
        try:
            result = last.finish(z, output_type, 1)
        finally:
            last.vae = image_vae
        result.reference = reference
        if return_intermediates:
            result.intermediates = steps_out
        return result


def write_cascade_folder(out: str | os.PathLike, stages: Sequence[str | os.PathLike],
                         reference_model: str | None = None, overwrite: bool = False,
                         temporal_sr: str | os.PathLike | None = None,
                         video_decoder: str | os.PathLike | None = None) -> Path:
    """Copy reference-guided stage folders into ``out/stage{k}`` (a temporal super-resolution folder into ``out/tsr``,
    a video decoder into ``out/video_decoder``) and write the cascade's index (checked by loading)."""
    from vidiff.utils.io import atomic_directory

    out = Path(out)
    for s in stages:
        index = read_model_index(s)
        if index.get("_class_name") != "ReferenceVideoPipeline":
            raise PipelineError(f"{s} is not a reference-guided stage (ReferenceVideoPipeline)")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        names = []
        for k, s in enumerate(stages):
            shutil.copytree(s, tmp / f"stage{k}", symlinks=False)
            names.append(f"stage{k}")
        index = {"_class_name": CLASS_NAME, "stages": names}
        if reference_model is not None:
            index["reference_model"] = reference_model
        if temporal_sr is not None:
            if read_model_index(temporal_sr).get("_class_name") != "TemporalSuperResolutionPipeline":
                raise PipelineError(f"{temporal_sr} is not a temporal super-resolution model")
            shutil.copytree(temporal_sr, tmp / "tsr", symlinks=False)
            index["temporal_sr"] = "tsr"
        if video_decoder is not None:
            shutil.copytree(video_decoder, tmp / "video_decoder", symlinks=False)
            index["video_decoder"] = "video_decoder"
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        CascadedVideoPipeline.from_pretrained(tmp)  # the stages must chain: refuse a folder that cannot run
    return out
