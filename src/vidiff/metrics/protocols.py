"""Evaluation protocols: every choice that changes a metric's number, recorded next to the number.

FVD, FID, IS and CLIPSIM values from different papers are often not comparable because the clip length, frame stride,
resize rule, feature layer or sample count differ silently. Each metric here returns a plain JSON-ready dict
``{"metric", "value", ..., "protocol"}`` whose ``protocol`` is one of the dataclasses below, so a number never travels
without the settings that produced it.

This module also pins the *input* convention shared by all metrics (vidiff's own tensor layouts):

* videos: float ``(n, 3, t, h, w)`` in [-1, 1] (model output), or uint8 ``(n, t, h, w, 3)`` (decoded frames);
* images: float ``(n, 3, h, w)`` in [-1, 1], or uint8 ``(n, h, w, 3)``.

A source may be one such batch (tensor or numpy array) or an iterable of batches, so large sets can be streamed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidiff.utils.io import atomic_write_json

__all__ = [
    "CLIPModelProtocol",
    "CLIPSIMProtocol",
    "FIDProtocol",
    "FVDProtocol",
    "FrameConsistencyProtocol",
    "ISProtocol",
    "ImageFeatureProtocol",
    "KVDProtocol",
    "PSNRProtocol",
    "Protocol",
    "SSIMProtocol",
    "VideoFeatureProtocol",
    "as_images",
    "as_videos",
    "iter_batches",
    "load_checked_state_dict",
    "metric_result",
    "read_state_dict",
    "save_result",
    "sha256_file",
    "video_frames_as_images",
]

_RANGE_TOLERANCE = 1e-3
FLOAT_VIDEO_LAYOUT = "float (n, 3, t, h, w) in [-1, 1] or uint8 (n, t, h, w, 3)"
FLOAT_IMAGE_LAYOUT = "float (n, 3, h, w) in [-1, 1] or uint8 (n, h, w, 3)"
STATISTICS = "mean and unbiased covariance (n - 1) of float64 features"


# --------------------------------------------------------------------------------------------------------------------
# protocol records


@dataclass(frozen=True)
class Protocol:
    """Base: JSON round trip for (nested) protocol dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        """Rebuild from :meth:`to_dict` output (lists back to tuples, nested protocols rebuilt)."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        kwargs = {}
        for name, value in data.items():
            nested = _protocol_type(hints[name])
            if nested is not None and isinstance(value, dict):
                value = nested.from_dict(value)
            kwargs[name] = _deep_tuple(value)
        return cls(**kwargs)


def _protocol_type(hint: Any) -> type[Protocol] | None:
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, Protocol):
            return candidate
    return None


def _deep_tuple(value: Any) -> Any:
    return tuple(_deep_tuple(v) for v in value) if isinstance(value, list) else value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


@dataclass(frozen=True)
class VideoFeatureProtocol(Protocol):
    """How clips were cut, resized and embedded for FVD / KVD."""

    network: str = "I3D (Inflated Inception-v1, Kinetics-400)"
    feature_layer: str = "logits"
    feature_dim: int = 400
    frames_per_clip: int = 16
    frame_stride: int = 1
    start_frame: int = 0
    resolution: tuple[int, int] = (224, 224)
    resize: str = "bilinear (torch, align_corners=False, no antialias) to resolution; aspect ratio not kept"
    value_range: str = "[-1, 1]"
    weights_file: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class FVDProtocol(Protocol):
    num_real: int
    num_fake: int
    features: VideoFeatureProtocol = field(default_factory=VideoFeatureProtocol)
    statistics: str = STATISTICS
    sqrtm_method: str = "sqrtm"
    eps: float = 1e-6


@dataclass(frozen=True)
class KVDProtocol(Protocol):
    num_real: int
    num_fake: int
    features: VideoFeatureProtocol = field(default_factory=VideoFeatureProtocol)
    kernel: str = "polynomial k(x, y) = (x.y / d + 1)^3"
    estimator: str = "unbiased MMD^2, averaged over random subsets (without replacement)"
    subset_size: int = 1000
    num_subsets: int = 100
    seed: int = 0


@dataclass(frozen=True)
class ImageFeatureProtocol(Protocol):
    """How images were resized and embedded for FID / IS."""

    network: str = "Inception-v3 (TF inception-2015-12-05 graph, FID variant blocks)"
    feature_layer: str = "pool3"
    feature_dim: int = 2048
    logits: str = "pool3 @ fc.weight.T (no bias), 1008 classes"
    resolution: tuple[int, int] = (299, 299)
    resize: str = "bilinear (torch, align_corners=False, no antialias) to resolution"
    value_range: str = "[-1, 1]"
    weights_file: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class FIDProtocol(Protocol):
    num_real: int
    num_fake: int
    features: ImageFeatureProtocol = field(default_factory=ImageFeatureProtocol)
    statistics: str = STATISTICS
    sqrtm_method: str = "sqrtm"
    eps: float = 1e-6


@dataclass(frozen=True)
class ISProtocol(Protocol):
    num_images: int
    splits: int = 10
    split_order: str = "contiguous chunks in input order"
    features: ImageFeatureProtocol = field(default_factory=ImageFeatureProtocol)
    formula: str = "exp(mean_x KL(p(y|x) || p(y))) per split; value = mean over splits, std over splits"


@dataclass(frozen=True)
class CLIPModelProtocol(Protocol):
    """Which CLIP towers and which image/text preprocessing produced the embeddings."""

    model_path: str | None = None
    weights_sha256: tuple[tuple[str, str], ...] = ()
    tokenizer: str = "vidiff OpenCLIP BPE (OpenAI CLIP vocabulary), context 77"
    image_size: int = 224
    resize: str = "shortest side to image_size, bicubic with antialias, then center crop"
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    embedding: str = "projected embeddings (text_projection / visual_projection), L2-normalised"


@dataclass(frozen=True)
class CLIPSIMProtocol(Protocol):
    num_videos: int
    num_frames: int
    clip: CLIPModelProtocol = field(default_factory=CLIPModelProtocol)
    scale: float = 100.0
    clip_at_zero: bool = True
    reduction: str = "per frame max(scale * cos(text, frame), 0); mean over frames; mean over videos"


@dataclass(frozen=True)
class FrameConsistencyProtocol(Protocol):
    num_videos: int
    num_frames: int
    space: str = "clip"
    clip: CLIPModelProtocol | None = None
    pixel_range: str | None = None
    reduction: str = "cos(e_i, e_i+1) over consecutive frames; mean over pairs; mean over videos"


@dataclass(frozen=True)
class PSNRProtocol(Protocol):
    num_videos: int
    num_frames: int
    value_range: str = "[0, 1] (float [-1, 1] mapped by (x + 1) / 2, uint8 by x / 255)"
    data_range: float = 1.0
    reduction: str = "per frame over all channels and pixels; mean over frames; mean over videos"


@dataclass(frozen=True)
class SSIMProtocol(Protocol):
    num_videos: int
    num_frames: int
    value_range: str = "[0, 1] (float [-1, 1] mapped by (x + 1) / 2, uint8 by x / 255)"
    data_range: float = 1.0
    window: str = "Gaussian 11x11, sigma 1.5"
    k1: float = 0.01
    k2: float = 0.03
    padding: str = "valid (no border pixels, as scikit-image / Wang et al. 2004)"
    reduction: str = "per frame: mean over channels and valid pixels; mean over frames; mean over videos"


# --------------------------------------------------------------------------------------------------------------------
# results


def metric_result(metric: str, value: float, protocol: Protocol, **extra: Any) -> dict[str, Any]:
    """The dict every metric returns: name, scalar value, extras (std, per-video scores), then the protocol."""
    out: dict[str, Any] = {"metric": metric, "value": float(value)}
    out.update(_jsonable(extra))
    out["protocol"] = protocol.to_dict()
    return out


def save_result(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a metric result (or a list of them) as JSON, atomically."""
    return atomic_write_json(path, result)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex digest of a weights file, so a result names the exact network that produced it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# inputs


