"""OpenCLIPTextEncoder + convert_text_encoder against the official FrozenOpenCLIPEmbedder fixtures and manifests."""

from __future__ import annotations

import math

import pytest
import torch
from lvdm_fixtures import load_config, load_manifest, load_tensors, manifests, params, rel_err

from vidiff.conversion.common import ConversionError, strip_prefix
from vidiff.conversion.text_encoder import convert_text_encoder
from vidiff.models.text_encoder import OpenCLIPTextEncoder

PREFIX = "cond_stage_model."
TOL = 1e-5


def _cases(folder):
    return sorted(load_config(folder)["cases"])


def _source(folder) -> dict[str, torch.Tensor]:
    cfg = load_config(folder)
    return strip_prefix(load_tensors(folder / "weights.safetensors"), cfg.get("key_prefix", PREFIX))


def _converted_model(folder) -> OpenCLIPTextEncoder:
    heads = load_config(folder)["open_clip_text_cfg"]["heads"]
    conv = convert_text_encoder(_source(folder), num_heads=heads)
    model = OpenCLIPTextEncoder.from_config(conv.config)
    model.load_state_dict(conv.state_dict, strict=True)
    return model.eval()


@pytest.mark.parametrize("folder,case", params("text", _cases))
def test_matches_official_embedder(folder, case):
    model = _converted_model(folder)
    tokens = load_tensors(folder / "inputs.safetensors")[f"{case}.tokens"]
    expected = load_tensors(folder / "expected.safetensors")
    with torch.no_grad():
        penultimate = model(tokens)
        last = model(tokens, layer="last")
    assert rel_err(penultimate, expected[f"{case}.penultimate"]) <= TOL
    assert rel_err(last, expected[f"{case}.last"]) <= TOL
    # The two layers really differ, so the layer choice is exercised.
    assert rel_err(last, expected[f"{case}.penultimate"]) > 1e-3


@pytest.mark.parametrize("folder,case", params("text", _cases))
def test_bfloat16_runs_and_stays_close(folder, case):
    model = _converted_model(folder).to(torch.bfloat16)
    tokens = load_tensors(folder / "inputs.safetensors")[f"{case}.tokens"]
    with torch.no_grad():
        out = model(tokens)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), load_tensors(folder / "expected.safetensors")[f"{case}.penultimate"]) < 0.05


@pytest.mark.parametrize("folder", params("text"))
def test_causal_mask_only(folder):
    """Position i depends on tokens <= i only, and padding is attended like any token (no padding mask)."""
    model = _converted_model(folder)
    vocab = model.config["vocab_size"]
    tokens = torch.zeros(2, model.config["context_length"], dtype=torch.long)
    tokens[:, 0], tokens[:, 1:4], tokens[:, 4] = vocab - 2, torch.tensor([5, 6, 7]), vocab - 1
    tokens[1, 3] = 9
    with torch.no_grad():
        out = model(tokens)
    assert torch.equal(out[0, :3], out[1, :3])
    assert not torch.allclose(out[0, 3:], out[1, 3:])  # every later position sees the change, padding included
    assert out.shape == (2, model.config["context_length"], model.config["width"])


@pytest.mark.parametrize("folder", params("text"))
def test_save_and_load_round_trip(folder, tmp_path):
    model = _converted_model(folder)
    model.save_pretrained(tmp_path)
    again = OpenCLIPTextEncoder.from_pretrained(tmp_path)
    tokens = load_tensors(folder / "inputs.safetensors")[f"{_cases(folder)[0]}.tokens"]
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))
    half = OpenCLIPTextEncoder.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.config == model.config


