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
