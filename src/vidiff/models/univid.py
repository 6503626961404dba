"""UniVid's pyramid spatial-temporal layers (arXiv 2603.13739, §III-A, Eq. 5–6), as U-Net layer types.

* **PSTAttn-f** (:class:`PyramidFrameAttention`): every token of frame i attends to all tokens of ``n_f`` reference
  frames Γ, one per temporal segment of [0, F) (a random offset within each segment in training, the centre frame in
  eval mode), with ``n_f`` set per downsampling factor f: sparse at full resolution, dense at the middle block. It sits
  between the self-attention and the dual-stream cross-attention of each spatial transformer block
  (:class:`PSTTransformerBlock`; Eq. 5 read left to right).
* **PSTConv-f** (:class:`PSTResBlock`): a temporal convolution of kernel ``k_f`` after each of the ResBlock's two
  2D convolutions (P3D), the kernel growing with f.

Both start as identities (zero output projections inside residuals), so a UniVid U-Net initialised from a trained
text-to-video model gives that model's output at step 0, and both are bypassed for one-frame inputs (image batches
train spatial layers only). The dual-stream cross-attention (Eq. 7) is :class:`~vidiff.models.attention.Attention`
with ``image_attention``; λ_t and λ_v are per-call arguments of :meth:`UNet3DModel.forward`.

Config: ``layer_types: {spatial_attention: pst, resblock: pst}``, ``layer_options: {spatial_attention:
{reference_frames: {1: 2, 2: 4, 4: 16}}, resblock: {kernels: {1: 3, 2: 5, 4: 7}}}`` (keys: downsampling factors).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from .attention import Attention, BasicTransformerBlock, SpatialTransformer, _attend
from .conditions import FrameConditions, UNetLevel
from .layers import register_layer
from .resnet import ResBlock

__all__ = ["PSTResBlock", "PSTTransformerBlock", "PyramidFrameAttention", "PyramidSpatialTransformer",
           "TemporalConv1d", "per_factor", "reference_frames"]


def reference_frames(num_frames: int, count: int, random: bool, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Γ: ``count`` frame indices, one in each of ``count`` equal segments of [0, num_frames) (fewer frames than
    segments: every frame). ``random``: a uniform offset within each segment (training, TSN-style); else each segment's
    centre (evaluation: deterministic)."""
    count = min(count, num_frames)
    edges = [(i * num_frames) // count for i in range(count + 1)]
    frames = []
    for start, end in zip(edges[:-1], edges[1:]):
        if random:
            frames.append(start + int(torch.randint(0, end - start, (1,), generator=generator)))
        else:
            frames.append((start + end - 1) // 2)
    return torch.tensor(frames, dtype=torch.long)


def per_factor(schedule: dict[Any, int], level: UNetLevel, what: str) -> int:
    """The value a per-factor schedule (keys: downsampling factors, as ints or strings from JSON) gives a level."""
    table = {int(k): int(v) for k, v in schedule.items()}
    if level.factor not in table:
        raise ValueError(f"{what} has no entry for downsampling factor {level.factor} (has {sorted(table)})")
    value = table[level.factor]
    if value < 1:
        raise ValueError(f"{what}[{level.factor}] must be a positive integer, got {value}")
    return value


class PyramidFrameAttention(nn.Module):
    """PSTAttn (Eq. 6): Q from frame i's tokens, K and V from the concatenated tokens of the reference frames Γ.

    Γ is shared by every frame of a video, so the keys are projected once per video: queries (b, heads, t·n, d) against
    keys (b, heads, n_f·n, d). ``last_reference_frames`` keeps the Γ of the latest call (for tests and inspection).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, num_reference_frames: int):
        super().__init__()
        self.num_reference_frames = num_reference_frames
        self.attention = Attention(dim, None, heads, dim_head)
        self.last_reference_frames: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x`` ((b t), n, C) folded frames -> ((b t), n, C), the attention output (the block adds the residual)."""
        gamma = reference_frames(num_frames, self.num_reference_frames, self.training)
        self.last_reference_frames = gamma
        attn = self.attention
        video = rearrange(x, "(b t) n c -> b t n c", t=num_frames)
        refs = rearrange(video[:, gamma.to(x.device)], "b f n c -> b (f n) c")
        q = rearrange(attn.to_q(video), "b t n (h d) -> b h (t n) d", h=attn.heads)
        k, v = attn._heads(attn.to_k(refs)), attn._heads(attn.to_v(refs))
        out = _attend(q, k, v, attn.scale)
        out = rearrange(out, "b h (t n) d -> (b t) n (h d)", t=num_frames)
        return attn.to_out(out)

    @torch.no_grad()
    def init_identity(self) -> list[str]:
        for p in self.attention.to_out.parameters():
            nn.init.zeros_(p)
        return ["attention.to_out"]


class PSTTransformerBlock(BasicTransformerBlock):
    """UniVid's STBlock attention part (Eq. 5): self-attention, PSTAttn, dual-stream cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, num_reference_frames: int,
                 **attention_kwargs):
        super().__init__(dim, heads, dim_head, context_dim, **attention_kwargs)
        self.norm_pst = nn.LayerNorm(dim)
        self.attn_pst = PyramidFrameAttention(dim, heads, dim_head, num_reference_frames)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, image_context: torch.Tensor | None = None,
                text_scale: float | torch.Tensor = 1.0, image_scale: float | torch.Tensor | None = None,
                num_frames: int = 1) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if num_frames > 1:  # an image batch trains the spatial layers only
            x = self.attn_pst(self.norm_pst(x), num_frames) + x
        x = self.attn2(self.norm2(x), context, image_context, text_scale, image_scale) + x
        return self.ff(self.norm3(x)) + x


class PyramidSpatialTransformer(SpatialTransformer):
    """A spatial transformer of :class:`PSTTransformerBlock`\\ s: the layer that also sees the frame count."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None,
                 use_linear: bool, num_reference_frames: int, **attention_kwargs):
        super().__init__(channels, heads, dim_head, depth, context_dim, 0.0, use_linear, **attention_kwargs)
        inner = heads * dim_head
        self.transformer_blocks = nn.ModuleList(
            PSTTransformerBlock(inner, heads, dim_head, context_dim, num_reference_frames, **attention_kwargs)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, image_context: torch.Tensor | None = None,
                text_scale: float | torch.Tensor = 1.0, image_scale: float | torch.Tensor | None = None,
                num_frames: int = 1) -> torch.Tensor:
        _, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, image_context, text_scale, image_scale, num_frames)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in

    def unet_forward(self, x: torch.Tensor, emb: torch.Tensor, cond: FrameConditions, num_frames: int) -> torch.Tensor:
        return self(x, cond.text, cond.image, cond.text_scale, cond.image_scale, num_frames)


