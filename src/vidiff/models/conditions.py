"""What the layers of a U-Net call receive besides their features: the conditions of the call and their own level.

Every layer a :class:`~vidiff.models.unet3d.BlockSequence` holds follows one protocol,
``unet_forward(x, emb, cond, num_frames)`` on folded frames ``((b t), C, H, W)``; a layer that needs none of it (a
convolution, a down- or upsampler) is called as ``layer(x)``. Layers are built by factories that receive their
:class:`UNetLevel`, so a layer that differs by resolution (a pyramid of temporal attention, a kernel size per level)
is a config entry (:mod:`vidiff.models.layers`), not a U-Net subclass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FrameConditions", "UNetLevel"]


@dataclass
class FrameConditions:
    """The conditions of one U-Net call, frames folded into the batch as ``(b t)``.

    ``text``/``image``: ((b t), L, C) tokens for the spatial cross-attention (the image stream of a dual
    cross-attention layer); ``text_scale``/``image_scale``: the streams' weights, a float or one per (b t) row
    (``image_scale`` None: each layer's configured λ); ``video_text``: (b, L, C), one caption per video, for temporal
    layers that read the text, weighted by ``video_text_scale`` (λ_t per video: a float or (b,)); ``temporal``
    False makes every temporal layer pass its input through (image batches of a model trained with
    ``image_frames_spatial_only``).
    """

    text: torch.Tensor | None = None
    image: torch.Tensor | None = None
    text_scale: float | torch.Tensor = 1.0
    image_scale: float | torch.Tensor | None = None
    video_text: torch.Tensor | None = None
    video_text_scale: float | torch.Tensor = 1.0
    temporal: bool = True


@dataclass(frozen=True)
class UNetLevel:
    """Where a layer sits: ``index`` of its resolution level (0 = full latent resolution) of ``num_levels``,
    ``factor`` its downsampling (2 ** index), ``stage`` "down", "middle" or "up"."""

    index: int
    num_levels: int
    stage: str

    @property
    def factor(self) -> int:
        return 2**self.index

    @property
    def depth(self) -> float:
        """0 at full resolution, 1 at the coarsest level (the middle block)."""
        return self.index / max(self.num_levels - 1, 1)


def first_frame_concat(reference: torch.Tensor, num_frames: int) -> torch.Tensor:
    """VideoGen's reference input (§3.2): the reference latent (b, c, h, w) on frame 0 of a (b, c, t, h, w) tensor of
    zeros, concatenated to the noisy latent on channels (not DynamiCrafter's copy to every frame)."""
    if reference.dim() != 4:
        raise ValueError(f"the reference latent must be (batch, channels, height, width), got {tuple(reference.shape)}")
    out = reference.new_zeros(reference.shape[0], reference.shape[1], num_frames, *reference.shape[2:])
    out[:, :, 0] = reference
    return out


def upsample_latents(latents: torch.Tensor, factor: int) -> torch.Tensor:
    """A lower cascade stage's latents (b, c, t, h, w) -> (b, c, t, h·factor, w·factor), bilinear per frame: the
    low-resolution condition of a VideoGen super-resolution stage (§3.2)."""
    import torch.nn.functional as F

    if latents.dim() != 5:
        raise ValueError(f"latents must be (batch, channels, frames, height, width), got {tuple(latents.shape)}")
    b, c, t, h, w = latents.shape
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    up = F.interpolate(frames.float(), scale_factor=factor, mode="bilinear", align_corners=False)
    return up.reshape(b, t, c, h * factor, w * factor).permute(0, 2, 1, 3, 4).to(latents.dtype)