def _meta_source(manifest) -> dict[str, torch.Tensor]:
    shapes = strip_prefix(load_manifest(manifest), PREFIX)
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize("manifest", [pytest.param(m, id=m.name) for m in manifests()] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no manifests"), id="no-manifests")])
def test_full_size_manifest_converts_and_loads_strictly(manifest):
    source = _meta_source(manifest)
    conv = convert_text_encoder(source)
    assert conv.config["heads"] == conv.config["width"] // 64
    assert conv.consumed | set(conv.ignored) == set(source)
    assert not conv.consumed & set(conv.ignored)
    assert set(conv.ignored) == {"model.text_projection", "model.logit_scale"}
    with torch.device("meta"):
        model = OpenCLIPTextEncoder.from_config(conv.config)
    model.load_state_dict(conv.state_dict, strict=True, assign=True)
    # Nothing lost or duplicated: our parameters hold exactly the consumed source values.
    ours = sum(p.numel() for p in model.parameters())
    assert ours == sum(math.prod(source[k].shape) for k in conv.consumed)


def _tiny_source() -> dict[str, torch.Tensor]:
    width, layers = 8, 2
    sd = {
        "model.token_embedding.weight": torch.randn(50, width),
        "model.positional_embedding": torch.randn(77, width),
        "model.ln_final.weight": torch.ones(width),
        "model.ln_final.bias": torch.zeros(width),
        "model.text_projection": torch.randn(width, 4),
        "model.logit_scale": torch.tensor(2.0),
    }
    for i in range(layers):
        p = f"model.transformer.resblocks.{i}."
        sd |= {
            p + "ln_1.weight": torch.ones(width), p + "ln_1.bias": torch.zeros(width),
            p + "attn.in_proj_weight": torch.randn(3 * width, width), p + "attn.in_proj_bias": torch.randn(3 * width),
            p + "attn.out_proj.weight": torch.randn(width, width), p + "attn.out_proj.bias": torch.randn(width),
            p + "ln_2.weight": torch.ones(width), p + "ln_2.bias": torch.zeros(width),
            p + "mlp.c_fc.weight": torch.randn(4 * width, width), p + "mlp.c_fc.bias": torch.randn(4 * width),
            p + "mlp.c_proj.weight": torch.randn(width, 4 * width), p + "mlp.c_proj.bias": torch.randn(width),
        }
    return sd


def test_qkv_split_order():
    sd = _tiny_source()
    conv = convert_text_encoder(sd, num_heads=2)
    packed = sd["model.transformer.resblocks.1.attn.in_proj_weight"]
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(conv.state_dict[f"clip.encoder.layers.1.self_attn.{name}.weight"], packed[8 * i : 8 * (i + 1)])
    assert conv.config == {"vocab_size": 50, "context_length": 77, "width": 8, "layers": 2, "heads": 2,
                           "mlp_width": 32, "layer": "penultimate"}


def test_conversion_errors_are_clear():
    sd = _tiny_source()
    with pytest.raises(ConversionError, match="unexpected keys.*model.visual.proj"):
        convert_text_encoder(sd | {"model.visual.proj": torch.zeros(1)}, num_heads=2)
    missing = dict(sd)
    del missing["model.transformer.resblocks.1.mlp.c_proj.bias"]
    with pytest.raises(ConversionError, match="missing keys.*resblocks.1.mlp.c_proj.bias"):
        convert_text_encoder(missing, num_heads=2)
    with pytest.raises(ConversionError, match="shape mismatches.*ln_final"):
        convert_text_encoder(sd | {"model.ln_final.weight": torch.ones(9)}, num_heads=2)
    with pytest.raises(ConversionError, match="in_proj_bias: expected \\(24,\\), got \\(8,\\)"):
        convert_text_encoder(sd | {"model.transformer.resblocks.0.attn.in_proj_bias": torch.zeros(8)}, num_heads=2)
    with pytest.raises(ConversionError, match="strip it first"):
        convert_text_encoder({PREFIX + k: v for k, v in sd.items()}, num_heads=2)
    with pytest.raises(ConversionError, match="num_heads=3"):
        convert_text_encoder(sd, num_heads=3)
    with pytest.raises(ConversionError, match="default width // 64"):
        convert_text_encoder(sd)


def test_bad_tokens_are_rejected():
    model = OpenCLIPTextEncoder(vocab_size=50, width=8, layers=2, heads=2)
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 77), 50))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 77))
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 78, dtype=torch.long))
