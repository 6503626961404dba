"""LDMAutoencoderKL + convert_vae against the official AutoencoderKL fixtures and manifests, and the video helpers."""

from __future__ import annotations

import math

import pytest
import torch
from lvdm_fixtures import load_config, load_manifest, load_tensors, manifests, params, rel_err

from vidiff.conversion.common import ConversionError, strip_prefix
from vidiff.conversion.vae import build_vae, convert_vae, official_vae_shapes
from vidiff.models.autoencoder import LDMAutoencoderKL, decode_video, encode_video, latent_channels_of

PREFIX = "first_stage_model."
TOL = 1e-5
SCALE = 0.18215


def _cases(folder):
    return sorted(load_config(folder)["cases"])


def _converted_vae(folder) -> LDMAutoencoderKL:
    cfg = load_config(folder)
    source = strip_prefix(load_tensors(folder / "weights.safetensors"), cfg.get("key_prefix", PREFIX))
    conv = convert_vae(source)
    assert conv.consumed | set(conv.ignored) == set(source)
    vae = build_vae(conv.config)
    vae.load_state_dict(conv.state_dict, strict=True)
    return vae.eval()


@pytest.mark.parametrize("folder,case", params("vae", _cases))
def test_matches_official_autoencoder(folder, case):
    vae = _converted_vae(folder)
    inputs = load_tensors(folder / "inputs.safetensors")
    ref = {k.split(".", 1)[1]: v for k, v in load_tensors(folder / "expected.safetensors").items() if k.startswith(case + ".")}
    image, noise, z = inputs[f"{case}.image"], inputs[f"{case}.noise"], inputs[f"{case}.z"]
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(image))
        posterior = vae.encode(image).latent_dist
        sample = posterior.mean + posterior.std * noise
        got = {
            "moments": moments,
            "mean": posterior.mean,
            "logvar_clamped": posterior.logvar,
            "std": posterior.std,
            "sample_with_noise": sample,
            "mode": posterior.mode(),
            "decoded_z": vae.decode(z).sample,
            "decoded_sample": vae.decode(sample).sample,
        }
    assert set(got) <= set(ref), f"fixture lacks {set(got) - set(ref)}"
    errors = {name: rel_err(value, ref[name]) for name, value in got.items()}
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("folder,case", params("vae", _cases))
def test_video_helpers_follow_official_sampling_and_folding(folder, case):
    """Fixture images as frames of one video: sampled latents = 0.18215 * (mean + std * randn(generator)), (b t) order."""
    vae = _converted_vae(folder)
    inputs = load_tensors(folder / "inputs.safetensors")
    ref = load_tensors(folder / "expected.safetensors")
    images = inputs[f"{case}.image"]  # (n, 3, H, W) -> one video of n frames
    video = images.permute(1, 0, 2, 3).unsqueeze(0)
    with torch.no_grad():
        latents = encode_video(vae, video, generator=torch.Generator().manual_seed(7))
        eps = torch.randn(ref[f"{case}.mean"].shape, generator=torch.Generator().manual_seed(7))
        expected = SCALE * (ref[f"{case}.mean"] + ref[f"{case}.std"] * eps)
        assert latents.shape == (1, expected.shape[1], images.shape[0], *expected.shape[2:])
        assert rel_err(latents[0].permute(1, 0, 2, 3), expected) <= TOL

        mode = encode_video(vae, video, sample=False)
        assert rel_err(mode[0].permute(1, 0, 2, 3), SCALE * ref[f"{case}.mode"]) <= TOL

        z = inputs[f"{case}.z"]
        decoded = decode_video(vae, (SCALE * z).permute(1, 0, 2, 3).unsqueeze(0))
        assert decoded.shape == (1, 3, z.shape[0], *images.shape[2:])
        assert rel_err(decoded[0].permute(1, 0, 2, 3), ref[f"{case}.decoded_z"]) <= TOL


