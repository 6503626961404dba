"""The model folder: ``model_index.json`` plus one sub-folder per component, and the registry of released families.

One place reads and writes the index (with each component's class recorded, so a component trained with a custom
class loads back with it), resolves and loads components, and holds the released VideoCrafter / DynamiCrafter
configurations with their conditioning flavour and official sampling defaults. Pipelines, conversion, training export
and evaluation all go through it. Folders written before the classes were recorded load with the default classes.

Importing this module does not import torch (the command line checks ``--model`` before loading anything).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CLASSES",
    "FAMILIES",
    "INDEX_NAME",
    "Family",
    "ModelFolderError",
    "class_path",
    "component_class",
    "load_component",
    "read_index",
    "try_read_index",
    "write_index",
]

INDEX_NAME = "model_index.json"
# The class each component is stored as when the index does not say (folders written by earlier versions).
DEFAULT_CLASSES: dict[str, str] = {
    "unet": "vidiff.models.unet3d:UNet3DModel",
    "vae": "vidiff.models.autoencoder:LDMAutoencoderKL",
    "text_encoder": "vidiff.models.text_encoder:OpenCLIPTextEncoder",
    "image_encoder": "vidiff.models.image_encoder:OpenCLIPImageEncoder",
    "image_projector": "vidiff.models.resampler:Resampler",
}


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or unreadable."""


def read_index(folder: str | os.PathLike, error: type[Exception] = ModelFolderError) -> dict[str, Any]:
    """The folder's ``model_index.json``; ``error`` (the caller's error type) with one line if it cannot be read."""
    path = Path(folder)
    if not path.is_dir():
        raise error(f"model folder not found: {path}")
    index = path / INDEX_NAME
    if not index.is_file():
        raise error(f"{path} is not a vidiff model folder (no {INDEX_NAME}); convert a checkpoint or train one")
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"cannot read {index}: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{index} must hold a JSON object, got {type(data).__name__}")
    return data


def try_read_index(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The index, or None where there is no readable one (for optional metadata such as a vocabulary)."""
    try:
        return read_index(folder)
    except ModelFolderError:
        return None


def class_path(obj: Any) -> str:
    """``module:QualName`` of a class or an instance."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def write_index(folder: str | os.PathLike, index: dict[str, Any], modules: dict[str, Any] | None = None) -> Path:
    """Write ``model_index.json`` atomically; ``modules`` (component name -> the saved module) records each
    component's class under ``component_classes`` (beside the classes the index already records)."""
    from vidiff.utils.io import atomic_write_text

    index = dict(index)
    if modules:
        classes = {**(index.get("component_classes") or {}), **{n: class_path(m) for n, m in modules.items()}}
        index["component_classes"] = dict(sorted(classes.items()))
    path = Path(folder) / INDEX_NAME
    atomic_write_text(path, json.dumps(index, indent=2) + "\n")
    return path


def component_class(index: dict[str, Any], name: str) -> str:
    """The class path a component is stored as: the one recorded in the index, else the default for its name."""
    recorded = (index.get("component_classes") or {}).get(name)
    if recorded:
        return recorded
    if name not in DEFAULT_CLASSES:
        raise ModelFolderError(f"no class is known for component {name!r}; record it in {INDEX_NAME} "
                               "component_classes")
    return DEFAULT_CLASSES[name]


def _import_class(path: str, error: type[Exception]) -> type:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise error(f"cannot import the component class {path!r}: {err}") from None
    if not isinstance(obj, type) or not hasattr(obj, "from_pretrained"):
        raise error(f"the component class {path!r} has no from_pretrained")
    return obj


def load_component(folder: str | os.PathLike, name: str, torch_dtype: Any = None, index: dict[str, Any] | None = None,
                   error: type[Exception] = ModelFolderError) -> Any:
    """Load ``folder/name`` with the class the index records for it (in eval mode)."""
    folder = Path(folder)
    index = read_index(folder, error) if index is None else index
    sub = folder / name
    if not sub.is_dir():
        raise error(f"model folder {folder} lacks its {name}/ component")
    try:
        cls = _import_class(component_class(index, name), error)
    except ModelFolderError as err:
        raise error(str(err)) from None
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        return cls.from_pretrained(sub, **kwargs).eval()
    except (FileNotFoundError, OSError, ValueError, KeyError) as err:
        raise error(f"cannot load {sub}: {err}") from None


# ---------------------------------------------------------------------------------------------------------------------
# The released VideoCrafter/DynamiCrafter configurations, as plain data.


@dataclass(frozen=True)
class Family:
    """One released configuration: how to build it and how the official scripts sample it."""

    name: str
    flavour: str  # "vc" (VideoCrafter code) or "dc" (DynamiCrafter code)
    task: str  # "t2v" or "i2v"
    model_params: dict  # official LatentDiffusion params that define the noise schedule
    unet: dict = field(default_factory=dict)  # vidiff U-Net config values the weights cannot tell
    defaults: dict = field(default_factory=dict)  # sampling defaults of the official scripts


_BASE = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
_VC_T2V = {"num_frames": 16, "num_inference_steps": 50, "guidance_scale": 12.0, "eta": 1.0,
           "timestep_spacing": "uniform", "guidance_rescale": 0.0, "height": 320, "width": 512, "fps": 28}
_DC = {"num_frames": 16, "num_inference_steps": 50, "guidance_scale": 7.5, "eta": 1.0,
       "timestep_spacing": "uniform_trailing", "guidance_rescale": 0.7}
_DC_V = {**_BASE, "parameterization": "v", "rescale_betas_zero_snr": True, "use_dynamic_rescale": True}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("vc1_t2v_512", "vc", "t2v", dict(_BASE), {"dropout": 0.0}, dict(_VC_T2V)),
        Family("vc1_t2v_1024", "vc", "t2v", {**_BASE, "use_scale": True, "fix_scale_bug": True},
               {"dropout": 0.0}, {**_VC_T2V, "height": 576, "width": 1024}),
        Family("vc2_t2v_512", "vc", "t2v", {**_BASE, "use_scale": True, "scale_b": 0.7}, {"dropout": 0.0}, dict(_VC_T2V)),
        Family("vc1_i2v_512", "vc", "i2v", {**_BASE, "use_scale": True, "scale_b": 0.7}, {"dropout": 0.0},
               {**_VC_T2V, "fps": 8}),
        Family("dc_256", "dc", "i2v", dict(_BASE), {"dropout": 0.1, "default_fps": 3},
               {**_DC, "timestep_spacing": "uniform", "guidance_rescale": 0.0, "height": 256, "width": 256, "fps": 3}),
        Family("dc_512", "dc", "i2v", {**_DC_V, "base_scale": 0.7}, {"dropout": 0.1, "default_fps": 24},
               {**_DC, "height": 320, "width": 512, "fps": 24}),
        Family("dc_1024", "dc", "i2v", {**_DC_V, "base_scale": 0.3}, {"dropout": 0.1, "default_fps": 10},
               {**_DC, "height": 576, "width": 1024, "fps": 10}),
        Family("dc_512_interp", "dc", "i2v", {**_DC_V, "base_scale": 0.7}, {"dropout": 0.1, "default_fps": 24},
               {**_DC, "height": 320, "width": 512, "fps": 5}),
    )
}
