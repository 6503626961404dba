"""The Perceiver "Resampler" that projects CLIP image tokens into the UNet's cross-attention space (i2v models).

DynamiCrafter calls it the query transformer / projection network P: a few learnable query tokens ("latents") attend to
the CLIP ViT tokens and to themselves, then go through a feed-forward, ``depth`` times. Two official variants exist and
share one architecture and key layout:

* VideoCrafter i2v (``ip_resampler.Resampler``): ``num_queries`` latents, one token set shared by every frame.
* DynamiCrafter (``resampler.Resampler``): ``num_queries`` latents *per frame* × ``video_length``, output in frame-major
  order ``(b, (t q), c)``. All latents attend jointly, so the per-frame split only tells the UNet how to slice them.

Module and parameter names follow the official code, so a checkpoint converts with no renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.models.persistence import SafetensorsPersistence


class PerceiverAttention(nn.Module):
    """Latents query [tokens ; latents]; the official scales q and k by dim_head^-1/4 each (= the usual 1/sqrt(d))."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n_q, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for t in (q, k, v))
        # SDPA's default scale 1/sqrt(dim_head) equals the official (q·d^-1/4)(k·d^-1/4)ᵀ; its softmax accumulates in
        # float32 like the official ``softmax(weight.float())`` (measured: ≤ 1e-6 apart in fp32, see tests).
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n_q, self.heads * self.dim_head))


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """LayerNorm → Linear → GELU → Linear without biases; Sequential indices 0, 1, 3 match the official keys."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class Resampler(SafetensorsPersistence, nn.Module):
    """CLIP tokens (b, n, embedding_dim) -> image context tokens (b, num_queries · (video_length or 1), output_dim).

    ``video_length=None`` is the VideoCrafter variant (shared tokens); an int is DynamiCrafter's per-frame variant.
    Defaults are the released configuration (both variants): 1024 wide, 4 layers, 12 heads of 64, 1280 → 1024.
    """

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        num_queries: int = 16,
        embedding_dim: int = 1280,
        output_dim: int = 1024,
        ff_mult: float = 4,
        video_length: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("dim_head", dim_head), ("heads", heads),
                            ("num_queries", num_queries), ("embedding_dim", embedding_dim), ("output_dim", output_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if video_length is not None and (not isinstance(video_length, int) or isinstance(video_length, bool)
                                         or video_length < 1):
            raise ValueError(f"video_length must be None (VideoCrafter variant) or a positive int, got {video_length!r}")
        if not isinstance(ff_mult, (int, float)) or isinstance(ff_mult, bool) or int(dim * ff_mult) < 1:
            raise ValueError(f"ff_mult must be a positive number, got {ff_mult!r}")
        self.config = {
            "dim": dim,
            "depth": depth,
            "dim_head": dim_head,
            "heads": heads,
            "num_queries": num_queries,
            "embedding_dim": embedding_dim,
            "output_dim": output_dim,
            "ff_mult": ff_mult,
            "video_length": video_length,
        }
        total = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, total, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    @property
    def per_frame(self) -> bool:
        """True for the DynamiCrafter variant, whose output holds ``num_queries`` tokens for each frame."""
        return self.config["video_length"] is not None

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.latents.dtype

    @property
    def device(self) -> torch.device:
        return self.latents.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.config["embedding_dim"]:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected image tokens (batch, n, {self.config['embedding_dim']}), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"image tokens must be floating point, got {x.dtype}")
        x = self.proj_in(x.to(device=self.device, dtype=self.dtype))
        latents = self.latents.expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))

    def image_context(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """CLIP tokens -> the U-Net's ``image_context``: (b, video_length, num_queries, output_dim), one set per frame,
        for the DynamiCrafter variant; (b, tokens, output_dim) shared by the frames for VideoCrafter's, and, as in the
        official U-Net, for a clip of ``num_frames`` other than ``video_length`` (every frame then sees all tokens)."""
        tokens = self(x)
        if self.per_frame and num_frames in (None, self.config["video_length"]):
            return tokens.unflatten(1, (self.config["video_length"], self.config["num_queries"]))
        return tokens