@pytest.mark.parametrize("folder", params("vae"))
def test_video_round_trip_shapes_and_chunk_invariance(folder):
    vae = _converted_vae(folder)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    b, t, h, w = 2, 3, 2 * factor, 3 * factor
    video = torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        whole = encode_video(vae, video, generator=torch.Generator().manual_seed(1), chunk_size=None)
        chunked = encode_video(vae, video, generator=torch.Generator().manual_seed(1), chunk_size=1)
        assert whole.shape == (b, latent_channels_of(vae), t, h // factor, w // factor)
        assert rel_err(chunked, whole) <= TOL
        # Frames are folded (b t) with t fastest: encoding a frame alone gives its slice of the video result.
        single = encode_video(vae, video[1:2, :, 2:3], sample=False)
        assert rel_err(single[0, :, 0], encode_video(vae, video, sample=False)[1, :, 2]) <= TOL

        frames = decode_video(vae, whole, chunk_size=1)
        assert frames.shape == video.shape
        assert rel_err(decode_video(vae, whole, chunk_size=None), frames) <= TOL
        assert rel_err(decode_video(vae, whole, chunk_size=4), frames) <= TOL


def test_video_helpers_reject_bad_input():
    vae = build_vae(_official_like_config([32, 32], 1)).eval()
    with pytest.raises(ValueError, match="batch, channels, frames"):
        encode_video(vae, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of the VAE factor 2"):
        encode_video(vae, torch.zeros(1, 3, 1, 15, 16))
    with pytest.raises(ValueError, match="channels"):
        encode_video(vae, torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="chunk_size"):
        decode_video(vae, torch.zeros(1, 4, 1, 8, 8), chunk_size=0)
    with pytest.raises(ValueError, match="latents have 3 channels"):
        decode_video(vae, torch.zeros(1, 3, 1, 8, 8))


def _meta(shapes: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize("manifest", [pytest.param(m, id=m.name) for m in manifests()] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no manifests"), id="no-manifests")])
def test_full_size_manifest_converts_and_loads_strictly(manifest):
    shapes = strip_prefix(load_manifest(manifest), PREFIX)
    source = _meta(shapes)
    conv = convert_vae(source)
    assert conv.consumed | set(conv.ignored) == set(source) and not conv.ignored
    assert conv.config["block_out_channels"] == [128, 256, 512, 512] and conv.config["layers_per_block"] == 2
    with torch.device("meta"):
        vae = build_vae(conv.config)
    vae.load_state_dict(conv.state_dict, strict=True, assign=True)
    assert sum(p.numel() for p in vae.parameters()) == sum(math.prod(v) for v in shapes.values()) == 83_653_863
    assert official_vae_shapes(conv.config) == {k: tuple(v) for k, v in shapes.items()}


def _official_like_config(block_out, layers, *, base=None, attn_levels=(), z=4, embed=4, mid_attn=True) -> dict:
    """Our config for an official ddconfig with these per-level channels (ch * ch_mult)."""
    n = len(block_out)
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["AttnDownEncoderBlock2D" if i in attn_levels else "DownEncoderBlock2D" for i in range(n)],
        "up_block_types": ["AttnUpDecoderBlock2D" if i in attn_levels else "UpDecoderBlock2D" for i in reversed(range(n))],
        "block_out_channels": list(block_out), "layers_per_block": layers, "act_fn": "silu",
        "latent_channels": z, "norm_num_groups": 32, "scaling_factor": SCALE, "mid_block_add_attention": mid_attn,
        "encoder_base_channels": base or block_out[0], "embed_dim": embed,
    }


@pytest.mark.parametrize(
    "config",
    [
        _official_like_config([32, 64], 1),
        _official_like_config([64, 32, 96], 2, base=32),
        _official_like_config([32, 64], 1, attn_levels=(1,)),
        _official_like_config([32, 32], 1, z=3, embed=5, mid_attn=False),
    ],
    ids=["plain", "ch_mult0-not-1", "level-attention", "embed_dim-ne-z-no-mid-attn"],
)
def test_other_official_layouts_round_trip(config):
    """Random weights in the official layout convert, infer the same config and run end to end."""
    gen = torch.Generator().manual_seed(0)
    source = {k: torch.randn(v, generator=gen) * 0.05 for k, v in official_vae_shapes(config).items()}
    conv = convert_vae(source)
    assert conv.config == config and conv.consumed == set(source)
    vae = build_vae(conv.config)
    vae.load_state_dict(conv.state_dict, strict=True)
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    with torch.no_grad():
        latents = encode_video(vae.eval(), torch.zeros(1, 3, 2, 2 * factor, 2 * factor), sample=False)
        assert latents.shape == (1, config["embed_dim"], 2, 2, 2)
        assert decode_video(vae, latents).shape == (1, 3, 2, 2 * factor, 2 * factor)


def test_conversion_errors_are_clear():
    source = _meta(official_vae_shapes(_official_like_config([32, 64], 1)))
    with pytest.raises(ConversionError, match="unexpected keys: encoder.down.0.block.0.foo.weight"):
        convert_vae(source | {"encoder.down.0.block.0.foo.weight": torch.empty(1, device="meta")})
    missing = dict(source)
    del missing["decoder.up.1.upsample.conv.bias"]
    with pytest.raises(ConversionError, match="missing keys: decoder.up.1.upsample.conv.bias"):
        convert_vae(missing)
    with pytest.raises(ConversionError, match="shape mismatches: encoder.mid.attn_1.q.weight"):
        convert_vae(source | {"encoder.mid.attn_1.q.weight": torch.empty(32, 32, 1, 1, device="meta")})
    with pytest.raises(ConversionError, match="strip it first"):
        convert_vae({PREFIX + k: v for k, v in source.items()})
    with pytest.raises(ConversionError, match="decoder.up.0 has blocks"):
        convert_vae({k: v for k, v in source.items() if not k.startswith("decoder.up.0.block.1.")})
    with pytest.raises(ConversionError, match="cannot build"):  # 48 channels cannot form 32 groups
        convert_vae(_meta(official_vae_shapes(_official_like_config([48, 32], 1))))
    loss = source | {"loss.logvar": torch.empty((), device="meta")}
    assert "loss.logvar" in convert_vae(loss).ignored


def test_save_and_load_round_trip(tmp_path):
    vae = build_vae(_official_like_config([64, 32], 1, base=32, embed=3)).eval()
    vae.save_pretrained(tmp_path)
    again = LDMAutoencoderKL.from_pretrained(tmp_path).eval()
    assert again.config.encoder_base_channels == 32 and again.config.embed_dim == 3
    x = torch.rand(1, 3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(encode_video(again, x, sample=False), encode_video(vae, x, sample=False))
