"""Reading official checkpoints: the container formats the LVDM code bases produce."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says what is wrong."""


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat ``{key: tensor}`` dict from an official ``.ckpt``/``.pt``/``.pth`` or ``.safetensors`` file.

    Accepts the Lightning layout (``{"state_dict": ...}``), a plain state dict and the DeepSpeed layout
    (``{"module": ...}`` whose keys carry a 16-character ``_forward_module.`` prefix).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(path))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ConversionError(f"cannot read {path} as safetensors (truncated or corrupt?): {err}") from err
    from ..utils.io import UnsafeCheckpointError, safe_torch_load

    try:
        obj = safe_torch_load(path, mmap=_mmap_ok(path))
    except UnsafeCheckpointError as err:
        raise ConversionError(str(err)) from None
    except Exception as err:  # torch raises many types for truncated zips / pickles
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint (truncated, corrupt, or not a checkpoint): {err}"
        ) from err
    return _flatten_container(obj, path)


def _mmap_ok(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _flatten_container(obj: object, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif "module" in obj and isinstance(obj["module"], Mapping):
        # DeepSpeed: keys are "_forward_module.<key>" (16 characters), as the official loaders strip them.
        obj = {k[16:] if k.startswith("_forward_module.") else k: v for k, v in obj["module"].items()}
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f"{path} holds no tensors (keys: {list(obj)[:8]})")
    return tensors


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The sub-dict under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def check_shapes(
    expected: Mapping[str, Iterable[int]], got: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise one ConversionError listing every missing key and every shape mismatch."""
    missing = [k for k in expected if k not in got]
    wrong = [
        f"{k}: expected {tuple(expected[k])}, got {tuple(got[k].shape)}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k])
    ]
    if missing or wrong:
        lines = []
        if missing:
            head = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            lines.append(f"missing keys: {head}")
        if wrong:
            head = "; ".join(wrong[:10]) + (f"; ... ({len(wrong)} in all)" if len(wrong) > 10 else "")
            lines.append(f"shape mismatches: {head}")
        raise ConversionError(f"{what}: checkpoint does not match the expected layout ({' | '.join(lines)})")