def _to_tensor(x: Any, name: str, layout: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array ({layout}), got {type(x).__name__}")
    return x


def _check_float_range(x: torch.Tensor, name: str, layout: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"float {name} must be in [-1, 1] ({layout}); got values in [{lo:.4g}, {hi:.4g}]. "
            "Map [0, 1] data with x * 2 - 1, or pass uint8 frames"
        )


def as_videos(videos: Any, name: str = "videos") -> torch.Tensor:
    """One batch of videos in either accepted layout -> float32 ``(n, 3, t, h, w)`` in [-1, 1] (same device)."""
    x = _to_tensor(videos, name, FLOAT_VIDEO_LAYOUT)
    if x.dtype == torch.uint8:
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"uint8 {name} must be (n, t, h, w, 3), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
        return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    if not x.is_floating_point():
        raise ValueError(f"{name} must be float or uint8 ({FLOAT_VIDEO_LAYOUT}), got dtype {x.dtype}")
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"float {name} must be (n, 3, t, h, w) in [-1, 1], got shape {tuple(x.shape)}")
    _check_float_range(x, name, FLOAT_VIDEO_LAYOUT)
    return x.float()


def as_images(images: Any, name: str = "images") -> torch.Tensor:
    """One batch of images in either accepted layout -> float32 ``(n, 3, h, w)`` in [-1, 1] (same device)."""
    x = _to_tensor(images, name, FLOAT_IMAGE_LAYOUT)
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 {name} must be (n, h, w, 3), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if not x.is_floating_point():
        raise ValueError(f"{name} must be float or uint8 ({FLOAT_IMAGE_LAYOUT}), got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float {name} must be (n, 3, h, w) in [-1, 1], got shape {tuple(x.shape)}")
    _check_float_range(x, name, FLOAT_IMAGE_LAYOUT)
    return x.float()


