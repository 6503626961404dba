"""OpenCLIP image tower: numbers against the official FrozenOpenCLIPImageEmbedderV2, conversion of every real layout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch
from lvdm_fixtures import load_config, load_manifest, load_tensors, manifests, params, rel_err

from vidiff.conversion.common import ConversionError, strip_prefix
from vidiff.conversion.image_encoder import convert_image_encoder, infer_image_config
from vidiff.models.image_encoder import OpenCLIPImageEncoder

TOL = 1e-5
CROP = (slice(None), slice(None), slice(100, 116), slice(100, 116))  # README: preprocess(x)[:, :, 100:116, 100:116]
VIT_H = {"image_size": 224, "patch_size": 14, "width": 1280, "layers": 32, "heads": 16, "mlp_width": 5120}


def _cases(folder: Path) -> list[str]:
    return list(load_config(folder)["cases"])


def _source(folder: Path) -> dict[str, torch.Tensor]:
    return strip_prefix(load_tensors(folder / "weights.safetensors"), "embedder.")


def _num_heads(folder: Path) -> int:
    vision = load_config(folder)["open_clip_vision_cfg"]
    return vision["width"] // vision["head_width"]


@lru_cache(maxsize=4)
def _model(folder: Path, dtype: torch.dtype = torch.float32) -> OpenCLIPImageEncoder:
    converted = convert_image_encoder(_source(folder), num_heads=_num_heads(folder))
    with torch.device("meta"):
        model = OpenCLIPImageEncoder.from_config(converted.config)
    model.load_state_dict({k: v.to(dtype) for k, v in converted.state_dict.items()}, strict=True, assign=True)
    return model.eval()


def _case_image(folder: Path, case: str) -> torch.Tensor:
    inputs = load_tensors(folder / "inputs.safetensors", float32=False)
    if f"{case}.image_uint8" in inputs:
        return (inputs[f"{case}.image_uint8"].float() / 255.0 - 0.5) * 2.0
    shape = [int(n) for n in inputs[f"{case}.zeros_image_shape"]]
    return torch.zeros(shape)


@pytest.mark.parametrize("folder, case", params("image", _cases))
def test_tokens_and_preprocessing_match_official(folder: Path, case: str) -> None:
    model = _model(folder)
    expected = load_tensors(folder / "expected.safetensors")
    image = _case_image(folder, case)
    with torch.no_grad():
        pixels = model.preprocess(image)
        tokens = model(image)
    assert pixels.dtype == torch.float32
    assert rel_err(pixels[CROP], expected[f"{case}.preprocessed_crop"]) <= TOL
    assert rel_err(tokens, expected[f"{case}.tokens"]) <= TOL


@pytest.mark.parametrize("folder", params("image"))
def test_encode_uncond_is_the_zero_image(folder: Path) -> None:
    model = _model(folder)
    expected = load_tensors(folder / "expected.safetensors")
    inputs = load_tensors(folder / "inputs.safetensors", float32=False)
    zero_cases = [k.split(".")[0] for k in inputs if k.endswith(".zeros_image_shape")]
    assert zero_cases, "image fixture without an all-zero (uncond) case"
    for case in zero_cases:
        batch, _, height, width = (int(n) for n in inputs[f"{case}.zeros_image_shape"])
        with torch.no_grad():
            uncond = model.encode_uncond(batch, height, width)
        assert rel_err(uncond, expected[f"{case}.tokens"]) <= TOL
    with torch.no_grad():  # a batch of 2 at another size: the zero image stays zero through the resize
        pair = model.encode_uncond(2, 64, 96)
    assert torch.allclose(pair[0], pair[1]) and rel_err(pair[:1], expected[f"{zero_cases[0]}.tokens"]) <= TOL


@pytest.mark.parametrize("folder", params("image"))
def test_bfloat16_stays_close(folder: Path) -> None:
    model = _model(folder, torch.bfloat16)
    expected = load_tensors(folder / "expected.safetensors")
    image = _case_image(folder, "a")
    with torch.no_grad():
        tokens = model(image)
        pixels = model.preprocess(image)
    assert tokens.dtype == torch.bfloat16
    assert pixels.dtype == torch.float32 and rel_err(pixels[CROP], expected["a.preprocessed_crop"]) <= TOL
    assert rel_err(tokens.float(), expected["a.tokens"]) <= 5e-2


@pytest.mark.parametrize("folder", params("image"))
def test_conversion_accounts_for_every_key(folder: Path) -> None:
    source = _source(folder)
    converted = convert_image_encoder(source, num_heads=_num_heads(folder))
    assert converted.accounted_keys() == set(source)
    assert not converted.consumed & set(converted.ignored)
    assert "model.visual.ln_post.weight" in converted.ignored and "model.visual.proj" in converted.ignored
    vision = load_config(folder)["open_clip_vision_cfg"]
    config = converted.config
    assert (config["image_size"], config["patch_size"], config["width"], config["layers"]) == (
        vision["image_size"], vision["patch_size"], vision["width"], vision["layers"])


@pytest.mark.parametrize("folder", params("image"))
def test_save_and_load_round_trip(folder: Path, tmp_path: Path) -> None:
    model = _model(folder)
    model.save_pretrained(tmp_path / "enc")
    loaded = OpenCLIPImageEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == model.config
    image = _case_image(folder, "a")
    with torch.no_grad():
        assert torch.equal(loaded(image), model(image))
    assert OpenCLIPImageEncoder.from_pretrained(tmp_path / "enc", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert not loaded.clip.embeddings.position_ids.is_meta
    with pytest.raises(FileNotFoundError):
        OpenCLIPImageEncoder.from_pretrained(tmp_path / "missing")


def _embedder_manifests() -> list:
    out = [pytest.param(p, id=p.name.removesuffix(".json.gz")) for p in manifests()
           if any(k.startswith("embedder.") for k in load_manifest(p))]
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="no manifest with embedder. keys"), id="none")]


@pytest.mark.parametrize("manifest", _embedder_manifests())
def test_full_size_manifest_converts_and_loads_strictly(manifest: Path) -> None:
    shapes = {k: v for k, v in load_manifest(manifest).items() if k.startswith("embedder.")}
    source = strip_prefix({k: torch.empty(v, device="meta") for k, v in shapes.items()}, "embedder.")
    converted = convert_image_encoder(source)
    assert converted.config == VIT_H
    assert converted.accounted_keys() == set(source)
    assert not converted.consumed & set(converted.ignored)
    with torch.device("meta"):
        model = OpenCLIPImageEncoder.from_config(converted.config)
        default = OpenCLIPImageEncoder()
    assert default.config == VIT_H  # the class defaults are the released ViT-H/14
    model.load_state_dict(converted.state_dict, strict=True, assign=True)
    assert model.num_tokens == 257
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(source[k].numel() for k in converted.consumed)


def test_converter_rejects_bad_layouts() -> None:
    folder = next((p.values[0] for p in params("image") if p.values[0] is not None), None)
    if folder is None:
        pytest.skip("no image fixtures")
    source = _source(folder)
    heads = _num_heads(folder)
    with pytest.raises(ConversionError, match="prefix"):
        convert_image_encoder({"embedder." + k: v for k, v in source.items()}, num_heads=heads)
    with pytest.raises(ConversionError, match="unexpected keys"):
        convert_image_encoder({**source, "model.visual.attn_pool.weight": torch.zeros(1)}, num_heads=heads)
    with pytest.raises(ConversionError, match="num_heads"):
        convert_image_encoder(source, num_heads=5)
    with pytest.raises(ConversionError, match="num_heads"):
        convert_image_encoder(source)  # width 32: neither 80- nor 64-wide heads fit, the error asks for num_heads
    dropped = {k: v for k, v in source.items() if not k.endswith("resblocks.0.ln_1.weight")}
    with pytest.raises(ConversionError, match="missing keys"):
        convert_image_encoder(dropped, num_heads=heads)
    bad_pos = {**source, "model.visual.positional_embedding": torch.zeros(100, source["model.visual.class_embedding"].shape[0])}
    with pytest.raises(ConversionError, match="grid"):
        infer_image_config(bad_pos, num_heads=heads)
    key = "model.visual.transformer.resblocks.0.attn.in_proj_bias"
    with pytest.raises(ConversionError, match=r"in_proj_bias has shape \(\d+,\), expected first dimension 3 \*"):
        convert_image_encoder({**source, key: source[key][:-1]}, num_heads=heads)
    with pytest.raises(ConversionError, match="not contiguous"):
        convert_image_encoder({**source, "model.visual.transformer.resblocks.999.ln_1.weight": torch.zeros(1)}, num_heads=heads)


def test_preprocess_rejects_bad_images() -> None:
    with torch.device("meta"):
        model = OpenCLIPImageEncoder(width=32, layers=1, heads=4)
    with pytest.raises(ValueError, match="uint8"):
        model.preprocess(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch, 3"):
        model.preprocess(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        OpenCLIPImageEncoder(width=30, heads=4)
