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

from .attention import TEXT_CONTEXT_LEN
from .conditions import FrameConditions, UNetLevel
from .feature_cache import AttentionBroadcast, DeepCache
from .layers import build_layer, check_layer_config, lvdm_temporal_transformer
from .resnet import Downsample, GroupNorm32, Upsample


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine-first sinusoidal embedding of integer timesteps (or fps values)."""
    return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class BlockSequence(nn.Sequential):
    """A U-Net stage: calls each layer through the layer protocol (:mod:`vidiff.models.conditions`)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: FrameConditions, num_frames: int) -> torch.Tensor:
        for layer in self:
            x = layer.unet_forward(x, emb, cond, num_frames) if hasattr(layer, "unet_forward") else layer(x)
        return x


class UNet3DModel(ModelMixin, ConfigMixin):
    """Latent video U-Net with spatial/temporal transformers, timestep + fps/fs embedding and optional image attention.

    Each condition is its own argument of :meth:`forward` (see there): text tokens, image tokens (shared by the
    frames or one set per frame), a latent concatenated on channels (DynamiCrafter's image latent), fps or frame stride,
    and the per-call weights of the text and image streams of the dual cross-attention.

    Two options beyond the official architecture (off by default, so converted checkpoints are unchanged):
    ``pooled_text_condition`` adds an MLP of the mean text token to the timestep embedding, so the caption reaches
    every ResBlock and not only the attention levels; ``temporal_position_embedding`` gives every temporal transformer
    learned absolute frame positions (zero at init), for ``temporal_length`` frames at most;
    ``temporal_text_attention`` adds a cross-attention to the caption in every temporal transformer (zero at init), so
    motion words reach the layers that move things; ``image_frames_spatial_only`` makes every temporal layer pass its
    input through on one-frame inputs, so joint image batches train the spatial layers only (UniVid §IV-A).
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
        image_frames_spatial_only: bool = False,
        image_context_dim: int | None = None,
        layer_types: dict[str, str] | None = None,
        layer_options: dict[str, dict] | None = None,
    ):
        super().__init__()
        check_layer_config(layer_types, layer_options)
        self.gradient_checkpointing = False
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if fps_condition:
            self.fps_embedding = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if pooled_text_condition:
            self.text_embedding = nn.Sequential(nn.Linear(context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([BlockSequence(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        if addition_attention:
            self.init_attn = lvdm_temporal_transformer(self.config, model_channels, init_attention_heads,
                                                       transformer_depth, use_linear=False)
        levels = len(channel_mult)
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            where = UNetLevel(level, levels, "down")
            for _ in range(num_res_blocks):
                layers = [self._res_block(ch, mult * model_channels, where)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += self._attention_layers(ch, where)
                self.input_blocks.append(BlockSequence(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(BlockSequence(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        middle = UNetLevel(levels - 1, levels, "middle")
        self.middle_block = BlockSequence(self._res_block(ch, ch, middle), *self._attention_layers(ch, middle),
                                          self._res_block(ch, ch, middle))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            where = UNetLevel(level, levels, "up")
            for i in range(num_res_blocks + 1):
                layers = [self._res_block(ch + skip_channels.pop(), mult * model_channels, where)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += self._attention_layers(ch, where)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(BlockSequence(*layers))

        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    # -- block factories: the layer types of the config (vidiff.models.layers), built with their level --
    def _res_block(self, ch: int, out_ch: int, level: UNetLevel) -> nn.Module:
        return build_layer("resblock", self.config, ch, out_ch, level)

    def _attention_layers(self, ch: int, level: UNetLevel) -> list[nn.Module]:
        layers = [build_layer("spatial_attention", self.config, ch, ch, level)]
        if self.config.temporal_attention:
            layers.append(build_layer("temporal_attention", self.config, ch, ch, level))
        return layers

    def init_identity_layers(self) -> list[str]:
        """Make every temporal layer, the fps / pooled-text embeddings and the image stream contribute nothing (zero
        output projections inside residuals), as when they are added to a trained model; returns the names zeroed.
        See :mod:`vidiff.models.inflation`."""
        from .inflation import init_identity_layers

        return init_identity_layers(self)

    # -- forward --
    def split_context(
        self, context: torch.Tensor, num_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The official single-``context`` layout -> (text tokens, image tokens or None), for converted callers.

        The official code appends the image tokens to the text tokens: ``text_context_len`` text tokens, then either
        ``image_tokens_per_frame`` tokens per frame (``per_frame_image_tokens``, when the count matches the frame
        count) or one shared set.
        """
        cfg = self.config
        if not cfg.image_cross_attention:
            return context, None
        n_text, per_frame = cfg.text_context_len, cfg.image_tokens_per_frame
        text, image = context[:, :n_text], context[:, n_text:]
        if image.shape[1] == 0:
            return text, None
        if cfg.per_frame_image_tokens and image.shape[1] == per_frame * num_frames:
            image = rearrange(image, "b (t l) c -> b t l c", t=num_frames)
        return text, image

    def _conditions(
        self,
        b: int,
        t: int,
        text_context: torch.Tensor | None,
        image_context: torch.Tensor | None,
        text_scale: float | torch.Tensor,
        image_scale: float | torch.Tensor | None,
        dtype: torch.dtype,
    ) -> FrameConditions:
        cfg = self.config
        if image_context is not None and not cfg.image_cross_attention:
            raise ValueError("image_context was given but this U-Net has no image cross-attention")
        if text_context is not None and text_context.ndim != 3:
            raise ValueError(f"text_context must be (batch, tokens, dim), got shape {tuple(text_context.shape)}")
        if (cfg.image_cross_attention and image_context is None and text_context is not None
                and text_context.shape[1] > cfg.text_context_len and not cfg.truncate_text_context):
            raise ValueError(f"text_context has {text_context.shape[1]} tokens, more than this model's text length "
                             f"{cfg.text_context_len}: pass image tokens as image_context (or the official combined "
                             "layout as context=)")
        text = None if text_context is None else text_context.to(dtype).repeat_interleave(t, dim=0)
        image = None
        if image_context is not None:
            if image_context.ndim == 4:
                if image_context.shape[1] != t:
                    raise ValueError(f"per-frame image_context has {image_context.shape[1]} frames, the sample {t}")
                image = rearrange(image_context.to(dtype), "b t l c -> (b t) l c")
            elif image_context.ndim == 3:
                image = image_context.to(dtype).repeat_interleave(t, dim=0)
            else:
                raise ValueError("image_context must be (batch, tokens, dim) shared by the frames or (batch, frames, "
                                 f"tokens, dim) per frame, got shape {tuple(image_context.shape)}")
        video_text = None
        if text_context is not None and cfg.temporal_text_attention:
            video_text = text_context.to(dtype)
        return FrameConditions(text, image, _per_frame_rows(text_scale, b, t, "text_scale"),
                               _per_frame_rows(image_scale, b, t, "image_scale"), video_text,
                               _per_frame_rows(text_scale, b, 1, "text_scale"),
                               temporal=not (t == 1 and self.config.image_frames_spatial_only))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        text_context: torch.Tensor | None = None,
        *,
        image_context: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
        fps: torch.Tensor | int | None = None,
        frame_stride: torch.Tensor | int | None = None,
        text_scale: float | torch.Tensor = 1.0,
        image_scale: float | torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        deep_cache: DeepCache | None = None,
        attention_broadcast: AttentionBroadcast | None = None,
    ) -> torch.Tensor:
        """One denoising evaluation.

        * ``sample`` (b, c, t, H, W) noisy latents; ``timestep`` (b,) or an int.
        * ``text_context`` (b, L, context_dim) caption tokens.
        * ``image_context`` image tokens for the image stream: (b, L_img, context_dim) shared by every frame, or
          (b, t, L_img, context_dim) one set per frame (DynamiCrafter).
        * ``concat`` latents concatenated after ``sample`` on channels: (b, c', t, H, W), or (b, c', H, W) for every
          frame (DynamiCrafter's image latent); ``sample`` + ``concat`` channels must be ``in_channels``.
        * ``fps`` or ``frame_stride`` (b,) or an int: the value of the fps embedding (VideoCrafter and DynamiCrafter
          512/1024 read frames per second, DynamiCrafter 256 a frame stride; the same input); ``default_fps`` if
          neither.
        * ``text_scale`` / ``image_scale``: λ_t and λ_v of the cross-attention streams (UniVid Eq. 7), a float or one
          per batch row; ``image_scale`` None uses each layer's configured weight.
        * ``context``: the official combined layout (text tokens then image tokens), split by :meth:`split_context`;
          give it or ``text_context``/``image_context``.
        * ``deep_cache`` reuses the deep features of an earlier step, ``attention_broadcast`` the attention outputs
          (:mod:`vidiff.models.feature_cache`); None (default) runs the whole network.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        b, _, t, _, _ = sample.shape
        if context is not None:
            if text_context is not None or image_context is not None:
                raise ValueError("give context (the combined layout) or text_context/image_context, not both")
            text_context, image_context = self.split_context(context, t)
        if frame_stride is not None:
            if fps is not None:
                raise ValueError("give fps or frame_stride, not both (they feed the same embedding)")
            fps = frame_stride
        if concat is not None:
            if concat.ndim == 4:
                concat = concat.unsqueeze(2).expand(-1, -1, t, -1, -1)
            if concat.ndim != 5 or concat.shape[0] != b or concat.shape[2:] != sample.shape[2:]:
                raise ValueError(f"concat must be (batch, channels, [frames,] height, width) matching the sample "
                                 f"{tuple(sample.shape)}, got {tuple(concat.shape)}")
            sample = torch.cat([sample, concat.to(sample.dtype)], dim=1)
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(f"this U-Net takes {self.config.in_channels} input channels, got {sample.shape[1]}"
                             + ("" if concat is None else " (sample + concat)"))
        dtype = self.time_embed[0].weight.dtype
        cond = self._conditions(b, t, text_context, image_context, text_scale, image_scale, dtype)
        if attention_broadcast is not None:
            with attention_broadcast.during(self, timestep):
                return self._forward(sample, timestep, fps, cond, text_context, deep_cache)
        return self._forward(sample, timestep, fps, cond, text_context, deep_cache)

    def _forward(self, sample, timestep, fps, cond: FrameConditions, text_context, deep_cache) -> torch.Tensor:
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
        if self.config.pooled_text_condition and text_context is not None:
            emb = emb + self.text_embedding(text_context.float().mean(dim=1).to(dtype))
        emb = emb.repeat_interleave(t, dim=0)

        h = rearrange(sample.contiguous(), "b c t h w -> (b t) c h w").to(dtype)
        n_in = len(self.input_blocks)
        reuse = deep_cache is not None and deep_cache.plan(n_in, (tuple(sample.shape), dtype))
        # the output block that takes the skip of input block depth-1 is the first one a cached call runs
        resume = n_in - deep_cache.depth if deep_cache is not None else None
        skips = []
        for i, block in enumerate(self.input_blocks[: deep_cache.depth] if reuse else self.input_blocks):
            h = self._run(block, h, emb, cond, t)
            if i == 0 and self.config.addition_attention and cond.temporal:
                h = rearrange(self.init_attn(rearrange(h, "(b t) c h w -> b c t h w", t=t), cond.video_text,
                                             cond.video_text_scale),
                              "b c t h w -> (b t) c h w")
            skips.append(h)
        if reuse:
            h = deep_cache.feature
        else:
            h = self._run(self.middle_block, h, emb, cond, t)
        for j, block in enumerate(self.output_blocks):
            if reuse and j < resume:
                continue
            if deep_cache is not None and not reuse and j == resume:
                deep_cache.store(h)
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, cond, t)
        h = self.out(h).to(sample.dtype)
        return rearrange(h, "(b t) c h w -> b c t h w", t=t)

    def _run(self, block: BlockSequence, h, emb, cond: FrameConditions, num_frames: int) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, emb, cond, num_frames, use_reentrant=False)
        return block(h, emb, cond, num_frames)


def _per_frame_rows(weight: float | torch.Tensor | None, b: int, t: int, name: str) -> float | torch.Tensor | None:
    """A per-call stream weight: a number as is, a (b,) tensor repeated for each frame row ((b t),)."""
    if weight is None or isinstance(weight, float | int) and not isinstance(weight, bool):
        return weight
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{name} must be a number or a tensor with one value per batch row, got {weight!r}")
    if weight.ndim == 0:
        return weight
    if weight.shape != (b,):
        raise ValueError(f"{name} needs one value per batch row ({b},), got shape {tuple(weight.shape)}")
    return weight.repeat_interleave(t)
