"""What is trained: a text-to-video or image-to-video denoiser, or an autoencoder. The loop in
:mod:`vidiff.training.trainer` is shared.

A task owns its models, turns a batch into a loss (given per-sample generators, see :mod:`vidiff.training.losses`),
renders previews and exports a model folder. ``module`` is the ``nn.Module`` handed to the optimiser and to
``accelerator.prepare``; everything else (frozen autoencoder, frozen text and image encoders) lives outside it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidiff.model_folder import write_index
from vidiff.training.config import ConfigError, RunConfig, config_to_dict
from vidiff.training.losses import (
    autoencoder_loss,
    diffusion_loss,
    draw_diffusion,
    dropout_masks,
    encode_latents,
    foreground_weight,
)
from vidiff.training.models import DenoiserBundle, build_component, build_video_components

__all__ = ["AutoencoderBundle", "AutoencoderTask", "ImageToVideoTask", "TextToImageTask", "TextToVideoTask",
           "LatentFlowTask", "ReferenceVideoTask", "TemporalRefinerTask", "UnifiedVideoTask", "VideoDecoderTask",
           "make_task"]


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


class TextToVideoTask:
    """VideoCrafter-style latent T2V: frozen autoencoder, U-Net (+ optionally the text encoder) trained on ε or v."""

    kind = "t2v"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.metric_names = ("loss", "mse") if cfg.train.foreground_weight else ("loss",)
        self._posteriors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        comps = build_video_components(cfg.model, self.kind)
        self.unet, self.vae, self.tokenizer, self.schedule = comps.unet, comps.vae, comps.tokenizer, comps.schedule
        self.image_encoder, self.image_projector = comps.image_encoder, comps.image_projector
        self.defaults = comps.defaults
        self.inflation = comps.inflation
        self.text_trainable = cfg.model.text_encoder.trainable
        self.text_encoder = comps.text_encoder
        self.image_trainable = self.image_encoder is not None and cfg.model.image_encoder.trainable
        self.module = DenoiserBundle(self.unet, self.text_encoder if self.text_trainable else None,
                                     self.image_projector, self.image_encoder if self.image_trainable else None)
        self.vae.requires_grad_(False).eval().to(device)
        if not self.text_trainable:
            self.text_encoder.requires_grad_(False).eval().to(device)
        if self.image_encoder is not None and not self.image_trainable:
            self.image_encoder.requires_grad_(False).eval().to(device)
        if cfg.train.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self._uncond_context: torch.Tensor | None = None
        if cfg.sample.every or cfg.sample.at_end:
            from vidiff.diffusion.sampling import ddim_timesteps

            spacing = self.defaults.get("timestep_spacing", "uniform")
            try:
                ddim_timesteps(cfg.sample.steps, spacing, self.schedule.num_train_timesteps)
            except ValueError as err:
                raise ConfigError(f"sample.steps: {err}") from err
        self.clip_shape: tuple[int, int, int] | None = None  # (frames, height, width) of the training videos
        self.clip_fps: int | None = None
        self.preview_batch: dict[str, Any] | None = None  # a few training clips (image-to-video previews)
        self.binding_video: torch.Tensor | None = None  # the binding probe's clean clips, once it has run

    # ------------------------------------------------------------------ loss
    def _conditioning(self, value: torch.Tensor | list) -> torch.Tensor:
        v = torch.as_tensor(value)
        if self.cfg.model.conditioning == "fps":
            return torch.round(v.float()).long().to(self.device)  # the pipeline passes an int fps
        return v.long().to(self.device)

    def _frozen_uncond(self) -> torch.Tensor:
        if self._uncond_context is None:
            with torch.no_grad():
                tokens = self.tokenizer([self.cfg.train.uncond_text]).to(self.device)
                self._uncond_context = self.text_encoder(tokens).float()
        return self._uncond_context

    def _latents(self, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, Any]:
        """Scaled latents of the batch (posterior sampled with per-sample noise) and the per-sample draws."""
        if "latents" in batch:
            latents = batch["latents"].to(self.device).float()
            return latents, draw_diffusion(gens, tuple(latents.shape[1:]), self.schedule.num_train_timesteps, False,
                                           self.cfg.train.timestep_sampling)
        from vidiff.models.autoencoder import latent_channels_of, spatial_factor_of

        video = batch["video"]
        if self.clip_shape is None and video.shape[2] > 1:
            self.clip_shape = tuple(video.shape[2:])
            self.clip_fps = int(round(float(batch["fps"][0])))
            n = min(len(batch["caption"]), self.cfg.sample.num_reconstructions)
            self.preview_batch = {"video": video[:n].clone(), "caption": list(batch["caption"][:n]),
                                  "fps": batch["fps"][:n], "frame_stride": batch["frame_stride"][:n]}
        f = spatial_factor_of(self.vae)
        shape = (latent_channels_of(self.vae), video.shape[2], video.shape[3] // f, video.shape[4] // f)
        draws = draw_diffusion(gens, shape, self.schedule.num_train_timesteps, True, self.cfg.train.timestep_sampling)
        with torch.no_grad():
            if self.cfg.train.cache_latents:
                latents = self._cached_latents(batch, draws.posterior_eps)
            else:
                latents = encode_latents(self.vae, video.to(self.device), draws.posterior_eps)
        return latents, draws

    def _cached_latents(self, batch: dict[str, Any], posterior_eps: torch.Tensor) -> torch.Tensor:
        """encode_latents with the posterior (mean, std) of clips seen before taken from memory (by index, caption)."""
        from einops import rearrange

        keys = [(int(i), c) for i, c in zip(batch["index"].tolist(), batch["caption"])]
        missing = [j for j, k in enumerate(keys) if k not in self._posteriors]
        if missing:
            video = batch["video"][missing]
            b, t = video.shape[0], video.shape[2]
            param = next(self.vae.parameters())
            frames = rearrange(video, "b c t h w -> (b t) c h w").to(device=param.device, dtype=param.dtype)
            post = self.vae.encode(frames).latent_dist
            mean = rearrange(post.mean.float(), "(b t) c h w -> b c t h w", b=b, t=t).cpu()
            std = rearrange(post.std.float(), "(b t) c h w -> b c t h w", b=b, t=t).cpu()
            for j, row in enumerate(missing):
                self._posteriors[keys[row]] = (mean[j].clone(), std[j].clone())
        mean = torch.stack([self._posteriors[k][0] for k in keys]).to(self.device)
        std = torch.stack([self._posteriors[k][1] for k in keys]).to(self.device)
        z = mean + std * posterior_eps.to(device=self.device, dtype=mean.dtype)
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return (z * self.vae.config.scaling_factor).float().contiguous()

    def _weight(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Foreground loss weights at latent resolution (train.foreground_weight), or None."""
        strength = self.cfg.train.foreground_weight
        if not strength:
            return None
        if "foreground" not in batch:
            raise ConfigError("train.foreground_weight needs object masks: use shapes-world data (data.*.type: shapes)")
        from vidiff.models.autoencoder import spatial_factor_of

        return foreground_weight(batch["foreground"], spatial_factor_of(self.vae), strength).to(self.device)

    def _text_kwargs(self, batch: dict[str, Any], drop_text: torch.Tensor) -> dict[str, Any]:
        """``tokens`` for a trainable text encoder, else a ready ``context``; dropped captions become uncond_text."""
        uncond = self.cfg.train.uncond_text
        captions = [uncond if d else c for c, d in zip(batch["caption"], drop_text.tolist())]
        if self.text_trainable:
            return {"tokens": self.tokenizer(captions).to(self.device)}
        if "text_embeddings" in batch:
            ctx = batch["text_embeddings"].to(self.device).float()
            if drop_text.any():
                ctx = ctx.clone()
                ctx[drop_text.to(self.device)] = self._frozen_uncond().to(ctx.dtype)
            return {"context": ctx}
        with torch.no_grad():
            return {"context": self.text_encoder(self.tokenizer(captions).to(self.device)).float()}

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        latents, draws = self._latents(batch, gens)
        drop_text, _ = dropout_masks(draws.uniform, self.cfg.train.cond_dropout)
        kwargs = self._text_kwargs(batch, drop_text)
        kwargs["fps"] = self._conditioning(batch[self.cfg.model.conditioning])
        return diffusion_loss(model, self.schedule, latents, draws, self._weight(batch), **kwargs)

    # ------------------------------------------------------------------ conditioning probe
    def binding_batch(self, num_samples: int, seed: int):
        """The probe's fixed held-out clips: single objects in canonical captions from the training world (shapes
        data), else the first training items (attribute-free checks only)."""
        from vidiff.data.shapes import ShapesImageDataset, ShapesVideoDataset, parse_caption
        from vidiff.models.autoencoder import encode_video
        from vidiff.training.binding import BindingBatch
        from vidiff.training.data import TrainingSample, _build_one, _shapes_config

        image_task = self.kind == "t2i"
        spec = dict(self.cfg.data.images if image_task else self.cfg.data.videos)
        if spec.get("type") == "shapes":
            spec.pop("type")
            spec.pop("length", None)
            spec.pop("fps", None)
            spec.update(second_object_prob=0.0, seed=seed, split="train")
            spec["image_phrasings" if image_task else "phrasings"] = ["image_canonical" if image_task else "canonical"]
            world = _shapes_config(spec, "binding (from the training data)")
            source = (ShapesImageDataset if image_task else ShapesVideoDataset)(world, length=num_samples,
                                                                                 ground_truth=False)
        else:
            where = "data.images" if image_task else "data.videos"
            source = _build_one(dict(spec), where, self.cfg.data.seed, "images" if image_task else "videos")
        data = TrainingSample(source)
        items = [data[i] for i in range(min(num_samples, len(data)))]
        captions = [it["caption"] for it in items]
        attrs = [parse_caption(c) for c in captions]
        if any(a is None for a in attrs):
            attrs = None
        if "video" in items[0]:
            video = torch.stack([it["video"] for it in items])
            with torch.no_grad():
                latents = encode_video(self.vae, video.to(self.device), sample=False).float().cpu()
        else:  # a latent cache: the stored latents are the probe's clean latents
            video = None
            latents = torch.stack([it["latents"] for it in items]).float()
        key = self.cfg.model.conditioning
        cond = torch.tensor([float(it.get(key, 0.0)) for it in items])
        images = video[:, :, 0] if self.kind in ("i2v", "univid", "ref_t2v") and video is not None else None
        self.binding_video = video  # the probe's clean clips (a super-resolution stage derives its condition)
        return BindingBatch(latents, captions, attrs, cond, images)

    def _probe_kwargs(self, captions: list[str], images: torch.Tensor | None, latents: torch.Tensor) -> dict:
        drop = torch.zeros(len(captions), dtype=torch.bool)
        return self._text_kwargs({"caption": captions}, drop)

    def binding_loss(self, model: nn.Module, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     captions: list[str], cond: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """Per-clip denoising MSE (unweighted) under the given conditioning, at fixed noise and timesteps."""
        latents, noise, t = latents.to(self.device), noise.to(self.device), t.to(self.device)
        noisy = self.schedule.add_noise(latents, noise, t)
        target = self.schedule.training_target(latents, noise, t)
        kwargs = self._probe_kwargs(captions, images, latents)
        kwargs["fps"] = self._conditioning(cond)
        pred = model(noisy, t, **kwargs)
        return (pred.float() - target.float()).square().flatten(1).mean(1)

    # ------------------------------------------------------------------ previews and export
    def sampling_defaults(self) -> dict[str, Any]:
        """Generation defaults for previews and the exported model_index.json.

        Precedence: explicit ``sample.*`` sizes, then ``model.defaults`` (and those of ``init_from``), then the shape
        and fps of the training clips seen so far.
        """
        s, md = self.cfg.sample, self.defaults
        frames, height, width = self.clip_shape or (None, None, None)
        out: dict[str, Any] = {"num_inference_steps": s.steps, "guidance_scale": s.guidance_scale, "eta": s.eta,
                               "guidance_rescale": 0.0, "timestep_spacing": "uniform"}
        out.update(md)
        for key, explicit, seen in (("num_frames", s.num_frames, frames), ("height", s.height, height),
                                    ("width", s.width, width), ("fps", s.fps, self.clip_fps)):
            value = explicit or md.get(key) or seen
            if value is not None:
                out[key] = int(value)
        return out

    def _pipeline(self):
        from vidiff.pipelines.text_to_video import TextToVideoPipeline

        return TextToVideoPipeline(
            self.unet, self.vae, self.text_encoder, self.tokenizer, self.schedule, self.sampling_defaults()
        )

    def _generate(self, pipe: Any, d: dict[str, Any]) -> tuple[torch.Tensor, list[str], list]:
        """(uint8 videos (n, t, H, W, 3), names, contact-sheet rows)."""
        s = self.cfg.sample
        out = pipe(list(s.prompts), num_frames=int(d["num_frames"]), height=int(d["height"]), width=int(d["width"]),
                   num_inference_steps=s.steps, guidance_scale=s.guidance_scale, fps=int(d["fps"]), eta=s.eta,
                   seed=s.seed, output_type="np", progress=False)
        return out.frames, list(s.prompts), list(out.frames)

    @torch.no_grad()
    def _generate_in_eval_mode(self, d: dict[str, Any]) -> tuple[list, list[str], list]:
        """``_generate`` with every trainable module in eval mode, their training modes restored afterwards."""
        modules = [m for m in (self.unet, self.text_encoder, self.image_encoder, self.image_projector) if m is not None]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            return self._generate(self._pipeline(), d)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    def preview(self, out_dir: Path, tag: str) -> list[Path]:
        """Sample with the current (EMA-swapped) weights: one mp4 per video and one PNG contact sheet."""
        from vidiff.utils.video import save_video_outputs, write_contact_sheet

        d = self.sampling_defaults()
        if d.get("height") is None or d.get("width") is None:
            raise ConfigError("set sample.height/width (or model.defaults) so previews know the video size")
        videos, names, rows = self._generate_in_eval_mode(d)
        folder = out_dir / tag
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (name, frames) in enumerate(zip(names, videos)):
            paths += save_video_outputs(frames, folder / f"{i:02d}_{_slug(name)}.mp4", fps=int(d["fps"]))
        paths.append(write_contact_sheet(rows, out_dir / f"{tag}.png", columns=None))
        return paths

    def _modules_for_export(self, state_dict: dict[str, torch.Tensor] | None) -> dict[str, nn.Module]:
        mods = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        if self.image_encoder is not None:
            mods["image_encoder"] = self.image_encoder
        if self.image_projector is not None:
            mods["image_projector"] = self.image_projector
        if state_dict is not None:  # sharded training: rebuild full modules from the gathered state
            for name in ("unet", "text_encoder", "image_encoder", "image_projector"):
                if name in mods and any(k.startswith(f"{name}.") for k in state_dict):
                    mods[name] = _rebuilt(mods[name], state_dict, f"{name}.")
        return mods

    def _index(self, step: int) -> dict[str, Any]:
        return {
            "_class_name": "TextToVideoPipeline",
            "family": "vidiff_trained_t2v",
            "flavour": "dc" if self.schedule.data_scale == "dc" else "vc",
        }

    def export(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None, step: int = 0) -> None:
        """Write a model folder the pipelines (and ``vidiff generate``) load; ``folder`` exists and is empty."""
        mods = self._modules_for_export(state_dict)
        for name, module in mods.items():
            module.save_pretrained(folder / name)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.schedule.save_pretrained(folder / "scheduler")
        index = {
            **self._index(step),
            "components": sorted([*mods, "tokenizer", "scheduler"]),
            "defaults": self.sampling_defaults(),
            "training": {"step": step, "config": config_to_dict(self.cfg)},
        }
        sources = [self.cfg.data.videos] + ([self.cfg.data.images] if self.cfg.data.images else [])
        if all(src.get("type") == "shapes" for src in sources):  # closed vocabulary: the pipeline warns about others
            from vidiff.data.shapes import vocabulary

            index["vocabulary"] = sorted(vocabulary())
        write_index(folder, index, mods)


class TextToImageTask(TextToVideoTask):
    """The text-to-image base the video papers start from: the same ``UNet3DModel`` with its temporal layers off,
    trained on single frames (1-frame clips) and image captions. Exported as a model folder that
    :class:`~vidiff.pipelines.text_to_video.TextToVideoPipeline` samples with ``num_frames=1`` (``vidiff generate``
    writes a PNG), and that ``model.init_from`` inflates into a video model."""

    kind = "t2i"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        uc = self.unet.config
        temporal = [k for k in ("temporal_conv", "temporal_attention", "addition_attention") if uc.get(k)]
        if temporal:
            raise ConfigError(f"task t2i trains an image model: set {', '.join(temporal)} to false in model.unet "
                              "(model.init_from inflates it into a video model later)")

    def sampling_defaults(self) -> dict[str, Any]:
        out = super().sampling_defaults()
        out["num_frames"] = 1
        out.setdefault("fps", 1)  # the pipeline's fps argument; an image U-Net has no fps embedding
        return out

    def preview(self, out_dir: Path, tag: str) -> list[Path]:
        """One PNG per prompt and a contact sheet of all of them."""
        from vidiff.utils.video import write_contact_sheet, write_png

        videos, names, rows = self._generate_in_eval_mode(self.sampling_defaults())
        folder = out_dir / tag
        paths = [write_png(frames, folder / f"{i:02d}_{_slug(name)}.png") for i, (name, frames) in
                 enumerate(zip(names, videos))]
        row = np.stack([frames[0] for frames in videos])  # the images side by side, as one row
        paths.append(write_contact_sheet(row, out_dir / f"{tag}.png", columns=None))
        return paths

    def _index(self, step: int) -> dict[str, Any]:
        return {"_class_name": "TextToVideoPipeline", "family": "vidiff_trained_t2i", "modality": "image",
                "flavour": "dc" if self.schedule.data_scale == "dc" else "vc"}


class ImageToVideoTask(TextToVideoTask):
    """DynamiCrafter / VideoCrafter1-i2v training: the conditioning frame goes through the frozen CLIP image encoder
    and the trainable projector into the cross-attention context, and (flavour "dc") its latent is concatenated to the
    noisy latent. Condition dropout follows DynamiCrafter: dropped text becomes ``uncond_text``, a dropped image becomes
    an all-zero image for the image encoder, while the concatenated latent is kept, as the official training and
    sampling do."""

    kind = "i2v"

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        if "video" not in batch:
            raise ConfigError("image-to-video training needs pixel clips (data.videos of type shapes or csv)")
        video = batch["video"]
        b, t = video.shape[0], video.shape[2]
        per_frame = self.image_projector.config["video_length"]
        if per_frame is not None and per_frame != t:
            raise ConfigError(f"the projector makes image tokens for {per_frame} frames (video_length) but the clips "
                              f"have {t}")
        latents, draws = self._latents(batch, gens)
        drop_text, drop_image = dropout_masks(draws.uniform, self.cfg.train.cond_dropout)
        if self.cfg.model.cond_frame == "random":
            frame = torch.cat([torch.randint(0, t, (1,), generator=g) for g in gens])
        else:
            frame = torch.zeros(b, dtype=torch.long)
        rows = torch.arange(b)
        image = video[rows, :, frame] * (~drop_image).float()[:, None, None, None]  # (b, 3, H, W); zeros = dropped
        kwargs = self._text_kwargs(batch, drop_text)
        kwargs["fps"] = self._conditioning(batch[self.cfg.model.conditioning])
        cond = latents[rows.to(latents.device), :, frame.to(latents.device)]  # (b, c, h, w)
        kwargs.update(self._image_kwargs(image, cond, t))
        return diffusion_loss(model, self.schedule, latents, draws, self._weight(batch), **kwargs)

    def _image_kwargs(self, image: torch.Tensor, cond_latent: torch.Tensor, num_frames: int) -> dict[str, Any]:
        """Image conditioning for the bundle: pixels (trainable encoder) or tokens, and DynamiCrafter's concat."""
        out: dict[str, Any] = {}
        if self.image_trainable:
            out["clip_images"] = image.to(self.device)
        else:
            with torch.no_grad():
                out["clip_tokens"] = self.image_encoder(image.to(self.device))
        if self.cfg.model.i2v_flavour == "dc":
            out["c_concat"] = cond_latent.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
        return out

    def _probe_kwargs(self, captions: list[str], images: torch.Tensor | None, latents: torch.Tensor) -> dict:
        """The true/swapped captions with the probe's conditioning images (the first frames); the concatenated latent
        is the image's own (posterior mean), so a swapped image swaps both streams."""
        from vidiff.models.autoencoder import encode_video

        kwargs = super()._probe_kwargs(captions, images, latents)
        with torch.no_grad():
            cond = encode_video(self.vae, images[:, :, None].to(self.device), sample=False)[:, :, 0].float()
        kwargs.update(self._image_kwargs(images, cond, latents.shape[2]))
        return kwargs

    def _pipeline(self):
        from vidiff.pipelines.image_to_video import ImageToVideoPipeline

        return ImageToVideoPipeline(
            self.unet, self.vae, self.text_encoder, self.tokenizer, self.image_encoder, self.image_projector,
            self.schedule, self.cfg.model.i2v_flavour, None, self.sampling_defaults(),
        )

    def _generate(self, pipe: Any, d: dict[str, Any]) -> tuple[torch.Tensor, list[str], list]:
        """Animate the first frames of a few training clips with their captions; rows: source clip, generated."""
        from vidiff.utils.video import batch_to_uint8_frames

        if self.preview_batch is None:
            raise ConfigError("no training clip seen yet to take the preview images from")
        s, src = self.cfg.sample, self.preview_batch
        out = pipe(src["video"][:, :, 0], list(src["caption"]), num_frames=int(d["num_frames"]),
                   height=int(d["height"]), width=int(d["width"]), num_inference_steps=s.steps,
                   guidance_scale=s.guidance_scale, fps=int(d["fps"]), eta=s.eta, seed=s.seed, output_type="np",
                   progress=False)
        rows = []
        for real, fake in zip(batch_to_uint8_frames(src["video"]), out.frames):
            rows += [real, fake]
        return out.frames, list(src["caption"]), rows

    def _index(self, step: int) -> dict[str, Any]:
        return {"_class_name": "ImageToVideoPipeline", "family": "vidiff_trained_i2v",
                "flavour": self.cfg.model.i2v_flavour}


class UnifiedVideoTask(TextToVideoTask):
    """UniVid's unified training (§IV-A): every batch row is a text-to-video, image-to-video or text+image-to-video
    sample, chosen per row with ``train.task_mix`` and realised by the stream weights (λ_t, λ_v) = (1, 0), (0, 1),
    (1, 1), so the inference corners are in distribution. The reference image is the clip's first frame (or a random
    one, ``model.cond_frame``); its patch tokens enter the image stream directly (no projector, no concatenated
    latent). A ``cond_dropout.text`` row is the guidance null whatever its mode: empty text, λ_v = 0.
    ``mode_counts`` counts the rows of each mode seen (the null rows apart)."""

    kind = "univid"
    MODES = ("t2v", "i2v", "ti2v")
    SCALES = {"t2v": (1.0, 0.0), "i2v": (0.0, 1.0), "ti2v": (1.0, 1.0)}

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        if cfg.data.images is not None and not self.unet.config.get("image_frames_spatial_only", False):
            raise ConfigError("UniVid's image batches train the spatial layers only: set image_frames_spatial_only: "
                              "true in model.unet.config (or drop data.images)")
        self.mode_counts = {m: 0 for m in (*self.MODES, "null")}

    @property
    def counters(self) -> dict[str, int]:
        """Rows per mode, saved with each checkpoint and restored on resume (the trainer's task-counter protocol)."""
        return self.mode_counts

    def draw_modes(self, gens: list[torch.Generator]) -> list[str]:
        """One mode per sample from its own generator (the same draw whichever process holds the sample)."""
        mix = self.cfg.train.task_mix
        modes = [m for m in self.MODES if mix.get(m, 0.0) > 0]
        edges = np.cumsum([mix[m] for m in modes])
        out = []
        for g in gens:
            u = float(torch.rand(1, generator=g))
            out.append(modes[min(int(np.searchsorted(edges, u, side="right")), len(modes) - 1)])
        return out

    def _reference(self, video: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        b, t = video.shape[0], video.shape[2]
        if self.cfg.model.cond_frame == "random":
            frame = torch.cat([torch.randint(0, t, (1,), generator=g) for g in gens])
        else:
            frame = torch.zeros(b, dtype=torch.long)
        return video[torch.arange(b), :, frame]

    def _image_kwargs(self, image: torch.Tensor) -> dict[str, Any]:
        if self.image_trainable:
            return {"clip_images": image.to(self.device)}
        with torch.no_grad():
            return {"clip_tokens": self.image_encoder(image.to(self.device))}

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        if "video" not in batch:
            raise ConfigError("UniVid training needs pixel clips (data.videos of type shapes or csv)")
        latents, draws = self._latents(batch, gens)
        drop_text, _ = dropout_masks(draws.uniform, self.cfg.train.cond_dropout)
        modes = self.draw_modes(gens)
        scales = [(1.0, 0.0) if drop else self.SCALES[m] for m, drop in zip(modes, drop_text.tolist())]
        for m, drop in zip(modes, drop_text.tolist()):
            self.mode_counts["null" if drop else m] += 1
        kwargs = self._text_kwargs(batch, drop_text)
        kwargs["fps"] = self._conditioning(batch[self.cfg.model.conditioning])
        kwargs.update(self._image_kwargs(self._reference(batch["video"], gens)))
        kwargs["text_scale"] = torch.tensor([s[0] for s in scales], device=self.device)
        kwargs["image_scale"] = torch.tensor([s[1] for s in scales], device=self.device)
        return diffusion_loss(model, self.schedule, latents, draws, self._weight(batch), **kwargs)

    def _probe_kwargs(self, captions: list[str], images: torch.Tensor | None, latents: torch.Tensor) -> dict:
        """The probe runs the text+image mode: true/swapped captions and the clips' first frames, λ = (1, 1)."""
        kwargs = super()._probe_kwargs(captions, images, latents)
        kwargs.update(self._image_kwargs(images))
        return kwargs

    def _pipeline(self):
        from vidiff.pipelines.unified import UnifiedVideoPipeline

        return UnifiedVideoPipeline(self.unet, self.vae, self.text_encoder, self.tokenizer, self.image_encoder,
                                    self.schedule, self.sampling_defaults())

    def _generate(self, pipe: Any, d: dict[str, Any]) -> tuple[torch.Tensor, list[str], list]:
        """Rows: a training clip, then its first frame and caption in the T2V, I2V and T+I modes."""
        from vidiff.utils.video import batch_to_uint8_frames

        if self.preview_batch is None:
            raise ConfigError("no training clip seen yet to take the preview images from")
        s, src = self.cfg.sample, self.preview_batch
        common = dict(num_frames=int(d["num_frames"]), height=int(d["height"]), width=int(d["width"]),
                      num_inference_steps=s.steps, guidance_scale=s.guidance_scale, fps=int(d["fps"]), eta=s.eta,
                      seed=s.seed, output_type="np", progress=False)
        image, captions = src["video"][:, :, 0], list(src["caption"])
        t2v = pipe(captions, **common).frames
        i2v = pipe(None, image, **common).frames
        ti2v = pipe(captions, image, **common).frames
        rows = []
        for real, a, b_, c in zip(batch_to_uint8_frames(src["video"]), t2v, i2v, ti2v):
            rows += [real, a, b_, c]
        names = [f"{m}_{c}" for c in captions for m in ("t2v", "i2v", "ti2v")]
        videos = [v for triple in zip(t2v, i2v, ti2v) for v in triple]
        return videos, names, rows

    def _index(self, step: int) -> dict[str, Any]:
        return {"_class_name": "UnifiedVideoPipeline", "family": "vidiff_trained_univid",
                "flavour": "dc" if self.schedule.data_scale == "dc" else "vc",
                "task_mix": dict(self.cfg.train.task_mix), "mode_counts": dict(self.mode_counts)}


class ReferenceVideoTask(TextToVideoTask):
    """VideoGen's reference-guided base stage (§3.2, §3.5): the U-Net reads ``[z_t ‖ r]`` with r the reference latent
    on frame 0 and zeros on the other frames; in training the reference is the clip's own first frame (its latent),
    dropped to zeros with ``cond_dropout.image`` (a model that also runs without a reference, design doc reading 4).
    Initialised from a text-to-video folder, the U-Net grows 4 zero input channels, so step 0 is that model.

    With ``model.lowres_factor`` it is a super-resolution stage of the cascade: 4 more channels carry the clip at
    1/factor resolution (area-resized frames, encoded, posterior mean), upsampled bilinearly in latent space (what the
    stage below produces at inference), plus ``model.lowres_noise`` · N(0, 1) (noise augmentation, default off)."""

    kind = "ref_t2v"

    def lowres_latents(self, video: torch.Tensor) -> torch.Tensor:
        """The clip at 1/lowres_factor resolution, encoded (posterior mean): what the stage below generates."""

        from vidiff.models.autoencoder import encode_video

        f = self.cfg.model.lowres_factor
        b, _, t, h, w = video.shape
        frames = rearrange(video, "b c t h w -> (b t) c h w").float()
        small = rearrange(F.interpolate(frames, size=(h // f, w // f), mode="area"), "(b t) c h w -> b c t h w", b=b)
        with torch.no_grad():
            return encode_video(self.vae, small.to(self.device), sample=False).float()

    def _lowres(self, video: torch.Tensor, gens: list[torch.Generator] | None) -> torch.Tensor:
        from vidiff.models.conditions import upsample_latents

        low = upsample_latents(self.lowres_latents(video), self.cfg.model.lowres_factor)
        sigma = self.cfg.model.lowres_noise
        if sigma and gens is not None:
            low = low + sigma * torch.stack([torch.randn(low.shape[1:], generator=g) for g in gens]).to(low)
        return low

    def _concat(self, reference: torch.Tensor, num_frames: int, video: torch.Tensor | None,
                gens: list[torch.Generator] | None) -> torch.Tensor:
        from vidiff.models.conditions import first_frame_concat

        concat = first_frame_concat(reference, num_frames)
        if self.cfg.model.lowres_factor is None:
            return concat
        if video is None:
            raise ConfigError("a super-resolution stage (model.lowres_factor) trains on pixel clips (data.videos of "
                              "type shapes or csv), not on a latent cache")
        return torch.cat([concat, self._lowres(video, gens).to(concat)], dim=1)

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        latents, draws = self._latents(batch, gens)
        drop_text, drop_ref = dropout_masks(draws.uniform, self.cfg.train.cond_dropout)
        kwargs = self._text_kwargs(batch, drop_text)
        kwargs["fps"] = self._conditioning(batch[self.cfg.model.conditioning])
        keep = (~drop_ref).to(latents.device, latents.dtype)[:, None, None, None]
        kwargs["c_concat"] = self._concat(latents[:, :, 0] * keep, latents.shape[2], batch.get("video"), gens)
        return diffusion_loss(model, self.schedule, latents, draws, self._weight(batch), **kwargs)


    def _probe_kwargs(self, captions: list[str], images: torch.Tensor | None, latents: torch.Tensor) -> dict:
        """True/swapped captions with the held-out clips' first frames as references (posterior means), so the
        probe's image swap swaps the reference."""
        from vidiff.models.autoencoder import encode_video

        kwargs = super()._probe_kwargs(captions, images, latents)
        with torch.no_grad():
            ref = encode_video(self.vae, images[:, :, None].to(self.device), sample=False)[:, :, 0].float()
        kwargs["c_concat"] = self._concat(ref, latents.shape[2], self.binding_video, None)  # the probe's own clips
        return kwargs

    def _pipeline(self):
        from vidiff.pipelines.reference import ReferenceVideoPipeline

        return ReferenceVideoPipeline(self.unet, self.vae, self.text_encoder, self.tokenizer, self.schedule,
                                      self.sampling_defaults(), lowres_factor=self.cfg.model.lowres_factor)

    def _generate(self, pipe: Any, d: dict[str, Any]) -> tuple[torch.Tensor, list[str], list]:
        """Rows: a training clip, then the model's video from its caption with its first frame as the reference."""
        from vidiff.utils.video import batch_to_uint8_frames

        if self.preview_batch is None:
            raise ConfigError("no training clip seen yet to take the preview references from")
        s, src = self.cfg.sample, self.preview_batch
        low = self.lowres_latents(src["video"]) if self.cfg.model.lowres_factor is not None else None
        out = pipe(list(src["caption"]), src["video"][:, :, 0], lowres_latents=low, num_frames=int(d["num_frames"]),
                   height=int(d["height"]), width=int(d["width"]), num_inference_steps=s.steps,
                   guidance_scale=s.guidance_scale, fps=int(d["fps"]), eta=s.eta, seed=s.seed, output_type="np",
                   progress=False)
        rows = [r for pair in zip(batch_to_uint8_frames(src["video"]), out.frames) for r in pair]
        return out.frames, list(src["caption"]), rows

    def _index(self, step: int) -> dict[str, Any]:
        index = {"_class_name": "ReferenceVideoPipeline", "family": "vidiff_trained_ref_t2v",
                 "flavour": "dc" if self.schedule.data_scale == "dc" else "vc", "reference": "first_frame_concat"}
        if self.cfg.model.reference_model is not None:
            index["reference_model"] = self.cfg.model.reference_model
        if self.cfg.model.lowres_factor is not None:
            index["lowres_factor"] = self.cfg.model.lowres_factor
        return index


def _rebuilt(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """A fresh, unsharded copy of ``module``'s class holding the ``prefix`` part of a gathered state dict."""
    sub = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    copy = type(module).from_config(dict(module.config))
    copy.load_state_dict(sub, strict=True)
    return copy


# ------------------------------------------------------------------------------------------------------ autoencoder


class AutoencoderBundle(nn.Module):
    """Any module with ``encode``/``decode`` as one trainable forward: x -> (reconstruction, KL or None).

    ``encode`` may return a diffusers ``AutoencoderKLOutput`` (``.latent_dist``), a distribution with
    ``mean``/``std``/``kl()``, or a plain tensor (deterministic autoencoder, no KL); ``decode`` a ``DecoderOutput``
    (``.sample``) or a tensor. ``eps_fn(shape)`` supplies the posterior noise, so sampling follows the per-sample
    generators.
    """

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        for method in ("encode", "decode"):
            if not callable(getattr(autoencoder, method, None)):
                raise ConfigError(f"the autoencoder ({type(autoencoder).__name__}) has no {method}() method")
        self.autoencoder = autoencoder

    def forward(
        self, x: torch.Tensor, eps_fn: Callable[[tuple[int, ...]], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc = self.autoencoder.encode(x)
        dist = getattr(enc, "latent_dist", enc)
        kl = None
        if isinstance(dist, torch.Tensor):
            z = dist
        else:
            z = dist.mean
            if eps_fn is not None:
                z = z + dist.std * eps_fn(tuple(z.shape)).to(device=z.device, dtype=z.dtype)
            kl = dist.kl()
        dec = self.autoencoder.decode(z)
        recon = getattr(dec, "sample", dec)
        return recon, kl


class AutoencoderTask:
    """Reconstruction + KL training of the first-stage autoencoder (frames as images, or whole clips)."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.autoencoder = build_component("vae", cfg.model.vae, cfg.model.init_from)
        self.module = AutoencoderBundle(self.autoencoder)
        self.video_input = cfg.model.autoencoder_input == "video"
        self.metric_names = ("loss", "kl", *(("l1",) if "l1" in cfg.train.recon_loss else ()),
                             *(("l2",) if "l2" in cfg.train.recon_loss else ()))
        if cfg.train.gradient_checkpointing and hasattr(self.autoencoder, "enable_gradient_checkpointing"):
            self.autoencoder.enable_gradient_checkpointing()
        self.preview_batch: torch.Tensor | None = None

    def _frames(self, video: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """(b, 3, t, H, W) -> (b·k, 3, H, W): k = frames_per_clip frames per clip, chosen per sample."""
        k = min(self.cfg.data.frames_per_clip, video.shape[2])
        picks = [torch.randperm(video.shape[2], generator=g)[:k] for g in gens]
        chosen = torch.stack([v[:, idx] for v, idx in zip(video, picks)])  # (b, 3, k, H, W)
        return rearrange(chosen, "b c k h w -> (b k) c h w")

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        if "video" not in batch:
            raise ConfigError("autoencoder training needs pixel data (data.videos of type shapes or csv)")
        video = batch["video"]
        if self.preview_batch is None:
            self.preview_batch = video[: self.cfg.sample.num_reconstructions].clone()
        x = (video if self.video_input else self._frames(video, gens)).to(self.device)
        per_sample = x.shape[0] // len(gens)

        def eps_fn(shape: tuple[int, ...]) -> torch.Tensor:
            rows = [torch.randn((per_sample, *shape[1:]), generator=g) for g in gens]
            return torch.cat(rows)

        recon, kl = model(x, eps_fn)
        return autoencoder_loss(x, recon, kl, self.cfg.train.recon_loss, self.cfg.train.kl_weight)

    @torch.no_grad()
    def _reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        x = video if self.video_input else rearrange(video, "b c t h w -> (b t) c h w")
        enc = self.autoencoder.encode(x.to(self.device))
        dist = getattr(enc, "latent_dist", enc)
        z = dist if isinstance(dist, torch.Tensor) else dist.mean
        dec = self.autoencoder.decode(z)
        recon = getattr(dec, "sample", dec).float().cpu()
        return recon if self.video_input else rearrange(recon, "(b t) c h w -> b c t h w", b=b)

    def preview(self, out_dir: Path, tag: str) -> list[Path]:
        """Contact sheet of input clips and their reconstructions (rows alternate), plus the reconstruction L1."""
        from vidiff.utils.video import batch_to_uint8_frames, write_contact_sheet

        if self.preview_batch is None:
            return []
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            recon = self._reconstruct(self.preview_batch)
        finally:
            self.autoencoder.train(was_training)
        self.last_preview_l1 = float((recon.clamp(-1, 1) - self.preview_batch).abs().mean())
        rows = []
        for src, rec in zip(batch_to_uint8_frames(self.preview_batch), batch_to_uint8_frames(recon.clamp(-1, 1))):
            rows += [src, rec]
        return [write_contact_sheet(rows, out_dir / f"{tag}.png", columns=None)]

    def encoder_trained(self) -> bool:
        """Whether any parameter that shapes the latents (encoder, quant_conv) is being trained."""
        parts = [getattr(self.autoencoder, n, None) for n in ("encoder", "quant_conv")]
        parts = [m for m in parts if isinstance(m, nn.Module)]
        if not parts:
            return any(p.requires_grad for p in self.autoencoder.parameters())
        return any(p.requires_grad for m in parts for p in m.parameters())

    @torch.no_grad()
    def calibrate_scaling_factor(self, videos: torch.Tensor) -> float | None:
        """LDM's scale_by_std: 1 / std of the latents, stored in the config so diffusion sees unit-variance latents."""
        config = getattr(self.autoencoder, "config", None)
        if config is None or "scaling_factor" not in config or not hasattr(self.autoencoder, "register_to_config"):
            return None
        if not self.encoder_trained():
            return None  # a decoder fine-tune keeps the latent space, so models trained on it keep their scale
        frames = videos if self.video_input else rearrange(videos, "b c t h w -> (b t) c h w")
        frames = frames.to(self.device)
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            dist = self.autoencoder.encode(frames).latent_dist
            std = float(dist.mean.float().std())
        finally:
            self.autoencoder.train(was_training)
        factor = 1.0 / max(std, 1e-6)
        self.autoencoder.register_to_config(scaling_factor=factor)
        return factor

    def export(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None, step: int = 0) -> None:
        module = self.autoencoder
        if state_dict is not None:
            module = _rebuilt(self.autoencoder, state_dict, "autoencoder.")
        if hasattr(module, "save_pretrained"):
            module.save_pretrained(folder)
        else:
            from vidiff.utils.io import atomic_save_safetensors

            atomic_save_safetensors(module.state_dict(), folder / "model.safetensors")
        (folder / "training.json").write_text(json.dumps({"step": step, "config": config_to_dict(self.cfg)}, indent=2))


class VideoDecoderBundle(nn.Module):
    """The trained forward of a video decoder: clean/degraded clips -> (reconstruction of every frame, no KL).

    The frames of the (degraded) clip are encoded by the frozen image encoder (posterior sampled with ``eps_fn``) and
    decoded as one clip of ``t`` frames by :class:`~vidiff.models.video_decoder.TemporalDecoderAutoencoderKL`."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, video: torch.Tensor, eps_fn: Callable[[tuple[int, ...]], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, None]:
        b, t = video.shape[0], video.shape[2]
        with torch.no_grad():
            dist = self.autoencoder.encode(rearrange(video, "b c t h w -> (b t) c h w")).latent_dist
            z = dist.mean if eps_fn is None else dist.mean + dist.std * eps_fn(tuple(dist.mean.shape)).to(dist.mean)
        recon = self.autoencoder.decode(z, num_frames=t).sample
        return rearrange(recon, "(b t) c h w -> b c t h w", b=b, t=t), None


class VideoDecoderTask(AutoencoderTask):
    """VideoGen's video decoder (§3.4): the image autoencoder's decoder with identity-initialised temporal layers,
    trained to reconstruct the clean clip from the latents of a degraded one (``data.degrade``, applied in pixel space
    before the frozen encoder). The encoder and its latent space do not change, so the export is the ``vae`` of any
    model folder trained on that autoencoder."""

    FROZEN = ("autoencoder.encoder.", "autoencoder.quant_conv.")

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        from vidiff.data.degrade import DegradeConfig
        from vidiff.models.video_decoder import TemporalDecoderAutoencoderKL
        from vidiff.training.params import SelectorError, select_parameters

        self.cfg = cfg
        self.device = device
        vae = build_component("vae", cfg.model.vae, cfg.model.init_from)
        if not isinstance(vae, TemporalDecoderAutoencoderKL):
            try:
                vae = TemporalDecoderAutoencoderKL.from_image_autoencoder(vae, **cfg.model.video_decoder)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"model.video_decoder: {err}") from err
        elif cfg.model.video_decoder:
            raise ConfigError("model.video_decoder sets the temporal layers of an image autoencoder; model.vae is "
                              "already a video decoder")
        self.autoencoder = vae
        self.autoencoder.encoder.requires_grad_(False)
        # the image decoder as it was (previews compare against it); the encoder is shared, so nothing is lost
        self.image_autoencoder = copy.deepcopy(vae).requires_grad_(False).eval().to(device)
        self.image_autoencoder.init_temporal_identity()
        self.module = VideoDecoderBundle(vae)
        self.video_input = True
        self.degrade = cfg.data.degrade or DegradeConfig()
        self.metric_names = ("loss", *(("l1",) if "l1" in cfg.train.recon_loss else ()),
                             *(("l2",) if "l2" in cfg.train.recon_loss else ()))
        try:
            chosen = select_parameters(self.module, cfg.train.trainable, cfg.train.frozen)
        except SelectorError as err:
            raise ConfigError(f"train.trainable/frozen: {err}") from err
        frozen = sorted(n for n in chosen if n.startswith(self.FROZEN))
        if frozen:
            raise ConfigError(f"a video decoder keeps the image encoder frozen (its latent space is the diffusion "
                              f"models'), but train.trainable selects {frozen[0]}: use @video_decoder")
        if cfg.train.gradient_checkpointing:
            raise ConfigError("train.gradient_checkpointing is not supported by the video decoder")
        self.preview_batch: torch.Tensor | None = None

    def degraded(self, video: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        from vidiff.data.degrade import degrade_clip

        return torch.stack([degrade_clip(v, self.degrade, g) for v, g in zip(video, gens)])

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        if "video" not in batch:
            raise ConfigError("video-decoder training needs pixel clips (data.videos of type shapes or csv)")
        video = batch["video"]
        if video.shape[2] > self.autoencoder.config.temporal_length:
            raise ConfigError(f"clips of {video.shape[2]} frames exceed the decoder's temporal_length "
                              f"{self.autoencoder.config.temporal_length} (model.video_decoder.temporal_length)")
        if self.preview_batch is None:
            self.preview_batch = video[: self.cfg.sample.num_reconstructions].clone()
        degraded = self.degraded(video, gens).to(self.device)
        t = video.shape[2]

        def eps_fn(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.cat([torch.randn((t, *shape[1:]), generator=g) for g in gens])

        recon, _ = model(degraded, eps_fn)
        return autoencoder_loss(video.to(self.device), recon, None, self.cfg.train.recon_loss, 0.0)

    @torch.no_grad()
    def _reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        return self.module(video.to(self.device))[0].float().cpu()

    def preview(self, out_dir: Path, tag: str) -> list[Path]:
        """Rows: a clean clip, its degraded copy, the image decoder's and the video decoder's decoding of it."""
        from vidiff.models.autoencoder import decode_video, encode_video
        from vidiff.utils.video import batch_to_uint8_frames, write_contact_sheet

        if self.preview_batch is None:
            return []
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(self.preview_batch))]
        degraded = self.degraded(self.preview_batch, gens)
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            ours = self._reconstruct(degraded)
            z = encode_video(self.image_autoencoder, degraded.to(self.device), sample=False)
            per_frame = decode_video(self.image_autoencoder, z, chunk_size=None).float().cpu()
        finally:
            self.autoencoder.train(was_training)
        self.last_preview_l1 = float((ours.clamp(-1, 1) - self.preview_batch).abs().mean())
        rows = []
        for clip in zip(*(batch_to_uint8_frames(v.clamp(-1, 1)) for v in (self.preview_batch, degraded, per_frame,
                                                                            ours))):
            rows += list(clip)
        return [write_contact_sheet(rows, out_dir / f"{tag}.png", columns=None)]


class TemporalRefinerTask(TextToVideoTask):
    """VideoGen's temporal refiner (§3.3, design doc reading 6): a diffusion U-Net over 2K−1 frames whose input is
    ``[z_t ‖ c ‖ m]``: c holds the keyframe latents at even indices and the warped middle latents at odd ones, m = 1
    on keyframes. No text (it trains on unpaired video: the empty caption always); the fps condition is the target
    rate. In training the warps are the shapes world's oracle warps (:func:`vidiff.data.shapes_flow.bilateral_flow`)
    of the clip's own latents; at inference the flow network's."""

    kind = "temporal_refiner"
    needs_ground_truth = True

    def refiner_condition(self, latents: torch.Tensor, masks: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """(b, c + 1, T, h, w): keyframes (even frames) and oracle warps (odd frames) of ``latents``, and the mask."""
        from vidiff.data.shapes_flow import latent_bilateral_flow
        from vidiff.models.autoencoder import spatial_factor_of
        from vidiff.models.latent_flow import bilateral_merge

        b, c, t, h, w = latents.shape
        if t < 3 or t % 2 == 0:
            raise ConfigError(f"the temporal refiner trains on clips of an odd number of frames >= 3 (keyframes and "
                              f"the frames between them), got {t}")
        f = spatial_factor_of(self.vae)
        cond = latents.clone()
        for j in range(1, t, 2):
            to0, to1, weight = (x.to(latents) for x in latent_bilateral_flow(masks, flow, [j] * b, f))
            cond[:, :, j] = bilateral_merge(latents[:, :, j - 1], latents[:, :, j + 1], to0, to1, weight)
        key = torch.zeros(b, 1, t, h, w, dtype=latents.dtype, device=latents.device)
        key[:, :, 0::2] = 1
        return torch.cat([cond, key], dim=1)

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        if "flow" not in batch or "masks" not in batch:
            raise ConfigError("temporal-refiner training needs the shapes world's motion ground truth (data.videos of "
                              "type shapes)")
        latents, draws = self._latents(batch, gens)
        if self.preview_batch is not None and "masks" not in self.preview_batch:
            n = len(self.preview_batch["caption"])
            self.preview_batch.update(masks=batch["masks"][:n].clone(), flow=batch["flow"][:n].clone())
        kwargs = self._text_kwargs(batch, torch.ones(len(gens), dtype=torch.bool))  # no text: the empty caption
        kwargs["fps"] = self._conditioning(batch[self.cfg.model.conditioning])
        kwargs["c_concat"] = self.refiner_condition(latents, batch["masks"], batch["flow"])
        return diffusion_loss(model, self.schedule, latents, draws, self._weight(batch), **kwargs)

    def _pipeline(self):
        from vidiff.pipelines.temporal_sr import TemporalRefinerPipeline

        return TemporalRefinerPipeline(self.unet, self.vae, self.text_encoder, self.tokenizer, self.schedule,
                                       self.sampling_defaults())

    def _generate(self, pipe: Any, d: dict[str, Any]) -> tuple[torch.Tensor, list[str], list]:
        """Rows: a training clip, its oracle-warped clip (inserted frames warped), and the refiner's output."""
        from vidiff.models.autoencoder import decode_video, encode_video
        from vidiff.utils.video import batch_to_uint8_frames

        src = self.preview_batch
        if src is None or "masks" not in src:
            raise ConfigError("no training clip seen yet to preview the refiner on")
        z = encode_video(self.vae, src["video"].to(self.device), sample=False).float()
        cond = self.refiner_condition(z, src["masks"], src["flow"])
        refined = pipe.refine(cond, num_inference_steps=self.cfg.sample.steps, seed=self.cfg.sample.seed,
                              fps=int(d["fps"]))
        warped = batch_to_uint8_frames(decode_video(self.vae, cond[:, :-1], chunk_size=None).clamp(-1, 1))
        out = batch_to_uint8_frames(decode_video(self.vae, refined, chunk_size=None).clamp(-1, 1))
        rows = [r for triple in zip(batch_to_uint8_frames(src["video"]), warped, out) for r in triple]
        return out, [f"refined_{i}" for i in range(len(out))], rows

    def _index(self, step: int) -> dict[str, Any]:
        return {"_class_name": "TemporalRefinerPipeline", "family": "vidiff_trained_temporal_refiner",
                "flavour": "dc" if self.schedule.data_scale == "dc" else "vc"}


class LatentFlowTask:
    """VideoGen's latent flow network (§3.3, §3.5): bilateral flows to the middle frame and a blend mask from two latent
    keyframes, distilled from a teacher. On the shapes world the teacher is the analytic flow the world renders
    (:func:`vidiff.data.shapes_flow.bilateral_flow`), resized and divided by the autoencoder's factor (flows in latent
    pixels). Loss: L1 to the teacher's flows (moving cells weighted ``MOTION_WEIGHT``) and mask, plus
    ``train.warp_weight`` · ‖z_w − z_½‖₁ (design doc reading 5).
    A sample's middle frame is drawn per sample from its generator; the autoencoder is frozen."""

    kind = "latent_flow"
    needs_ground_truth = True  # the trainer's datasets then carry the shapes world's masks and flow
    MOTION_WEIGHT = 20.0  # weight of a moving cell (teacher flow ≠ 0) in the flow loss, against 1 for a still one
    metric_names = ("loss", "flow_l1", "mask_l1", "warp_l1")

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        from vidiff.models.autoencoder import latent_channels_of
        from vidiff.models.latent_flow import LatentFlowNet

        self.cfg = cfg
        self.device = device
        self.vae = build_component("vae", cfg.model.vae, cfg.model.init_from).requires_grad_(False).eval().to(device)
        try:
            self.flow_net = LatentFlowNet(latent_channels_of(self.vae), **cfg.model.flow_net)
        except TypeError as err:
            raise ConfigError(f"model.flow_net: {err}") from err
        self.module = self.flow_net
        self.preview_batch: dict[str, torch.Tensor] | None = None

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        from vidiff.models.autoencoder import encode_video

        with torch.no_grad():
            return encode_video(self.vae, frames[:, :, None].to(self.device), sample=False)[:, :, 0].float()

    def _targets(self, batch: dict[str, Any], middles: list[int]) -> dict[str, torch.Tensor]:
        from vidiff.data.shapes_flow import latent_bilateral_flow
        from vidiff.models.autoencoder import spatial_factor_of

        if "flow" not in batch or "masks" not in batch:
            raise ConfigError("latent-flow training needs the shapes world's motion ground truth (data.videos of "
                              "type shapes)")
        f = spatial_factor_of(self.vae)
        video, rows = batch["video"], torch.arange(len(middles))
        m = torch.tensor(middles)
        to0, to1, weight = latent_bilateral_flow(batch["masks"], batch["flow"], middles, f)
        return {"z0": self._encode(video[rows, :, m - 1]), "z1": self._encode(video[rows, :, m + 1]),
                "zm": self._encode(video[rows, :, m]), "to0": to0.to(self.device), "to1": to1.to(self.device),
                "mask": weight.to(self.device)}

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        from vidiff.models.latent_flow import bilateral_merge

        t = batch["video"].shape[2]
        if t < 3:
            raise ConfigError(f"latent-flow training needs clips of at least 3 frames, got {t}")
        if self.preview_batch is None:
            n = self.cfg.sample.num_reconstructions
            self.preview_batch = {k: batch[k][:n].clone() for k in ("video", "masks", "flow")}
        middles = [int(torch.randint(1, t - 1, (1,), generator=g)) for g in gens]
        y = self._targets(batch, middles)
        f0, f1, mask = model(y["z0"], y["z1"])
        # a few percent of the cells move: weight them so the flow loss is not won by predicting zero everywhere
        moving = ((y["to0"].abs().sum(1, keepdim=True) + y["to1"].abs().sum(1, keepdim=True)) > 0).float()
        w = 1.0 + self.MOTION_WEIGHT * moving
        flow_l1 = (((f0 - y["to0"]).abs() + (f1 - y["to1"]).abs()) * w).sum() / (2 * w.sum() * f0.shape[1])
        mask_l1 = (mask - y["mask"]).abs().mean()
        warp_l1 = (bilateral_merge(y["z0"], y["z1"], f0, f1, mask) - y["zm"]).abs().mean()
        loss = flow_l1 + mask_l1 + self.cfg.train.warp_weight * warp_l1
        return loss, {"loss": float(loss.detach()), "flow_l1": float(flow_l1.detach()),
                      "mask_l1": float(mask_l1.detach()), "warp_l1": float(warp_l1.detach())}

    @torch.no_grad()
    def preview(self, out_dir: Path, tag: str) -> list[Path]:
        """Rows per clip: keyframe 0, lerp, the flow net's middle frame, the true middle frame, keyframe 1 (decoded)."""
        from vidiff.models.autoencoder import decode_video
        from vidiff.models.latent_flow import bilateral_merge, lerp
        from vidiff.utils.video import batch_to_uint8_frames, write_contact_sheet

        if self.preview_batch is None:
            return []
        b = self.preview_batch
        middles = [b["video"].shape[2] // 2] * len(b["video"])
        y = self._targets(b, middles)
        was = self.flow_net.training
        self.flow_net.eval()
        try:
            f0, f1, mask = self.flow_net(y["z0"], y["z1"])
        finally:
            self.flow_net.train(was)
        mid = bilateral_merge(y["z0"], y["z1"], f0, f1, mask)
        latents = torch.stack([y["z0"], lerp(y["z0"], y["z1"]), mid, y["zm"], y["z1"]], dim=2)
        frames = batch_to_uint8_frames(decode_video(self.vae, latents, chunk_size=None).clamp(-1, 1))
        self.last_preview_l1 = float((mid - y["zm"]).abs().mean())
        return [write_contact_sheet(list(frames), out_dir / f"{tag}.png", columns=None)]

    def export(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None, step: int = 0) -> None:
        net = self.flow_net if state_dict is None else _rebuilt(self.flow_net, state_dict, "")
        net.save_pretrained(folder / "flow_net")
        self.vae.save_pretrained(folder / "vae")
        index = {"_class_name": "TemporalSuperResolutionPipeline", "family": "vidiff_trained_latent_flow",
                 "components": ["flow_net", "vae"], "guidance": "flow",
                 "defaults": {"fps": int(self.cfg.model.defaults.get("fps", 8))}}
        write_index(folder, index, {"flow_net": net, "vae": self.vae})
        (folder / "training.json").write_text(json.dumps({"step": step, "config": config_to_dict(self.cfg)}, indent=2))


def make_task(cfg: RunConfig, device: torch.device) -> TextToVideoTask | AutoencoderTask:
    tasks = {"t2i": TextToImageTask, "t2v": TextToVideoTask, "i2v": ImageToVideoTask, "univid": UnifiedVideoTask,
             "ref_t2v": ReferenceVideoTask, "autoencoder": AutoencoderTask, "video_decoder": VideoDecoderTask,
             "latent_flow": LatentFlowTask, "temporal_refiner": TemporalRefinerTask}
    return tasks[cfg.task](cfg, device)
