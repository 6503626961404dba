"""VideoGen's video decoder (§3.4): the image autoencoder's decoder made temporal.

Decoding each frame on its own lets independent decoder errors flicker from frame to frame. VideoGen keeps the image
autoencoder's encoder (frozen) and latent space, and gives its decoder a temporal convolution after every 2D
convolution stage (after ``conv_in``, every ResNet block and upsampler, and ``conv_out``) and a temporal attention after
the middle block's spatial attention (design doc A1, reading 9). Every temporal layer is a residual whose output
projection starts at zero, so :meth:`TemporalDecoderAutoencoderKL.from_image_autoencoder` gives exactly the image
decoder, and training on latents of degraded frames (:mod:`vidiff.data.degrade`) teaches it to reconstruct the clean
video from what a diffusion model's samples look like.

The class is an :class:`~vidiff.models.autoencoder.LDMAutoencoderKL` (same encoder, latent space and config keys), so
it can be the ``vae`` of any vidiff model folder: :func:`vidiff.models.autoencoder.decode_video` hands it whole clips
in temporal chunks of ``decode_chunk_frames``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from einops import rearrange
from torch import nn

from .attention import TemporalTransformer
from .autoencoder import SD_SCALING_FACTOR, LDMAutoencoderKL
from .univid import TemporalConv1d

__all__ = ["TemporalDecoderAutoencoderKL"]


class TemporalDecoderAutoencoderKL(LDMAutoencoderKL):
    """An :class:`LDMAutoencoderKL` whose decoder has temporal layers; ``decode(z, num_frames=t)`` decodes folded
    ``(b t)`` frames as videos of ``t`` frames (``num_frames=1``: per frame, exactly the image decoder's 2D path).

    ``temporal_kernel_size``: kernel of every temporal convolution (odd); ``temporal_attention_head_dim``: head width of
    the middle block's temporal attention (heads = channels / head_dim); ``temporal_length``: most frames its relative
    positions cover; ``decode_chunk_frames``: frames per decoder call in :func:`~vidiff.models.autoencoder.decode_video`
    (the decoder's temporal context; None: ``temporal_length``).
    """

    # The parent's arguments are repeated: diffusers' register_to_config records a config from this signature alone, so
    # the saved folder must list every key for from_pretrained (and the model folder's vae/) to rebuild it.
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 512,
        scaling_factor: float = SD_SCALING_FACTOR,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        encoder_base_channels: int | None = None,
        embed_dim: int | None = None,
        temporal_kernel_size: int = 3,
        temporal_attention_head_dim: int = 32,
        temporal_length: int = 16,
        decode_chunk_frames: int | None = None,
    ) -> None:
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            act_fn=act_fn, latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
            scaling_factor=scaling_factor, shift_factor=shift_factor, latents_mean=latents_mean,
            latents_std=latents_std, force_upcast=force_upcast, use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv, mid_block_add_attention=mid_block_add_attention,
            encoder_base_channels=encoder_base_channels, embed_dim=embed_dim,
        )
        if decode_chunk_frames is not None and not 1 <= decode_chunk_frames <= temporal_length:
            raise ValueError(f"decode_chunk_frames must be in [1, temporal_length={temporal_length}], "
                             f"got {decode_chunk_frames}")
        dec = self.decoder
        k = temporal_kernel_size
        mid = block_out_channels[-1]
        self.temporal_conv_in = TemporalConv1d(mid, k)
        self.temporal_mid = nn.ModuleList(TemporalConv1d(mid, k) for _ in dec.mid_block.resnets)
        heads = max(1, mid // temporal_attention_head_dim)
        self.temporal_mid_attention = TemporalTransformer(mid, heads, mid // heads, relative_position=True,
                                                          temporal_length=temporal_length)
        self.temporal_up = nn.ModuleList(
            nn.ModuleList(TemporalConv1d(r.conv2.out_channels, k) for r in block.resnets) for block in dec.up_blocks
        )
        self.temporal_upsample = nn.ModuleList(
            TemporalConv1d(block.upsamplers[0].conv.out_channels, k) if block.upsamplers else nn.Identity()
            for block in dec.up_blocks
        )
        self.temporal_conv_out = TemporalConv1d(out_channels, k)
        self.init_temporal_identity()

    @property
    def decode_window(self) -> int:
        """Frames per decoder call when decoding a clip (its temporal context)."""
        return self.config.decode_chunk_frames or self.config.temporal_length

    def temporal_modules(self) -> list[nn.Module]:
        """The layers this class adds to the image autoencoder (what a decoder fine-tune may train alone)."""
        out = [self.temporal_conv_in, *self.temporal_mid, self.temporal_mid_attention, self.temporal_conv_out]
        out += [m for block in self.temporal_up for m in block]
        out += [m for m in self.temporal_upsample if isinstance(m, TemporalConv1d)]
        return out

    @torch.no_grad()
    def init_temporal_identity(self) -> None:
        """Zero every temporal layer's output: the decoder is then the image decoder."""
        for m in self.temporal_modules():
            m.init_identity()

    @classmethod
    def from_image_autoencoder(cls, vae: LDMAutoencoderKL, **temporal: int) -> TemporalDecoderAutoencoderKL:
        """The image autoencoder's weights, with identity temporal layers (``temporal``: the options of the class)."""
        allowed = {"temporal_kernel_size", "temporal_attention_head_dim", "temporal_length", "decode_chunk_frames"}
        unknown = set(temporal) - allowed
        if unknown:
            raise TypeError(f"unknown temporal option(s) {sorted(unknown)}; options: {sorted(allowed)}")
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        model = cls.from_config({**config, **temporal})
        missing, unexpected = model.load_state_dict(vae.state_dict(), strict=False)
        if unexpected or any(not n.startswith("temporal_") for n in missing):
            raise ValueError(f"the image autoencoder does not fit this layout (unexpected {unexpected[:3]}, missing "
                             f"{[n for n in missing if not n.startswith('temporal_')][:3]})")
        param = next(vae.parameters())
        model = model.to(param.device)
        return model if param.dtype == torch.float32 else model.to(param.dtype)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None,
               num_frames: int = 1) -> DecoderOutput | tuple[torch.Tensor]:
        """Unscaled latents ``((b t), c, h, w)`` -> frames ``((b t), C, H, W)``; ``num_frames`` = t."""
        if num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(f"{z.shape[0]} latents cannot be split into videos of {num_frames} frames")
        if num_frames > self.config.temporal_length:
            raise ValueError(f"this decoder's temporal layers cover {self.config.temporal_length} frames, got "
                             f"{num_frames}: decode in chunks (vidiff.models.autoencoder.decode_video)")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        sample = self._decode_frames(z, num_frames)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def _decode_frames(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """diffusers' Decoder.forward, step by step, with a temporal layer after each 2D stage."""
        dec = self.decoder
        h = self.temporal_conv_in(dec.conv_in(z), t)
        mid = dec.mid_block
        h = self.temporal_mid[0](mid.resnets[0](h, None), t)
        for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
            if attn is not None:
                h = attn(h, temb=None)
            if i == 0 and t > 1:  # the temporal attention follows the middle block's (first) spatial attention
                video = rearrange(h, "(b t) c x y -> b c t x y", t=t)
                h = rearrange(self.temporal_mid_attention(video), "b c t x y -> (b t) c x y")
            h = self.temporal_mid[i + 1](resnet(h, None), t)
        for block, convs, up in zip(dec.up_blocks, self.temporal_up, self.temporal_upsample):
            for resnet, conv in zip(block.resnets, convs):
                h = conv(resnet(h, temb=None), t)
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    h = upsampler(h)
                h = up(h, t)
        h = dec.conv_act(dec.conv_norm_out(h))
        return self.temporal_conv_out(dec.conv_out(h), t)
