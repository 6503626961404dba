"""What is trained: the text-to-video denoiser or an autoencoder. The loop in :mod:`vidiff.training.trainer` is shared.

A task owns its models, turns a batch into a loss (given per-sample generators, see :mod:`vidiff.training.losses`),
renders previews and exports a model folder. ``module`` is the ``nn.Module`` handed to the optimiser and to
``accelerator.prepare``; everything else (frozen autoencoder, frozen text encoder) lives outside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vidiff.training.config import ConfigError, RunConfig, config_to_dict
from vidiff.training.losses import (
    autoencoder_loss,
    diffusion_loss,
    draw_diffusion,
    dropout_masks,
    encode_latents,
)
from vidiff.training.models import DenoiserBundle, build_component, build_t2v_components

__all__ = ["AutoencoderBundle", "AutoencoderTask", "TextToVideoTask", "make_task"]


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


class TextToVideoTask:
    """VideoCrafter-style latent T2V: frozen autoencoder, U-Net (+ optionally the text encoder) trained on ε or v."""

    metric_names = ("loss",)

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        comps = build_t2v_components(cfg.model)
        self.unet, self.vae, self.tokenizer, self.schedule = comps.unet, comps.vae, comps.tokenizer, comps.schedule
        self.defaults = comps.defaults
        self.text_trainable = cfg.model.text_encoder.trainable
        self.text_encoder = comps.text_encoder
        self.module = DenoiserBundle(self.unet, self.text_encoder if self.text_trainable else None)
        self.vae.requires_grad_(False).eval().to(device)
        if not self.text_trainable:
            self.text_encoder.requires_grad_(False).eval().to(device)
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

    def loss(self, model: nn.Module, batch: dict[str, Any], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        if "latents" in batch:
            latents = batch["latents"].to(self.device).float()
            draws = draw_diffusion(gens, tuple(latents.shape[1:]), self.schedule.num_train_timesteps, False)
        else:
            video = batch["video"]
            if self.clip_shape is None and video.shape[2] > 1:
                self.clip_shape = tuple(video.shape[2:])
                self.clip_fps = int(round(float(batch["fps"][0])))
            from vidiff.models.autoencoder import latent_channels_of, spatial_factor_of

            f = spatial_factor_of(self.vae)
            shape = (latent_channels_of(self.vae), video.shape[2], video.shape[3] // f, video.shape[4] // f)
            draws = draw_diffusion(gens, shape, self.schedule.num_train_timesteps, True)
            with torch.no_grad():
                latents = encode_latents(self.vae, video.to(self.device), draws.posterior_eps)
        drop_text, _ = dropout_masks(draws.uniform, cfg.train.cond_dropout)
        captions = [cfg.train.uncond_text if d else c for c, d in zip(batch["caption"], drop_text.tolist())]
        kwargs: dict[str, Any] = {"fps": self._conditioning(batch[cfg.model.conditioning])}
        if self.text_trainable:
            kwargs["tokens"] = self.tokenizer(captions).to(self.device)
        elif "text_embeddings" in batch:
            ctx = batch["text_embeddings"].to(self.device).float()
            if drop_text.any():
                ctx = ctx.clone()
                ctx[drop_text.to(self.device)] = self._frozen_uncond().to(ctx.dtype)
            kwargs["context"] = ctx
        else:
            with torch.no_grad():
                kwargs["context"] = self.text_encoder(self.tokenizer(captions).to(self.device)).float()
        return diffusion_loss(model, self.schedule, latents, draws, **kwargs)

    # ------------------------------------------------------------------ previews and export
    def sampling_defaults(self) -> dict[str, Any]:
        """Generation defaults for previews and the exported model_index.json.

        Precedence: explicit ``sample.*`` sizes, then ``model.defaults`` (and those of ``init_from``), then the shape
        and fps of the training clips seen so far.
        """
        s, md = self.cfg.sample, self.defaults
        frames, height, width = self.clip_shape or (None, None, None)
        out: dict[str, Any] = {"num_inference_steps": s.steps, "guidance_scale": s.guidance_scale, "eta": s.eta}
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

    @torch.no_grad()
    def preview(self, out_dir: Path, tag: str) -> list[Path]:
        """Sample ``sample.prompts`` with the current (EMA-swapped) weights: one mp4 each and one contact sheet."""
        from vidiff.utils.video import save_video_outputs, write_contact_sheet

        s, d = self.cfg.sample, self.sampling_defaults()
        if d.get("height") is None or d.get("width") is None:
            raise ConfigError("set sample.height/width (or model.defaults) so previews know the video size")
        was_training = self.unet.training
        self.unet.eval()
        self.text_encoder.eval()
        try:
            out = self._pipeline()(
                list(s.prompts),
                num_frames=int(d["num_frames"]),
                height=int(d["height"]),
                width=int(d["width"]),
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
                fps=int(d["fps"]),
                eta=s.eta,
                seed=s.seed,
                output_type="np",
                progress=False,
            )
        finally:
            self.unet.train(was_training)
            self.text_encoder.train(was_training and self.text_trainable)
        folder = out_dir / tag
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (prompt, frames) in enumerate(zip(s.prompts, out.frames)):
            paths += save_video_outputs(frames, folder / f"{i:02d}_{_slug(prompt)}.mp4", fps=int(d["fps"]))
        paths.append(write_contact_sheet(list(out.frames), out_dir / f"{tag}.png", columns=None))
        return paths

    def export(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None, step: int = 0) -> None:
        """Write a model folder the T2V pipeline and ``vidiff generate`` load (``folder`` must exist, empty)."""
        unet, text_encoder = self.unet, self.text_encoder
        if state_dict is not None:  # sharded training: rebuild full modules from the gathered state
            unet, text_encoder = _rebuilt(self.unet, state_dict, "unet."), text_encoder
            if self.text_trainable:
                text_encoder = _rebuilt(self.text_encoder, state_dict, "text_encoder.")
        unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.schedule.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": "TextToVideoPipeline",
            "family": "vidiff_trained_t2v",
            "flavour": "dc" if self.schedule.data_scale == "dc" else "vc",
            "components": ["scheduler", "text_encoder", "tokenizer", "unet", "vae"],
            "defaults": self.sampling_defaults(),
            "training": {"step": step, "config": config_to_dict(self.cfg)},
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _rebuilt(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """A fresh, unsharded copy of ``module``'s class holding the ``prefix`` part of a gathered state dict."""
    sub = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    config = dict(module.config)
    copy = type(module).from_config(config)
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

    @torch.no_grad()
    def calibrate_scaling_factor(self, videos: torch.Tensor) -> float | None:
        """LDM's scale_by_std: 1 / std of the latents, stored in the config so diffusion sees unit-variance latents."""
        config = getattr(self.autoencoder, "config", None)
        if config is None or "scaling_factor" not in config or not hasattr(self.autoencoder, "register_to_config"):
            return None
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


def make_task(cfg: RunConfig, device: torch.device) -> TextToVideoTask | AutoencoderTask:
    if cfg.task == "t2v":
        return TextToVideoTask(cfg, device)
    return AutoencoderTask(cfg, device)
