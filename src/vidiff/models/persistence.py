"""The "config.json + model.safetensors" folder format shared by vidiff's own modules (encoders, projector).

One implementation, so every component saves atomically, loads without a random-initialisation pass (built on the meta
device, weights assigned) and reports a bad folder the same way.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file

from vidiff.utils.io import atomic_save_safetensors, atomic_write_json

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "SafetensorsPersistence", "read_json_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_M = TypeVar("_M", bound="SafetensorsPersistence")


def read_json_config(path: str | os.PathLike, saved_by: str) -> dict[str, Any]:
    """The JSON object in ``path``; a missing file, broken JSON or a non-object is an error naming ``saved_by``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {path.parent} a saved {saved_by}?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a config object")
    return config


class SafetensorsPersistence:
    """Mixin for an ``nn.Module`` whose ``__init__`` keyword arguments are exactly its ``config`` dict.

    The saved config carries ``_class_name`` so that a folder of one component is not loaded as another. Override
    :meth:`_after_assign_load` for fix-ups that an assign-load of a meta-built model needs (non-persistent buffers).
    """

    CONFIG_NAME = CONFIG_NAME
    WEIGHTS_NAME = WEIGHTS_NAME
    config: dict[str, Any]

    @classmethod
    def from_config(cls: type[_M], config: Mapping[str, Any]) -> _M:
        """Build (randomly initialised, or on meta inside ``torch.device("meta")``) from a config dict."""
        if not isinstance(config, Mapping):
            raise ValueError(f"{cls.__name__} config must be a dict, got {type(config).__name__}")
        known = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = set(config) - set(known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} config keys: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**config)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json + model.safetensors; each file is written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        atomic_save_safetensors(state, folder / self.WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_json(folder / self.CONFIG_NAME, {"_class_name": type(self).__name__, **self.config})

    @classmethod
    def from_pretrained(cls: type[_M], folder: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> _M:
        """Load what save_pretrained wrote, without a random initialisation pass (built on meta, weights assigned)."""
        folder = Path(folder)
        config_path, weights_path = folder / cls.CONFIG_NAME, folder / cls.WEIGHTS_NAME
        config = read_json_config(config_path, cls.__name__)
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path} not found (is {folder} a saved {cls.__name__}?)")
        saved_class = config.pop("_class_name", cls.__name__)
        if saved_class != cls.__name__:
            raise ValueError(f"{config_path} was saved by {saved_class}, not by {cls.__name__}")
        with torch.device("meta"):
            model = cls.from_config(config)
        state = load_file(str(weights_path))
        if torch_dtype is not None:
            state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)  # type: ignore[attr-defined]
        except RuntimeError as err:
            raise ValueError(f"{weights_path} does not match {config_path}: {err}") from err
        model._after_assign_load()
        return model.eval()  # type: ignore[attr-defined]

    def _after_assign_load(self) -> None:
        """Hook: repair what an assign-load leaves on the meta device (the default needs nothing)."""
