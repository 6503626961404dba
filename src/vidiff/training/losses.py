"""Training objectives and the per-sample randomness they use.

Randomness (timestep, noise, posterior sample, condition dropout) is drawn per *sample* from a generator seeded by
``(run seed, step, micro-step, position in the global batch)``. A sample therefore gets the same draws whichever process
holds it: two processes with half the batch reproduce one process with the whole batch, and a resumed run draws what
the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vidiff.diffusion.schedule import NoiseSchedule

__all__ = [
    "DiffusionDraws",
    "autoencoder_loss",
    "diffusion_loss",
    "draw_diffusion",
    "dropout_masks",
    "encode_latents",
    "foreground_weight",
    "sample_generators",
]


def sample_generators(seed: int, step: int, micro_step: int, positions: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, a pure function of (seed, step, micro_step, global position)."""
    gens = []
    for pos in positions:
        state = np.random.SeedSequence([seed, step, micro_step, pos]).generate_state(2, np.uint64)
        gens.append(torch.Generator().manual_seed(int(state[0] >> np.uint64(1))))
    return gens


@dataclass
class DiffusionDraws:
    timesteps: torch.Tensor  # (b,) int64
    noise: torch.Tensor  # (b, c, t, h, w) float32
    uniform: torch.Tensor  # (b,) in [0, 1): condition dropout decisions
    posterior_eps: torch.Tensor | None  # (b, c, t, h, w) for sampling the autoencoder posterior, or None


def _draw_timestep(g: torch.Generator, num_train_timesteps: int, sampling: dict | None) -> torch.Tensor:
    """One training timestep: uniform, or logit-normal (SD3's t = sigmoid(mean + std·n)), whose mean > 0 spends more
    steps at high noise, where a video's layout and trajectory are chosen."""
    if not sampling or sampling.get("type", "uniform") == "uniform":
        return torch.randint(0, num_train_timesteps, (1,), generator=g)
    n = torch.randn(1, generator=g)
    u = torch.sigmoid(float(sampling.get("mean", 0.0)) + float(sampling.get("std", 1.0)) * n)
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def draw_diffusion(
    gens: list[torch.Generator], latent_shape: tuple[int, ...], num_train_timesteps: int, with_posterior: bool,
    timestep_sampling: dict | None = None,
) -> DiffusionDraws:
    """The per-sample random numbers of one diffusion training step, always drawn in the same order."""
    ts, noise, uni, eps = [], [], [], []
    for g in gens:
        ts.append(_draw_timestep(g, num_train_timesteps, timestep_sampling))
        uni.append(torch.rand(1, generator=g))
        noise.append(torch.randn(latent_shape, generator=g))
        if with_posterior:
            eps.append(torch.randn(latent_shape, generator=g))
    return DiffusionDraws(
        torch.cat(ts), torch.stack(noise), torch.cat(uni), torch.stack(eps) if with_posterior else None
    )


def dropout_masks(uniform: torch.Tensor, probs: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image) booleans from one uniform draw per sample, as DynamiCrafter splits it.

    u < p_text: text only; then p_both: both; then p_image: image only. The three cases are disjoint, so each happens
    with exactly its configured probability.
    """
    p_text, p_both, p_image = (float(probs.get(k, 0.0)) for k in ("text", "both", "image"))
    text_only = uniform < p_text
    both = (uniform >= p_text) & (uniform < p_text + p_both)
    image_only = (uniform >= p_text + p_both) & (uniform < p_text + p_both + p_image)
    return text_only | both, image_only | both


def encode_latents(vae: Any, video: torch.Tensor, posterior_eps: torch.Tensor | None) -> torch.Tensor:
    """Frames (b, 3, t, H, W) in [-1, 1] -> scaled latents (b, c, t, h, w), posterior sampled with the given noise.

    Same result as :func:`vidiff.models.autoencoder.encode_video` with ``sample=True``, except that the posterior noise
    comes from the caller (per-sample generators) instead of one batch-wide generator.
    """
    from einops import rearrange

    b, _, t = video.shape[:3]
    param = next(vae.parameters())
    frames = rearrange(video, "b c t h w -> (b t) c h w").to(device=param.device, dtype=param.dtype)
    posterior = vae.encode(frames).latent_dist
    z = posterior.mean
    if posterior_eps is not None:
        eps = rearrange(posterior_eps, "b c t h w -> (b t) c h w").to(device=z.device, dtype=z.dtype)
        z = z + posterior.std * eps
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    z = z * vae.config.scaling_factor
    # contiguous: the VAE's convolutions may return channels-last tensors, and CPU GroupNorm backward crashes on their
    # 5D views (torch 2.13), which the U-Net's temporal transformers would otherwise receive.
    return rearrange(z, "(b t) c h w -> b c t h w", b=b, t=t).float().contiguous()


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    draws: DiffusionDraws,
    weight: torch.Tensor | None = None,
    **model_kwargs: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The LVDM objective: MSE between the model output and the ε or v target at a uniformly drawn timestep.

    ``add_noise``/``training_target`` apply the schedule's data scale (VideoCrafter ``use_scale``, DynamiCrafter
    dynamic rescale) exactly as the official training does. ``weight`` (broadcastable to the latents) re-weights
    latent cells; the loss is divided by the weight's mean, so its scale stays that of the plain MSE.
    """
    device = latents.device
    t = draws.timesteps.to(device)
    noise = draws.noise.to(device=device, dtype=latents.dtype)
    noisy = schedule.add_noise(latents, noise, t)
    target = schedule.training_target(latents, noise, t)
    pred = model(noisy, t, **model_kwargs)
    if weight is None:
        loss = F.mse_loss(pred.float(), target.float())
        return loss, {"loss": float(loss.detach())}
    err = (pred.float() - target.float()).square()
    weight = weight.to(device=err.device, dtype=err.dtype).expand_as(err)
    loss = (weight * err).sum() / weight.sum()
    return loss, {"loss": float(loss.detach()), "mse": float(err.mean().detach())}


def foreground_weight(foreground: torch.Tensor, factor: int, strength: float) -> torch.Tensor:
    """(b, 1, t, H, W) pixel masks -> (b, 1, t, H/f, W/f) loss weights 1 + strength at latent cells touching an object."""
    from einops import rearrange

    b = foreground.shape[0]
    frames = rearrange(foreground.float(), "b c t h w -> (b t) c h w")
    cells = F.max_pool2d(frames, factor) if factor > 1 else frames
    return 1.0 + strength * rearrange(cells, "(b t) c h w -> b c t h w", b=b)


def autoencoder_loss(
    x: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor | None, recon_type: str, kl_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (per-pixel mean) + kl_weight · KL, on LDM's scale.

    LDM sums the reconstruction error over pixels and adds kl_weight · KL-sum per image; dividing both by the pixel
    count gives the same optimum with a readable loss, and keeps ``kl_weight`` comparable to LDM configs (1e-6).
    """
    diff = recon.float() - x.float()
    parts = {}
    if recon_type in ("l1", "l1+l2"):
        parts["l1"] = diff.abs().mean()
    if recon_type in ("l2", "l1+l2"):
        parts["l2"] = diff.square().mean()
    rec = sum(parts.values())
    loss = rec
    metrics = {k: float(v.detach()) for k, v in parts.items()}
    if kl is not None:
        pixels_per_item = x[0].numel()
        kl_mean = kl.float().mean()
        loss = loss + kl_weight * kl_mean / pixels_per_item
        metrics["kl"] = float(kl_mean.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
