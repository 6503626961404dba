"""VideoGen's video decoder (design doc A4): equal to the image decoder at init, temporal after training (a frame's
output depends on its neighbours), gradients reach the temporal layers, decode_video decodes whole temporal chunks,
and the folder round trip keeps the class."""

from __future__ import annotations

import pytest
import torch

from vidiff.models.autoencoder import LDMAutoencoderKL, decode_video
from vidiff.models.video_decoder import TemporalDecoderAutoencoderKL

TINY_VAE = dict(block_out_channels=[32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1, latent_channels=4, norm_num_groups=32,
                sample_size=32, scaling_factor=0.5)


def image_vae(seed: int = 0) -> LDMAutoencoderKL:
    torch.manual_seed(seed)
    return LDMAutoencoderKL(**TINY_VAE).eval()


def randomise_temporal(vae: TemporalDecoderAutoencoderKL, std: float = 0.05, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in vae.temporal_modules():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def latents(b: int = 2, t: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 4, t, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_from_image_autoencoder_equals_the_image_decoder_at_init():
    image = image_vae()
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image, decode_chunk_frames=4, temporal_length=8).eval()
    z = latents()
    with torch.no_grad():
        per_frame = decode_video(image, z, chunk_size=None)
        temporal = decode_video(video, z)
    assert temporal.shape == (2, 3, 4, 32, 32)
    torch.testing.assert_close(temporal, per_frame, atol=1e-5, rtol=0)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():  # the encoder and latent space are the image autoencoder's
        assert torch.equal(video.encode(x).latent_dist.mean, image.encode(x).latent_dist.mean)


def test_trained_temporal_layers_mix_neighbouring_frames_and_one_frame_is_the_image_decoder():
    image = image_vae()
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image, decode_chunk_frames=6, temporal_length=8).eval()
    randomise_temporal(video)
    z = latents(b=1, t=6)
    bumped = z.clone()
    bumped[:, :, 3] += 1.0
    with torch.no_grad():
        a, b = decode_video(video, z), decode_video(video, bumped)
        per_frame_a, per_frame_b = decode_video(image, z), decode_video(image, bumped)
        one = video.decode(z[:, :, 0] / 0.5, num_frames=1).sample
    change = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert change[2] > 1e-3 and change[4] > 1e-3  # frames 2 and 4 see frame 3
    assert (per_frame_a - per_frame_b).abs().amax(dim=(0, 1, 3, 4))[[0, 1, 2, 4, 5]].max() == 0  # per-frame: none
    torch.testing.assert_close(one, image.decode(z[:, :, 0] / 0.5).sample, atol=1e-5, rtol=0)


def test_video_loss_trains_the_temporal_layers():
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), temporal_length=8).train()
    z = latents(b=1, t=4)
    out = video.decode(z.permute(0, 2, 1, 3, 4).flatten(0, 1), num_frames=4).sample
    (out - torch.linspace(-1, 1, out.numel()).view_as(out)).abs().mean().backward()
    from vidiff.models.univid import TemporalConv1d

    convs = [m for m in video.temporal_modules() if isinstance(m, TemporalConv1d)]
    assert len(convs) == 1 + 2 + 3 * 2 + 2 + 1  # conv_in, mid resnets, up resnets, upsamplers, conv_out
    assert all(m.conv.weight.grad is not None and m.conv.weight.grad.abs().sum() > 0 for m in convs)
    attention = video.temporal_mid_attention.proj_out.weight.grad  # zero at init: its output projection moves first
    assert attention is not None and attention.abs().sum() > 0


def test_decode_video_splits_long_clips_into_temporal_chunks():
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), decode_chunk_frames=4, temporal_length=8)
    randomise_temporal(video.eval())
    z = latents(b=2, t=6)
    with torch.no_grad():
        whole = decode_video(video, z, chunk_size=1)  # chunk_size does not split a temporal chunk
        first = video.decode(z[1, :, :4].permute(1, 0, 2, 3) / 0.5, num_frames=4).sample
        rest = video.decode(z[1, :, 4:].permute(1, 0, 2, 3) / 0.5, num_frames=2).sample
    torch.testing.assert_close(whole[1].permute(1, 0, 2, 3), torch.cat([first, rest]), atol=1e-6, rtol=0)


def test_bad_calls_are_clear_errors_and_the_folder_round_trip_keeps_the_class(tmp_path):
    from vidiff.model_folder import load_component, write_index

    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), decode_chunk_frames=4, temporal_length=8)
    with pytest.raises(ValueError, match="cover 8 frames, got 9"):
        video.decode(torch.randn(9, 4, 8, 8), num_frames=9)
    with pytest.raises(ValueError, match="cannot be split into videos of 4 frames"):
        video.decode(torch.randn(6, 4, 8, 8), num_frames=4)
    with pytest.raises(TypeError, match="unknown temporal option"):
        TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), temporal_kernel=3)
    with pytest.raises(ValueError, match="decode_chunk_frames must be in"):
        TemporalDecoderAutoencoderKL(**TINY_VAE, decode_chunk_frames=32, temporal_length=16)
    randomise_temporal(video)
    video.save_pretrained(tmp_path / "vae")
    write_index(tmp_path, {"_class_name": "TextToVideoPipeline"}, {"vae": video})
    loaded = load_component(tmp_path, "vae")
    assert type(loaded) is TemporalDecoderAutoencoderKL and loaded.decode_window == 4
    z = latents(b=1, t=4)
    with torch.no_grad():
        torch.testing.assert_close(decode_video(loaded, z), decode_video(video.eval(), z), atol=0, rtol=0)
