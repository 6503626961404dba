"""The LVDM first-stage KL autoencoder (Stable Diffusion's KL-f8) on diffusers' AutoencoderKL, and video helpers.

diffusers' AutoencoderKL already has the official numerics (GroupNorm eps 1e-6, right/bottom zero padding before the
stride-2 convs, single-head mid attention scaled by C^-1/2, logvar clamped to [-30, 20]). Two layouts of the official
``ddconfig`` are outside what it can express, and :class:`LDMAutoencoderKL` adds them:

* ``ch_mult[0] != 1``: the official encoder's ``conv_in`` outputs ``ch`` channels and the first ResnetBlock maps
  ``ch -> ch * ch_mult[0]``; diffusers' ``conv_in`` outputs ``block_out_channels[0]`` directly.
* ``embed_dim != z_channels``: the official quant convs map ``2 z -> 2 embed_dim`` and ``embed_dim -> z``.

The released checkpoints (ch_mult [1,2,4,4], embed_dim = z_channels = 4) need neither; the tiny reference fixtures do.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.resnet import ResnetBlock2D
from einops import rearrange
from torch import nn

SD_SCALING_FACTOR = 0.18215


class LDMAutoencoderKL(AutoencoderKL):
    """AutoencoderKL with the two extra official layouts (see the module docstring); otherwise identical.

    ``encoder_base_channels``: channels of the encoder's conv_in (official ``ch``); None means block_out_channels[0].
    ``embed_dim``: channels of the latent (official ``embed_dim``); None means latent_channels (= z_channels).
    """

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
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if encoder_base_channels is not None and encoder_base_channels != block_out_channels[0]:
            self.encoder.conv_in = nn.Conv2d(in_channels, encoder_base_channels, kernel_size=3, stride=1, padding=1)
            self.encoder.down_blocks[0].resnets[0] = ResnetBlock2D(
                in_channels=encoder_base_channels,
                out_channels=block_out_channels[0],
                temb_channels=None,
                eps=1e-6,
                groups=norm_num_groups,
                dropout=0.0,
                time_embedding_norm="default",
                non_linearity=act_fn,
                output_scale_factor=1.0,
                pre_norm=True,
            )
        if embed_dim is not None and embed_dim != latent_channels:
            if not (use_quant_conv and use_post_quant_conv):
                raise ValueError("embed_dim != latent_channels needs the quant convs (they change the channel count)")
            self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(embed_dim, latent_channels, 1)


def latent_channels_of(vae: AutoencoderKL) -> int:
    """Latent channel count for any AutoencoderKL (ours may differ from config.latent_channels)."""
    return getattr(vae.config, "embed_dim", None) or vae.config.latent_channels


def spatial_factor_of(vae: AutoencoderKL) -> int:
    """Pixel-to-latent downsampling factor (8 for the released VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _vae_param(vae: AutoencoderKL) -> torch.Tensor:
    return next(vae.parameters())


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def encode_video(
    vae: AutoencoderKL,
    video: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    sample: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Frames (b, C, t, H, W) in [-1, 1] -> scaled latents (b, c, t, H/f, W/f), each frame encoded as an image.

    As the official ``get_first_stage_encoding``, the posterior is *sampled* by default: mean + std * eps with eps from
    ``torch.randn`` of the full (b*t, c, h, w) shape, drawn on the generator's device (the CPU when no generator is
    given, like the official code). Because eps is drawn once for the whole batch, ``chunk_size`` (frames encoded per
    call, None = all at once) bounds memory without changing the result. Frames are folded as (b t), t fastest.
    """
    _check_chunk(chunk_size)
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        raise ValueError(f"video must be a (batch, channels, frames, height, width) tensor, got {_shape(video)}")
    b, c, t, h, w = video.shape
    if c != vae.config.in_channels:
        raise ValueError(f"video has {c} channels, the VAE expects {vae.config.in_channels} (RGB in [-1, 1])")
    factor = spatial_factor_of(vae)
    if h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not a multiple of the VAE factor {factor}")
    param = _vae_param(vae)
    frames = rearrange(video, "b c t h w -> (b t) c h w").to(device=param.device, dtype=param.dtype)
    step = frames.shape[0] if chunk_size is None else chunk_size
    means, stds = [], []
    for chunk in frames.split(step):
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    mean = torch.cat(means)
    if sample:
        noise_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        latents = mean + torch.cat(stds) * noise.to(device=mean.device, dtype=mean.dtype)
    else:
        latents = mean
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    latents = latents * vae.config.scaling_factor
    return rearrange(latents, "(b t) c h w -> b c t h w", b=b, t=t)


def decode_video(vae: AutoencoderKL, latents: torch.Tensor, *, chunk_size: int | None = 1) -> torch.Tensor:
    """Scaled latents (b, c, t, h, w) -> frames (b, C, t, h*f, w*f), about [-1, 1] and not clamped.

    Divides by the scaling factor first, then decodes ``chunk_size`` frames per call (None = all at once), so memory
    stays bounded for long videos; the official VC code also decodes frame by frame. A video decoder
    (:class:`~vidiff.models.video_decoder.TemporalDecoderAutoencoderKL`) decodes each video in temporal chunks of its
    ``decode_chunk_frames`` instead (its temporal context; ``chunk_size`` does not split a chunk).
    """
    _check_chunk(chunk_size)
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
        raise ValueError(f"latents must be a (batch, channels, frames, height, width) tensor, got {_shape(latents)}")
    b, c, t = latents.shape[:3]
    expected = latent_channels_of(vae)
    if c != expected:
        raise ValueError(f"latents have {c} channels, the VAE expects {expected}")
    param = _vae_param(vae)
    z = rearrange(latents, "b c t h w -> (b t) c h w").to(device=param.device, dtype=param.dtype)
    z = z / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    from .video_decoder import TemporalDecoderAutoencoderKL

    if isinstance(vae, TemporalDecoderAutoencoderKL):  # whole clips of up to its window per call, a video at a time
        window = vae.decode_window
        video = rearrange(z, "(b t) c h w -> b t c h w", b=b, t=t)
        out = [torch.cat([vae.decode(clip, num_frames=clip.shape[0]).sample for clip in v.split(window)])
               for v in video]
        return rearrange(torch.stack(out), "b t c h w -> b c t h w")
    step = z.shape[0] if chunk_size is None else chunk_size
    frames = torch.cat([vae.decode(chunk).sample for chunk in z.split(step)])
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b, t=t)


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