def _is_batch(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def iter_batches(source: Any, batch_size: int, name: str = "source") -> Iterator[Any]:
    """Yield raw batches of at most ``batch_size`` items from one batch or an iterable of batches."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if _is_batch(source):
        chunks: Iterable[Any] = (source,)
    elif isinstance(source, (str, bytes, dict)) or not isinstance(source, Iterable):
        raise ValueError(f"{name} must be a tensor / numpy batch or an iterable of batches, got {type(source).__name__}")
    else:
        chunks = source
    empty = True
    for i, chunk in enumerate(chunks):
        if not _is_batch(chunk):
            raise ValueError(f"{name}: item {i} of the iterable is a {type(chunk).__name__}, expected a batch tensor")
        for start in range(0, len(chunk), batch_size):
            empty = False
            yield chunk[start:start + batch_size]
    if empty:
        raise ValueError(f"{name} holds no items")


def video_frames_as_images(videos: Any) -> Any:
    """Flatten videos into their frames, keeping the layout convention (for per-frame FID / IS).

    float ``(n, 3, t, h, w)`` -> ``(n * t, 3, h, w)``; uint8 ``(n, t, h, w, 3)`` -> ``(n * t, h, w, 3)``. An iterable of
    batches is flattened lazily.
    """
    if not _is_batch(videos):
        if isinstance(videos, (str, bytes, dict)) or not isinstance(videos, Iterable):
            raise ValueError(f"videos must be a batch or an iterable of batches, got {type(videos).__name__}")
        return (video_frames_as_images(v) for v in videos)
    x = torch.from_numpy(videos) if isinstance(videos, np.ndarray) else videos
    if x.ndim != 5:
        raise ValueError(f"videos must be 5-D ({FLOAT_VIDEO_LAYOUT}), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.reshape(-1, *x.shape[2:])
    if x.shape[1] != 3:
        raise ValueError(f"float videos must be (n, 3, t, h, w), got shape {tuple(x.shape)}")
    return x.transpose(1, 2).reshape(-1, 3, *x.shape[3:])


# --------------------------------------------------------------------------------------------------------------------
# weights files


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a local ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` state dict (TorchScript archives too).

    Nothing is ever downloaded: evaluation networks must be given as local files so the result can name their hash.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{what} weights file not found: {path}. vidiff never downloads weights; pass the path of a local copy"
        )
    if not path.is_file():
        raise ValueError(f"{what} weights path {path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as err:
            raise ValueError(f"cannot read {what} weights from {path}: {err}") from err
    elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
        from ..utils.io import UnsafeCheckpointError, safe_torch_load

        try:
            obj = safe_torch_load(path)
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            try:  # a TorchScript archive (e.g. a scripted detector) still carries a state dict
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception:
                raise ValueError(f"cannot read {what} weights from {path}: {err}") from err
    else:
        raise ValueError(f"{what} weights must be a .safetensors, .pt, .pth, .bin or .ckpt file, got {path.name}")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a {what} state dict (a non-empty mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: [{shown}{', ...' if len(keys) > limit else ''}]"


def load_checked_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, what: str
) -> None:
    """Load ``state`` into ``model`` only if names and shapes match exactly (BatchNorm counters excepted)."""
    expected = model.state_dict()

    def ignorable(key: str) -> bool:
        return key.endswith("num_batches_tracked")

    missing = [k for k in expected if k not in state and not ignorable(k)]
    unexpected = [k for k in state if k not in expected and not ignorable(k)]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if problems:
        raise ValueError(f"{path} is not a standard {what} state dict: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
