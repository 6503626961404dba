"""The 3D U-Net of VideoCrafter1/2 and DynamiCrafter, config-driven.

Frames are folded into the batch as ``(b t)`` (frames fastest) for every 2D op; temporal transformers and temporal
conv blocks unfold them. One class covers every released configuration; the flags say which parts exist. Blocks are
built by small factory methods so later architectures (pyramid attention, other temporal layers) can swap them.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from .attention import TEXT_CONTEXT_LEN, SpatialTransformer, TemporalTransformer
from .feature_cache import AttentionBroadcast, DeepCache
from .resnet import Downsample, GroupNorm32, ResBlock, Upsample


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine-first sinusoidal embedding of integer timesteps (or fps values)."""
    return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class BlockSequence(nn.Sequential):
    """A U-Net stage: dispatches (emb, context, frame count) to each layer by its kind."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, num_frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
                video_context = None if context is None or layer.text_attention is None else context[::num_frames]
                x = rearrange(layer(x, video_context), "b c t h w -> (b t) c h w")
            else:
                x = layer(x)
        return x


class UNet3DModel(ModelMixin, ConfigMixin):
    """Latent video U-Net with spatial/temporal transformers, timestep + fps/fs embedding and optional image attention.

    Inputs: ``sample`` (b, C_in, t, H, W) (for DynamiCrafter the noisy latent and the image latent concatenated on
    channels), ``timestep`` (b,), ``context`` (b, L, context_dim): text tokens, followed by image tokens when
    ``image_cross_attention`` is on (16 shared tokens, or 16 per frame when L == 77 + 16·t and
    ``per_frame_image_tokens``), and ``fps`` (b,) or an int (defaults to ``default_fps``).

    Two options beyond the official architecture (off by default, so converted checkpoints are unchanged):
    ``pooled_text_condition`` adds an MLP of the mean text token to the timestep embedding, so the caption reaches
    every ResBlock and not only the attention levels; ``temporal_position_embedding`` gives every temporal transformer
    learned absolute frame positions (zero at init), for ``temporal_length`` frames at most;
    ``temporal_text_attention`` adds a cross-attention to the caption in every temporal transformer (zero at init), so
    motion words reach the layers that move things.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        attention_resolutions: tuple[int, ...] = (4, 2, 1),
        num_res_blocks: int = 2,
        channel_mult: tuple[int, ...] = (1, 2, 4, 4),
        dropout: float = 0.0,
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        temporal_transformer_depth: int = 1,
        context_dim: int = 1024,
        use_linear: bool = True,
        temporal_conv: bool = False,
        temporal_conv_dropout: float = 0.1,
        temporal_attention: bool = True,
        use_causal_attention: bool = False,
        addition_attention: bool = True,
        init_attention_heads: int = 8,
        use_relative_position: bool = False,
        temporal_length: int = 16,
        fps_condition: bool = False,
        default_fps: int = 16,
        image_cross_attention: bool = False,
        image_cross_attention_scale: float = 1.0,
        image_cross_attention_scale_learnable: bool = False,
        image_tokens_per_frame: int = 16,
        per_frame_image_tokens: bool = False,
        truncate_text_context: bool = False,
        text_context_len: int = TEXT_CONTEXT_LEN,
        pooled_text_condition: bool = False,
        temporal_position_embedding: bool = False,
        temporal_text_attention: bool = False,
    ):
        super().__init__()
        self.gradient_checkpointing = False
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if fps_condition:
            self.fps_embedding = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if pooled_text_condition:
            self.text_embedding = nn.Sequential(nn.Linear(context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([BlockSequence(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        if addition_attention:
            self.init_attn = self._temporal_transformer(
                model_channels, init_attention_heads, transformer_depth, use_linear=False
            )
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [self._res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += self._attention_layers(ch)
                self.input_blocks.append(BlockSequence(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(BlockSequence(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = BlockSequence(self._res_block(ch, ch), *self._attention_layers(ch), self._res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [self._res_block(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += self._attention_layers(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(BlockSequence(*layers))

        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    # -- block factories (override or replace to build other architectures on the same skeleton) --
    def _res_block(self, ch: int, out_ch: int) -> ResBlock:
        cfg = self.config
        return ResBlock(ch, cfg.model_channels * 4, cfg.dropout, out_ch, cfg.temporal_conv, cfg.temporal_conv_dropout)

    def _heads(self, ch: int) -> tuple[int, int]:
        return ch // self.config.num_head_channels, self.config.num_head_channels

    def _attention_layers(self, ch: int) -> list[nn.Module]:
        cfg = self.config
        heads, dim_head = self._heads(ch)
        layers: list[nn.Module] = [
            SpatialTransformer(
                ch,
                heads,
                dim_head,
                cfg.transformer_depth,
                cfg.context_dim,
                0.0,  # the official transformers are built without dropout
                cfg.use_linear,
                image_attention=cfg.image_cross_attention,
                image_scale=cfg.image_cross_attention_scale,
                image_scale_learnable=cfg.image_cross_attention_scale_learnable,
                text_context_len=cfg.text_context_len,
                truncate_text_context=cfg.truncate_text_context,
            )
        ]
        if cfg.temporal_attention:
            layers.append(self._temporal_transformer(ch, heads, cfg.temporal_transformer_depth, cfg.use_linear))
        return layers

    def _temporal_transformer(self, ch: int, heads: int, depth: int, use_linear: bool) -> TemporalTransformer:
        cfg = self.config
        return TemporalTransformer(
            ch,
            heads,
            cfg.num_head_channels,
            depth,
            0.0,
            use_linear,
            relative_position=cfg.use_relative_position,
            temporal_length=cfg.temporal_length,
            causal=cfg.use_causal_attention,
            position_embedding=cfg.temporal_position_embedding,
            text_context_dim=cfg.context_dim if cfg.temporal_text_attention else None,
            text_context_len=cfg.text_context_len if cfg.image_cross_attention else None,  # text tokens only
        )

    # -- forward --
    def _frame_context(self, context: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
        if context is None:
            return None
        cfg = self.config
        n_text, per_frame = cfg.text_context_len, cfg.image_tokens_per_frame
        if cfg.per_frame_image_tokens and context.shape[1] == n_text + per_frame * num_frames:
            text = context[:, :n_text].repeat_interleave(num_frames, dim=0)
            image = rearrange(context[:, n_text:], "b (t l) c -> (b t) l c", t=num_frames)
            return torch.cat([text, image], dim=1)
        return context.repeat_interleave(num_frames, dim=0)

    def _pooled_text(self, context: torch.Tensor) -> torch.Tensor:
        """Mean of the text tokens (b, context_dim): in a causal text tower every token after the caption has read all
        of it, so the mean is a caption summary; it reaches every ResBlock through the timestep embedding."""
        n_text = self.config.text_context_len if self.config.image_cross_attention else context.shape[1]
        return context[:, :n_text].float().mean(dim=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        context: torch.Tensor | None = None,
        fps: torch.Tensor | int | None = None,
        deep_cache: DeepCache | None = None,
        attention_broadcast: AttentionBroadcast | None = None,
    ) -> torch.Tensor:
        """``deep_cache`` reuses the deep features of an earlier step, ``attention_broadcast`` the attention outputs
        (:mod:`vidiff.models.feature_cache`); None (default) runs the whole network."""
        if attention_broadcast is not None:
            with attention_broadcast.during(self, timestep):
                return self.forward(sample, timestep, context, fps, deep_cache)
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        b, _, t, _, _ = sample.shape
        dtype = self.time_embed[0].weight.dtype
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        emb = self.time_embed(sinusoidal_embedding(timestep, self.config.model_channels).to(dtype))
        if self.config.fps_condition:
            fps = self.config.default_fps if fps is None else fps
            fps = torch.as_tensor(fps, device=sample.device)
            if fps.ndim == 0:
                fps = fps.expand(b)
            emb = emb + self.fps_embedding(sinusoidal_embedding(fps, self.config.model_channels).to(dtype))
        if self.config.pooled_text_condition and context is not None:
            emb = emb + self.text_embedding(self._pooled_text(context).to(dtype))
        emb = emb.repeat_interleave(t, dim=0)
        context = self._frame_context(context, t)
        if context is not None:
            context = context.to(dtype)

        h = rearrange(sample.contiguous(), "b c t h w -> (b t) c h w").to(dtype)
        n_in = len(self.input_blocks)
        reuse = deep_cache is not None and deep_cache.plan(n_in, (tuple(sample.shape), dtype))
        # the output block that takes the skip of input block depth-1 is the first one a cached call runs
        resume = n_in - deep_cache.depth if deep_cache is not None else None
        skips = []
        for i, block in enumerate(self.input_blocks[: deep_cache.depth] if reuse else self.input_blocks):
            h = self._run(block, h, emb, context, t)
            if i == 0 and self.config.addition_attention:
                video_context = None if context is None else context[::t]
                h = rearrange(self.init_attn(rearrange(h, "(b t) c h w -> b c t h w", t=t), video_context),
                              "b c t h w -> (b t) c h w")
            skips.append(h)
        if reuse:
            h = deep_cache.feature
        else:
            h = self._run(self.middle_block, h, emb, context, t)
        for j, block in enumerate(self.output_blocks):
            if reuse and j < resume:
                continue
            if deep_cache is not None and not reuse and j == resume:
                deep_cache.store(h)
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context, t)
        h = self.out(h).to(sample.dtype)
        return rearrange(h, "(b t) c h w -> b c t h w", t=t)

    def _run(self, block: BlockSequence, h, emb, context, num_frames: int) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, emb, context, num_frames, use_reentrant=False)
        return block(h, emb, context, num_frames)
