"""The U-Net against the official VideoCrafter / DynamiCrafter outputs, loaded through the public conversion path."""

from __future__ import annotations

import pytest
import torch
from lvdm_fixtures import build_unet_variant as build_variant
from lvdm_fixtures import load_config, load_tensors, params, rel_err
from lvdm_fixtures import owned_unet_weights as owned_weights

from vidiff.conversion.unet import convert_unet
from vidiff.models.unet3d import UNet3DModel


def _variant_cases(folder):
    cfg = load_config(folder)
    return [f"{v}.{c}" for v, spec in cfg["variants"].items() for c in spec["cases"]]


def _call_inputs(inputs: dict, case: str, flavour: str) -> dict:
    get = lambda name: inputs.get(f"{case}.{name}")  # noqa: E731
    kwargs = {"sample": get("x"), "timestep": get("timesteps"), "context": get("context")}
    fps = get("fps") if flavour == "vc" else get("fs")
    if fps is not None:
        kwargs["fps"] = fps
    return kwargs


@pytest.mark.parametrize("folder,variant_case", params("vc_unet", _variant_cases) + params("dc_unet", _variant_cases))
def test_unet_matches_official(folder, variant_case):
    variant, case = variant_case.split(".")
    cfg = load_config(folder)
    flavour = "dc" if "DynamiCrafter" in cfg["official_repo"] else "vc"
    model = build_variant(folder, variant)
    inputs = load_tensors(folder / "inputs.safetensors")
    expected = load_tensors(folder / "expected.safetensors")[f"{variant}.{case}.out"]
    with torch.no_grad():
        out = model(**_call_inputs(inputs, case, flavour))
    assert out.shape == expected.shape
    err = rel_err(out, expected)
    assert err <= 1e-5, f"{folder.name} {variant}.{case}: relative error {err:.3g}"


@pytest.mark.parametrize("folder,variant", params("vc_unet", lambda f: list(load_config(f)["variants"])))
def test_unet_inferred_config_matches_official_kwargs(folder, variant):
    """Converting without kwargs (as `vidiff convert` does) infers the same architecture."""
    cfg = load_config(folder)
    spec = cfg["variants"][variant]
    owned = owned_weights(folder, variant)
    told = convert_unet(owned, spec["kwargs"], "vc").config
    inferred = convert_unet(owned, None, "vc", num_head_channels=spec["kwargs"]["num_head_channels"]).config
    with torch.device("meta"):
        told, inferred = dict(UNet3DModel.from_config(told).config), dict(UNet3DModel.from_config(inferred).config)
    skip = {"dropout", "_use_default_values"} | (set() if told["use_relative_position"] else {"temporal_length"})
    assert _comparable(inferred, skip) == _comparable(told, skip)


def _comparable(config: dict, skip: set[str]) -> dict:
    """A config for comparison: ``attention_resolutions`` is a set of levels, in whatever order it was listed."""
    out = {k: v for k, v in config.items() if k not in skip}
    out["attention_resolutions"] = sorted(out["attention_resolutions"])
    return out


@pytest.mark.parametrize("folder", [p.values[0] for p in params("vc_unet")][:1] or [None])
def test_unet_bf16_close_to_official(folder):
    """bf16 weights and activations (GroupNorms in fp32) stay close to the fp32 reference."""
    if folder is None:
        pytest.skip("no vc_unet fixtures")
    cfg = load_config(folder)
    variant = next(iter(cfg["variants"]))
    case = cfg["variants"][variant]["cases"][0]
    model = build_variant(folder, variant).to(torch.bfloat16)
    inputs = load_tensors(folder / "inputs.safetensors")
    expected = load_tensors(folder / "expected.safetensors")[f"{variant}.{case}.out"]
    with torch.no_grad():
        out = model(**_call_inputs(inputs, case, "vc"))
    assert out.dtype == torch.float32  # output follows the input dtype
    assert rel_err(out, expected) < 3e-2
