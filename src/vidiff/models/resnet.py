"""Convolutional blocks of the LVDM-family U-Nets (official key names, see the architecture doc §6.4–6.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back, so bf16 runs keep fp32 statistics (official ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        ).type(x.dtype)


class TemporalConvBlock(nn.Module):
    """Four (3, 1, 1) convolutions over time with one residual around the stack."""

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()

        def stage(first: bool) -> nn.Sequential:
            layers = [nn.GroupNorm(32, channels), nn.SiLU()]
            if not first:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1, self.conv2, self.conv3, self.conv4 = stage(True), stage(False), stage(False), stage(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))

    @torch.no_grad()
    def init_identity(self) -> list[str]:
        """Zero the last convolution: the residual then passes its input through."""
        for p in self.conv4[-1].parameters():
            nn.init.zeros_(p)
        return ["conv4"]


class ResBlock(nn.Module):
    """Frame-wise ResBlock with an additive timestep term and an optional temporal conv block."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        temporal_conv: bool = False,
        temporal_dropout: float = 0.1,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.temporal_conv = TemporalConvBlock(out_channels, temporal_dropout) if temporal_conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int, temporal: bool = True) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.temporal_conv is not None and temporal:
            h = rearrange(h, "(b t) c h w -> b c t h w", t=num_frames)
            h = rearrange(self.temporal_conv(h), "b c t h w -> (b t) c h w")
        return h

    def unet_forward(self, x: torch.Tensor, emb: torch.Tensor, cond, num_frames: int) -> torch.Tensor:
        """The layer protocol of :mod:`vidiff.models.conditions`."""
        return self(x, emb, num_frames, cond.temporal)


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
