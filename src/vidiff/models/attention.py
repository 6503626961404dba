"""Attention layers of the LVDM-family U-Nets: spatial (per frame) and temporal (per pixel) transformers.

The official VideoCrafter / DynamiCrafter semantics are kept exactly (see ``shared/docs/official-lvdm-architecture.md``
§6.6–6.7); the kernels are chosen for speed: ``scaled_dot_product_attention`` where it wins, a plain batched matmul
for short sequences (16-frame temporal attention) where SDPA's overhead dominates on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from einops import rearrange
from torch import nn

from .conditions import FrameConditions

TEXT_CONTEXT_LEN = 77

# On CPU in bf16, short key sequences (16-frame temporal attention, 77-token text cross-attention) run faster as an
# explicit matmul-softmax-matmul than through SDPA, by 2-4x in backward; in fp32 and for long sequences SDPA wins.
# Measured with benchmarks/attention_kernels.py (see benchmarks/README.md).
CPU_BF16_MATH_MAX_KEYS = 128


def _use_sdpa(q: torch.Tensor, num_keys: int) -> bool:
    return q.device.type != "cpu" or q.dtype != torch.bfloat16 or num_keys > CPU_BF16_MATH_MAX_KEYS


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = False) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over (batch, heads, tokens, dim) tensors, with the faster kernel for the shape."""
    if _use_sdpa(q, k.shape[-2]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=causal)
    sim = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        n, m = sim.shape[-2:]
        mask = torch.ones(n, m, dtype=torch.bool, device=sim.device).tril()
        sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
    return torch.matmul(sim.softmax(dim=-1), v)


def _row_weight(weight: float | torch.Tensor, out: torch.Tensor) -> float | torch.Tensor:
    """A stream weight for (rows, heads, n, d) attention output: a float as is, a (rows,) tensor per row."""
    if not isinstance(weight, torch.Tensor) or weight.ndim == 0:
        return weight
    if weight.shape != (out.shape[0],):
        raise ValueError(f"a per-row stream weight needs shape ({out.shape[0]},), got {tuple(weight.shape)}")
    return weight.to(device=out.device, dtype=out.dtype).view(-1, 1, 1, 1)


