"""Perceiver Resampler (i2v image projector): both official variants against their fixtures, and every real layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lvdm_fixtures import fixture_folders, load_config, load_manifest, load_tensors, manifests, params, rel_err

from vidiff.conversion.common import ConversionError, strip_prefix
from vidiff.conversion.component import ConvertedComponent
from vidiff.conversion.resampler import convert_resampler
from vidiff.models.resampler import PerceiverAttention, Resampler

TOL = 1e-5
KINDS = {"resampler_vc": "vc", "resampler_dc": "dc"}
RELEASED = {"dim": 1024, "depth": 4, "dim_head": 64, "heads": 12, "num_queries": 16, "embedding_dim": 1280,
            "output_dim": 1024, "ff_mult": 4}


def _cases(folder: Path) -> list[str]:
    return list(load_config(folder)["cases"])


def _all_params() -> list:
    out = []
    for kind in KINDS:
        out += [p for p in params(kind, _cases) if p.values[0] is not None]
    return out or params("resampler_vc", _cases)


def _flavour(folder: Path) -> str:
    return next(flavour for kind, flavour in KINDS.items() if folder in fixture_folders(kind))


def _convert(folder: Path) -> ConvertedComponent:
    kwargs = load_config(folder)["kwargs"]
    source = strip_prefix(load_tensors(folder / "weights.safetensors"), "image_proj_model.")
    return convert_resampler(source, _flavour(folder), heads=kwargs["heads"], dim_head=kwargs["dim_head"],
                             num_queries=kwargs["num_queries"])


def _model(folder: Path, dtype: torch.dtype = torch.float32) -> Resampler:
    converted = _convert(folder)
    with torch.device("meta"):
        model = Resampler.from_config(converted.config)
    model.load_state_dict({k: v.to(dtype) for k, v in converted.state_dict.items()}, strict=True, assign=True)
    return model.eval()


@pytest.mark.parametrize("folder, case", _all_params())
def test_output_matches_official(folder: Path, case: str) -> None:
    model = _model(folder)
    x = load_tensors(folder / "inputs.safetensors")[f"{case}.x"]
    with torch.no_grad():
        out = model(x)
    assert rel_err(out, load_tensors(folder / "expected.safetensors")[f"{case}.out"]) <= TOL


@pytest.mark.parametrize("folder, case", _all_params())
def test_bfloat16_stays_close(folder: Path, case: str) -> None:
    model = _model(folder, torch.bfloat16)
    x = load_tensors(folder / "inputs.safetensors")[f"{case}.x"]
    with torch.no_grad():
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), load_tensors(folder / "expected.safetensors")[f"{case}.out"]) <= 5e-2


@pytest.mark.parametrize("folder", [p for kind in KINDS for p in params(kind)])
def test_converted_config_is_the_official_kwargs(folder: Path) -> None:
    converted = _convert(folder)
    kwargs = dict(load_config(folder)["kwargs"])
    kwargs.setdefault("video_length", None)  # the VC class has no video_length: shared tokens
    assert converted.config == kwargs
    assert converted.consumed == set(converted.state_dict) and not converted.ignored
    model = _model(folder)
    assert model.per_frame == (_flavour(folder) == "dc")
    assert model.num_tokens == kwargs["num_queries"] * (kwargs["video_length"] or 1)


def test_attention_is_the_official_formula() -> None:
    """SDPA against the official op order: (q·d^-1/4)(k·d^-1/4)ᵀ, float32 softmax, keys/values over [x ; latents]."""
    torch.manual_seed(0)
    attn = PerceiverAttention(dim=48, dim_head=16, heads=5).eval()  # inner 80 != dim 48
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x, latents = torch.randn(2, 11, 48), torch.randn(2, 7, 48)
    with torch.no_grad():
        ours = attn(x, latents)
        xn, ln = attn.norm1(x), attn.norm2(latents)
        q = attn.to_q(ln)
        k, v = attn.to_kv(torch.cat([xn, ln], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(2, t.shape[1], 5, 16).transpose(1, 2) for t in (q, k, v))
        s = 1 / math.sqrt(math.sqrt(16))
        weight = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1)
        ref = attn.to_out((weight @ v).transpose(1, 2).reshape(2, 7, 80))
    assert rel_err(ours, ref) <= 1e-6


@pytest.mark.parametrize("folder", [p for kind in KINDS for p in params(kind)])
def test_save_and_load_round_trip(folder: Path, tmp_path: Path) -> None:
    model = _model(folder)
    model.save_pretrained(tmp_path / "proj")
    loaded = Resampler.from_pretrained(tmp_path / "proj")
    assert loaded.config == model.config
    x = load_tensors(folder / "inputs.safetensors")[f"{_cases(folder)[0]}.x"]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert Resampler.from_pretrained(tmp_path / "proj", torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def _projector_manifests() -> list:
    out = [pytest.param(p, id=p.name.removesuffix(".json.gz")) for p in manifests()
           if any(k.startswith("image_proj_model.") for k in load_manifest(p))]
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="no manifest with image_proj_model. keys"), id="none")]


@pytest.mark.parametrize("manifest", _projector_manifests())
def test_full_size_manifest_converts_and_loads_strictly(manifest: Path) -> None:
    shapes = {k: v for k, v in load_manifest(manifest).items() if k.startswith("image_proj_model.")}
    source = strip_prefix({k: torch.empty(v, device="meta") for k, v in shapes.items()}, "image_proj_model.")
    flavour = "dc" if manifest.name.startswith("manifest_dc") else "vc"  # manifest_<config>, configs named vc*/dc*
    converted = convert_resampler(source, flavour)
    expected_length = 16 if flavour == "dc" else None  # DC: 16 queries × 16 frames = 256 latents; VC: 16 shared
    assert converted.config == {**RELEASED, "video_length": expected_length}
    assert converted.accounted_keys() == set(source) and not converted.ignored
    with torch.device("meta"):
        model = Resampler.from_config(converted.config)
        default = Resampler(video_length=expected_length)
    assert default.config == converted.config  # the class defaults are the released projector
    model.load_state_dict(converted.state_dict, strict=True, assign=True)
    assert model.num_tokens == (256 if flavour == "dc" else 16)


def _any_folder() -> Path:
    for kind in KINDS:
        folders = fixture_folders(kind)
        if folders:
            return folders[0]
    pytest.skip("no resampler fixtures")


def test_converter_rejects_bad_layouts() -> None:
    folder = _any_folder()
    kwargs = load_config(folder)["kwargs"]
    source = strip_prefix(load_tensors(folder / "weights.safetensors"), "image_proj_model.")
    inner = kwargs["heads"] * kwargs["dim_head"]
    with pytest.raises(ConversionError, match="prefix"):
        convert_resampler({"image_proj_model." + k: v for k, v in source.items()}, heads=kwargs["heads"])
    with pytest.raises(ConversionError, match="flavour"):
        convert_resampler(source, "xx", heads=kwargs["heads"])  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match="unexpected keys"):
        convert_resampler({**source, "layers.0.0.to_q.bias": torch.zeros(inner)}, heads=kwargs["heads"])
    with pytest.raises(ConversionError, match="heads"):
        convert_resampler(source, heads=kwargs["heads"], dim_head=kwargs["dim_head"] + 1)
    with pytest.raises(ConversionError, match="heads"):
        convert_resampler(source, heads=inner + 1)
    n_latents = source["latents"].shape[1]
    with pytest.raises(ConversionError, match="num_queries"):
        convert_resampler(source, "dc", heads=kwargs["heads"], num_queries=n_latents + 1)
    dropped = {k: v for k, v in source.items() if k != "layers.0.0.norm1.weight"}
    with pytest.raises(ConversionError, match="missing keys"):
        convert_resampler(dropped, heads=kwargs["heads"])
    with pytest.raises(ConversionError, match="ImageProjModel"):
        convert_resampler({"proj.weight": torch.zeros(4, 4), "proj.bias": torch.zeros(4)})


def test_forward_rejects_bad_tokens() -> None:
    model = Resampler(dim=8, depth=1, dim_head=4, heads=2, num_queries=3, embedding_dim=6, output_dim=5)
    with pytest.raises(ValueError, match="embedding_dim|6"):
        model(torch.zeros(1, 4, 7))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="video_length"):
        Resampler(video_length=0)
    dc = Resampler(dim=8, depth=1, dim_head=4, heads=2, num_queries=3, embedding_dim=6, output_dim=5, video_length=4)
    assert dc(torch.randn(2, 5, 6)).shape == (2, 12, 5)