class TemporalConv1d(nn.Module):
    """x + conv_t(x): a (k, 1, 1) convolution over time inside a residual, zero at init (P3D's temporal part)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"a temporal convolution kernel must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x`` ((b t), C, H, W) folded frames; one-frame inputs pass through untouched."""
        if num_frames == 1:
            return x
        video = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        return x + rearrange(self.conv(video), "b c t h w -> (b t) c h w")

    @torch.no_grad()
    def init_identity(self) -> list[str]:
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        return ["conv"]


class PSTResBlock(ResBlock):
    """A ResBlock whose two 2D convolutions are each followed by a temporal convolution of kernel ``k_f`` (PSTConv)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, kernel_size: int,
                 temporal_conv: bool = False, temporal_dropout: float = 0.1):
        super().__init__(channels, emb_channels, dropout, out_channels, temporal_conv, temporal_dropout)
        self.pst_conv_in = TemporalConv1d(out_channels, kernel_size)
        self.pst_conv_out = TemporalConv1d(out_channels, kernel_size)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int, temporal: bool = True) -> torch.Tensor:
        h = self.pst_conv_in(self.in_layers(x), num_frames)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        h = self.skip_connection(x) + self.pst_conv_out(self.out_layers(h), num_frames)
        if self.temporal_conv is not None and temporal:
            h = rearrange(h, "(b t) c h w -> b c t h w", t=num_frames)
            h = rearrange(self.temporal_conv(h), "b c t h w -> (b t) c h w")
        return h


DEFAULT_REFERENCE_FRAMES = {1: 2, 2: 4, 4: 8, 8: 16}
DEFAULT_KERNELS = {1: 3, 2: 5, 4: 7, 8: 9}


@register_layer("spatial_attention", "pst")
def _pst_spatial(config: Any, channels: int, out_channels: int, level: UNetLevel,
                 reference_frames: dict | None = None) -> PyramidSpatialTransformer:
    n_ref = per_factor(reference_frames or DEFAULT_REFERENCE_FRAMES, level, "layer_options.spatial_attention."
                       "reference_frames")
    return PyramidSpatialTransformer(
        channels,
        channels // config.num_head_channels,
        config.num_head_channels,
        config.transformer_depth,
        config.context_dim,
        config.use_linear,
        n_ref,
        image_attention=config.image_cross_attention,
        image_scale=config.image_cross_attention_scale,
        image_scale_learnable=config.image_cross_attention_scale_learnable,
        text_context_len=config.text_context_len,
        truncate_text_context=config.truncate_text_context,
        image_context_dim=config.get("image_context_dim"),
    )


@register_layer("resblock", "pst")
def _pst_resblock(config: Any, channels: int, out_channels: int, level: UNetLevel,
                  kernels: dict | None = None) -> PSTResBlock:
    k = per_factor(kernels or DEFAULT_KERNELS, level, "layer_options.resblock.kernels")
    return PSTResBlock(channels, config.model_channels * 4, config.dropout, out_channels, k, config.temporal_conv,
                       config.temporal_conv_dropout)