class RelativePosition(nn.Module):
    """Learned relative-position table shared across heads (VideoCrafter1 temporal attention)."""

    def __init__(self, dim_head: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.embeddings_table = nn.Parameter(torch.zeros(2 * max_distance + 1, dim_head))

    def forward(self, len_q: int, len_k: int) -> torch.Tensor:
        device = self.embeddings_table.device
        dist = torch.arange(len_k, device=device)[None, :] - torch.arange(len_q, device=device)[:, None]
        index = dist.clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.embeddings_table[index]  # (len_q, len_k, dim_head)


class Attention(nn.Module):
    """Multi-head (cross-)attention with the official key names.

    ``image_attention`` adds the decoupled image branch of VideoCrafter-I2V / DynamiCrafter (and UniVid's dual stream,
    Eq. 7): text and image tokens arrive as separate arguments, each gets its own softmax, and the two results are
    summed with weights λ_t (``text_scale``, 1 by default) and λ_v (``image_scale``: this layer's configured λ unless the
    call gives one; times ``tanh(alpha) + 1`` when learnable). Both weights are per call: a float, or one value per
    batch row (a tensor of shape (rows,)).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        relative_position: bool = False,
        temporal_length: int | None = None,
        causal: bool = False,
        image_attention: bool = False,
        image_scale: float = 1.0,
        image_scale_learnable: bool = False,
        text_context_len: int = TEXT_CONTEXT_LEN,
        truncate_text_context: bool = False,
        image_context_dim: int | None = None,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head**-0.5
        self.causal = causal
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.text_context_len = text_context_len
        self.truncate_text_context = truncate_text_context
        self.relative_position = relative_position
        if relative_position:
            if not temporal_length:
                raise ValueError("relative_position needs temporal_length")
            self.relative_position_k = RelativePosition(dim_head, temporal_length)
            self.relative_position_v = RelativePosition(dim_head, temporal_length)
        self.image_attention = image_attention
        self.image_scale = image_scale
        if image_attention:
            # UniVid's image stream reads the image encoder's patch tokens directly, at their own width
            image_dim = context_dim if image_context_dim is None else image_context_dim
            self.to_k_ip = nn.Linear(image_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(image_dim, inner, bias=False)
            if image_scale_learnable:
                self.alpha = nn.Parameter(torch.tensor(0.0))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b n (h d) -> b h n d", h=self.heads)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
        text_scale: float | torch.Tensor = 1.0,
        image_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (rows, n, C) attends to ``context`` (rows, L, C_ctx) (itself when None) and, in an image-attention
        layer, to ``image_context`` (rows, L_img, C_ctx); ``text_scale``/``image_scale`` weight the two streams."""
        if context is None:
            context = x
        elif self.truncate_text_context:
            context = context[:, : self.text_context_len]

        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(context)), self._heads(self.to_v(context))
        if self.relative_position:
            out = self._relative_attention(q, k, v)
        else:
            out = _attend(q, k, v, self.scale, self.causal)
        if not (isinstance(text_scale, float | int) and text_scale == 1):
            out = out * _row_weight(text_scale, out)

        if self.image_attention and image_context is not None and image_context.shape[1] > 0:
            k_ip, v_ip = self._heads(self.to_k_ip(image_context)), self._heads(self.to_v_ip(image_context))
            out = out + _row_weight(self.image_weight(image_scale), out) * _attend(q, k_ip, v_ip, self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    @torch.no_grad()
    def init_identity(self) -> list[str]:
        """An image stream added to a trained text model starts silent: its value projection is zero."""
        if not self.image_attention:
            return []
        nn.init.zeros_(self.to_v_ip.weight)
        return ["to_v_ip"]

    def image_weight(self, scale: float | torch.Tensor | None = None) -> torch.Tensor | float:
        """λ_v: the call's ``scale`` (else the configured one), times ``tanh(alpha) + 1`` when learnable."""
        scale = self.image_scale if scale is None else scale
        if hasattr(self, "alpha"):
            return scale * (torch.tanh(self.alpha) + 1)
        return scale

    def _relative_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, m = q.shape[-2], k.shape[-2]
        k_rel = self.relative_position_k(n, m)  # (n, m, d)
        sim = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        sim = sim + torch.einsum("bhnd,nmd->bhnm", q, k_rel) * self.scale
        if self.causal:
            mask = torch.ones(n, m, dtype=torch.bool, device=sim.device).tril()
            sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1)
        return torch.matmul(attn, v) + torch.einsum("bhnm,nmd->bhnd", attn, self.relative_position_v(n, m))


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, (cross-)attention, GEGLU feed-forward; three residuals."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        self_attention_only: bool = False,
        **attention_kwargs,
    ):
        super().__init__()
        image_kwargs = {k: attention_kwargs.pop(k) for k in list(attention_kwargs) if k.startswith("image_")}
        truncate = attention_kwargs.pop("truncate_text_context", False)
        self.self_attention_only = self_attention_only
        self.attn1 = Attention(dim, None, heads, dim_head, dropout, **attention_kwargs)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="geglu")
        self.attn2 = Attention(
            dim,
            None if self_attention_only else context_dim,
            heads,
            dim_head,
            dropout,
            truncate_text_context=truncate,
            **attention_kwargs,
            **image_kwargs,
        )
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
        text_scale: float | torch.Tensor = 1.0,
        image_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.self_attention_only:
            x = self.attn2(self.norm2(x)) + x
        else:
            x = self.attn2(self.norm2(x), context, image_context, text_scale, image_scale) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Attention within each frame; input and output are folded frames ((b t), C, H, W)."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        use_linear: bool = True,
        **attention_kwargs,
    ):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, **attention_kwargs) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
        text_scale: float | torch.Tensor = 1.0,
        image_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ((b t), C, H, W) folded frames; the contexts and per-row weights have one row per frame."""
        _, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, image_context, text_scale, image_scale)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in

    def unet_forward(self, x: torch.Tensor, emb: torch.Tensor, cond: FrameConditions, num_frames: int) -> torch.Tensor:
        """The layer protocol of :mod:`vidiff.models.conditions`: per-frame text and image tokens and weights."""
        return self(x, cond.text, cond.image, cond.text_scale, cond.image_scale)


class TemporalTransformer(nn.Module):
    """Attention across frames at every pixel; input and output are videos (b, C, t, H, W).

    The GroupNorm sees the whole 5D tensor (statistics over time too), as in the official code.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = True,
        relative_position: bool = False,
        temporal_length: int | None = None,
        causal: bool = False,
        position_embedding: bool = False,
        text_context_dim: int | None = None,
        text_context_len: int | None = None,
    ):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv1d(channels, inner, 1)
        # cross-attention from every pixel's frame sequence to the caption (zero output at init): the official
        # temporal layers are self-attention only, so a motion word reaches them only through the spatial layers
        if text_context_dim is not None:
            self.text_norm = nn.LayerNorm(inner)
            self.text_attention = Attention(
                inner,
                text_context_dim,
                heads,
                dim_head,
                dropout,
                text_context_len=text_context_len or TEXT_CONTEXT_LEN,
                truncate_text_context=text_context_len is not None,
            )
        else:
            self.text_norm = self.text_attention = None
        # learned absolute frame positions (AnimateDiff-style), zero at init: relative positions alone make the layer
        # shift-equivariant in time, so at high noise every frame gets the same prediction and a motion word cannot
        # say where the object is in frame 0 versus frame 15
        if position_embedding:
            if not temporal_length:
                raise ValueError("a temporal position embedding needs temporal_length")
            self.position_embedding = nn.Parameter(torch.zeros(temporal_length, inner))
        else:
            self.position_embedding = None
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner,
                heads,
                dim_head,
                dropout=dropout,
                self_attention_only=True,
                relative_position=relative_position,
                temporal_length=temporal_length,
                causal=causal,
            )
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv1d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                text_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``context`` (b, L, C): caption tokens for the text cross-attention (ignored without it), weighted by
        ``text_scale`` (λ_t: a float or one per video, (b,)), so a call with λ_t = 0 does not read the text here either."""
        b, _, t, h, w = x.shape
        x_in = x
        x = rearrange(self.norm(x), "b c t h w -> (b h w) c t")
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "n c t -> n t c")
        if self.use_linear:
            x = self.proj_in(x)
        if self.position_embedding is not None:
            if t > self.position_embedding.shape[0]:
                raise ValueError(f"this temporal layer has positions for {self.position_embedding.shape[0]} frames, "
                                 f"got {t}: generate longer videos in windows of at most that many frames")
            x = x + self.position_embedding[:t].to(x.dtype)
        if self.text_attention is not None and context is not None:
            if context.shape[0] != b:
                raise ValueError(f"temporal text attention needs one caption per video ({b}), got {context.shape[0]}")
            if isinstance(text_scale, torch.Tensor) and text_scale.ndim == 1:
                text_scale = text_scale.repeat_interleave(h * w)
            x = x + self.text_attention(self.text_norm(x), context.to(x.dtype).repeat_interleave(h * w, dim=0),
                                        text_scale=text_scale)
        for block in self.transformer_blocks:
            x = block(x)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "n t c -> n c t")
        if not self.use_linear:
            x = self.proj_out(x)
        # x_in first: the sum takes the input's memory layout, so an identity-initialised layer changes nothing
        # downstream (the next convolution sees the strides it saw without this layer: tests/test_inflation.py)
        return x_in + rearrange(x, "(b h w) c t -> b c t h w", b=b, h=h, w=w)

    def unet_forward(self, x: torch.Tensor, emb: torch.Tensor, cond: FrameConditions, num_frames: int) -> torch.Tensor:
        """The layer protocol of :mod:`vidiff.models.conditions` (folded frames in and out)."""
        if not cond.temporal:
            return x
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        return rearrange(self(x, cond.video_text, cond.video_text_scale), "b c t h w -> (b t) c h w")

    @torch.no_grad()
    def init_identity(self) -> list[str]:
        """Zero the output projection (and the new absolute positions and text attention): inside the residual, the
        layer then passes its input through."""
        zeroed = ["proj_out"]
        for p in self.proj_out.parameters():
            nn.init.zeros_(p)
        if self.position_embedding is not None:
            nn.init.zeros_(self.position_embedding)
            zeroed.append("position_embedding")
        if self.text_attention is not None:
            for p in self.text_attention.to_out.parameters():
                nn.init.zeros_(p)
            zeroed.append("text_attention.to_out")
        return zeroed
