"""Discovery of the official reference fixtures (see ../shared/fixtures/lvdm/README.md).

Folders are recognised by what their config.json says, not by their names, so a new folder in the same format is
tested with no code change.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_ROOT = Path(os.environ.get("VIDIFF_LVDM_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "lvdm"))


def fixture_kind(folder: Path) -> str | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    repo = cfg.get("official_repo", "")
    flavour = "dc" if "DynamiCrafter" in repo else "vc"
    cls = cfg.get("class", "")
    if "runs" in cfg:
        return f"{flavour}_sample"
    if "UNetModel" in cls:
        return f"{flavour}_unet"
    if "AutoencoderKL" in cls:
        return "vae"
    if "ImageEmbedder" in cls:
        return "image"
    if "FrozenOpenCLIPEmbedder" in cls:
        return "text"
    if "ip_resampler.Resampler" in cls:
        return "resampler_vc"
    if "resampler.Resampler" in cls:
        return "resampler_dc"
    if str(cfg.get("function", "")).startswith("open_clip.tokenize"):
        return "tokenizer"
    return None


def fixture_folders(kind: str) -> list[Path]:
    if not FIXTURES_ROOT.is_dir():
        return []
    return sorted(p for p in FIXTURES_ROOT.iterdir() if p.is_dir() and fixture_kind(p) == kind)


def manifests() -> list[Path]:
    if not FIXTURES_ROOT.is_dir():
        return []
    return sorted(FIXTURES_ROOT.glob("manifest_*.json.gz"))


def load_manifest(path: Path) -> dict[str, list[int]]:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def load_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_tensors(path: Path, float32: bool = True) -> dict[str, torch.Tensor]:
    """Load a safetensors file; float16 fixture weights are cast to float32 as the README prescribes."""
    out = load_file(str(path))
    if float32:
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
    return out


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|, the tolerance measure of the fixtures README."""
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def params(kind: str, cases_of=None):
    """pytest params over the folders of a kind (and optionally their cases), ids naming the folder."""
    out = []
    for folder in fixture_folders(kind):
        if cases_of is None:
            out.append(pytest.param(folder, id=folder.name))
        else:
            for case in cases_of(folder):
                out.append(pytest.param(folder, case, id=f"{folder.name}-{case}"))
    if not out:
        out.append(pytest.param(None, *([None] if cases_of else []), marks=pytest.mark.skip(reason=f"no {kind} fixtures under {FIXTURES_ROOT}"), id=f"no-{kind}-fixtures"))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# building official modules through the public conversion path, shared by the fixture tests


def fixture_flavour(cfg: dict) -> str:
    """"dc" for a DynamiCrafter fixture, else "vc" (its config's official_repo)."""
    return "dc" if "DynamiCrafter" in cfg["official_repo"] else "vc"


def sample_weights_folder(sample_cfg: dict, part: str) -> Path:
    """The fixture folder a sampling fixture names for one of its components ('unet', 'vae', ...)."""
    return FIXTURES_ROOT / sample_cfg["weights"][part].split("/")[0]


def owned_unet_weights(folder: Path, variant: str) -> dict[str, torch.Tensor]:
    """The subset of a U-Net fixture's superset weights that the variant's module owns (the README's loading rule)."""
    from vidiff.conversion.common import strip_prefix
    from vidiff.conversion.unet import expected_unet_shapes, rename_official_key, unet_config_from_official

    cfg = load_config(folder)
    spec = cfg["variants"][variant]
    weights = strip_prefix(load_tensors(folder / cfg["weights_file"]), cfg["key_prefix"])
    expected = expected_unet_shapes(unet_config_from_official(spec["kwargs"], fixture_flavour(cfg)))
    owned = {k: v for k, v in weights.items() if rename_official_key(k) in expected}
    assert len(owned) == spec["state_dict_keys_used"], "the variant's module owns a different number of keys"
    return owned


def build_unet_variant(folder: Path, variant: str):
    """A U-Net fixture variant as a vidiff UNet3DModel (eval mode), converted with the official kwargs."""
    from vidiff.conversion.unet import convert_unet
    from vidiff.models.unet3d import UNet3DModel

    cfg = load_config(folder)
    conv = convert_unet(owned_unet_weights(folder, variant), cfg["variants"][variant]["kwargs"], fixture_flavour(cfg))
    model = UNet3DModel.from_config(conv.config)
    model.load_state_dict(conv.state_dict, strict=True)
    return model.eval()


def manifest_params() -> list:
    """One pytest param per full-size key manifest, or a single skipped param when no manifest is present."""
    out = [pytest.param(p, id=p.name.removesuffix(".json.gz")) for p in manifests()]
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="no manifests"))]
