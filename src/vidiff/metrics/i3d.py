"""I3D (Inflated Inception-v1, Kinetics-400) and the Fréchet / kernel video distances built on it.

Architecture: the RGB I3D of Carreira & Zisserman (2017) exactly as DeepMind's Sonnet model and its widely used PyTorch
port lay it out, so that port's state dicts (``rgb_imagenet.pt``: ``Conv3d_1a_7x7.conv3d.weight``,
``Conv3d_1a_7x7.bn.running_mean``, ``Mixed_3b.b1b.conv3d.weight``, ..., ``logits.conv3d.bias``) load unchanged. Every
unit is Conv3d (no bias) + BatchNorm (eps 1e-3) + ReLU with TensorFlow 'SAME' padding; max pools use 'SAME' padding
too; the head is a 2x7x7 average pool followed by a 1x1x1 conv with bias (the logits).

FVD protocol (Unterthiner et al. 2018, as in StyleGAN-V's I3D detector): one clip of 16 frames per video (frame stride
and start recorded), every frame resized to 224x224 (bilinear), values in [-1, 1], features = the 400 Kinetics logits
before softmax, averaged over the remaining time steps (one step for 16 frames). The 1024-d average-pool features are
available as ``feature_layer="pool"`` but are not what published FVD numbers use.

Minimum input: the fixed 2x7x7 head pool needs at least 9 frames and 193x193 pixels after resizing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidiff.metrics.feature_networks import evaluating, load_frozen_network
from vidiff.metrics.frechet import SqrtmMethod, frechet_distance_from_features
from vidiff.metrics.kernel import kernel_distance
from vidiff.metrics.protocols import (
    FVDProtocol,
    KVDProtocol,
    VideoFeatureProtocol,
    as_videos,
    iter_batches,
    metric_result,
    read_state_dict,
)

__all__ = [
    "I3D_MIN_FRAMES",
    "I3D_MIN_SIZE",
    "InceptionI3D",
    "VideoFeatures",
    "extract_i3d_features",
    "fvd",
    "kvd",
    "load_i3d",
    "select_clip",
    "stack_features",
]

I3D_MIN_FRAMES = 9
I3D_MIN_SIZE = 193
FeatureLayer = Literal["logits", "pool"]
_FEATURE_LAYERS = ("logits", "pool")

# (input channels, (b0, b1a, b1b, b2a, b2b, b3b)) of each Inception block, in network order.
_MIXED: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_padding(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float) -> torch.Tensor:
    """TensorFlow 'SAME': output size ceil(in / stride), the extra pixel (if any) padded at the end."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d with 'SAME' padding, then optional BatchNorm (eps 1e-3) and ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_padding(x, self.kernel, self.stride, 0.0))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pool with TensorFlow 'SAME' padding (padded cells never win)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_padding(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)


class InceptionBlock3D(nn.Module):
    """Four branches: 1x1x1; 1x1x1 -> 3x3x3; 1x1x1 -> 3x3x3; 3x3x3 max pool -> 1x1x1, concatenated."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.b0 = Unit3D(in_channels, c0)
        self.b1a = Unit3D(in_channels, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3D(nn.Module):
    """RGB I3D: ``(b, 3, t, h, w)`` in [-1, 1] -> ``(b, num_classes)`` logits (or 1024-d pooled features).

    Convolutions start from a variance-preserving (He) initialisation, so a randomly initialised network still gives
    well-scaled features (useful for tests); real evaluation loads the Kinetics weights with :func:`load_i3d`.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock3D(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionBlock3D(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock3D(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionBlock3D(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionBlock3D(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionBlock3D(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionBlock3D(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock3D(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionBlock3D(*_MIXED["Mixed_5c"])
        self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, bias=True)
        self._stages = (
            "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
            "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
            "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
        )  # fmt: skip
        for module in self.modules():
            if isinstance(module, nn.Conv3d) and module is not self.logits.conv3d:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        self.weights_file: str | None = None
        self.weights_sha256: str | None = None

    def forward(self, x: torch.Tensor, feature_layer: FeatureLayer = "logits") -> torch.Tensor:
        if feature_layer not in _FEATURE_LAYERS:
            raise ValueError(f"feature_layer must be one of {_FEATURE_LAYERS}, got {feature_layer!r}")
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"I3D expects (b, {self.in_channels}, t, h, w), got shape {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if t < I3D_MIN_FRAMES or h < I3D_MIN_SIZE or w < I3D_MIN_SIZE:
            raise ValueError(
                f"I3D needs at least {I3D_MIN_FRAMES} frames of {I3D_MIN_SIZE}x{I3D_MIN_SIZE} pixels (its head pools "
                f"2x7x7), got {t} frames of {h}x{w}; the FVD protocol uses 16 frames at 224x224"
            )
        for name in self._stages:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        if feature_layer == "pool":
            return x.mean(dim=(2, 3, 4))
        # The logits are a 1x1x1 conv, so averaging them over positions equals the logits of the averaged feature.
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> InceptionI3D:
    """The 400-class RGB I3D from a local state dict with the PyTorch port's key names, in eval mode.

    The file's SHA-256 is kept on the model (``weights_sha256``) and written into every FVD / KVD protocol.
    """
    state = read_state_dict(path, "I3D")
    logits = state.get("logits.conv3d.weight")
    num_classes = int(logits.shape[0]) if logits is not None and logits.ndim == 5 else 400
    model = InceptionI3D(num_classes=num_classes)
    return load_frozen_network(model, state, path, "I3D (PyTorch port key names)", device, dtype)


@dataclass(frozen=True)
class VideoFeatures:
    """I3D features of a video set together with the protocol that produced them (reusable for FVD and KVD)."""

    features: np.ndarray
    protocol: VideoFeatureProtocol

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def select_clip(videos: torch.Tensor, frames_per_clip: int = 16, frame_stride: int = 1, start_frame: int = 0) -> torch.Tensor:
    """Frames ``start, start + stride, ...`` (``frames_per_clip`` of them) of float ``(n, 3, t, h, w)`` videos."""
    needed = start_frame + (frames_per_clip - 1) * frame_stride + 1
    if videos.shape[2] < needed:
        raise ValueError(
            f"a clip of {frames_per_clip} frames with stride {frame_stride} from frame {start_frame} needs "
            f"{needed} frames, but the videos have {videos.shape[2]}"
        )
    return videos[:, :, start_frame:needed:frame_stride]


def _resize_frames(videos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    n, c, t, h, w = videos.shape
    if (h, w) == size:
        return videos
    frames = videos.transpose(1, 2).reshape(n * t, c, h, w)
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)
    return frames.reshape(n, t, c, *size).transpose(1, 2)


@torch.no_grad()
def extract_i3d_features(
    videos: Any,
    i3d: InceptionI3D,
    batch_size: int = 8,
    frames_per_clip: int = 16,
    frame_stride: int = 1,
    start_frame: int = 0,
    resolution: int = 224,
    feature_layer: FeatureLayer = "logits",
) -> VideoFeatures:
    """I3D features (float64, one row per video) under the FVD clip protocol; runs on the model's device / dtype."""
    if not isinstance(i3d, InceptionI3D):
        raise ValueError(f"i3d must be an InceptionI3D (see load_i3d), got {type(i3d).__name__}")
    if feature_layer not in _FEATURE_LAYERS:
        raise ValueError(f"feature_layer must be one of {_FEATURE_LAYERS}, got {feature_layer!r}")
    frames_per_clip = _check_int(frames_per_clip, "frames_per_clip", I3D_MIN_FRAMES)
    frame_stride = _check_int(frame_stride, "frame_stride", 1)
    start_frame = _check_int(start_frame, "start_frame", 0)
    resolution = _check_int(resolution, "resolution", I3D_MIN_SIZE)
    rows = []
    with evaluating(i3d) as (device, dtype):
        for batch in iter_batches(videos, batch_size, "videos"):
            x = as_videos(torch.as_tensor(batch).to(device))
            x = select_clip(x, frames_per_clip, frame_stride, start_frame)
            x = _resize_frames(x, (resolution, resolution))
            rows.append(i3d(x.to(dtype), feature_layer=feature_layer).double().cpu().numpy())
    features = np.concatenate(rows, axis=0)
    protocol = VideoFeatureProtocol(
        feature_layer=f"logits ({i3d.num_classes} classes, before softmax, mean over time)"
        if feature_layer == "logits"
        else "avg pool after Mixed_5c (1024-d, mean over time)",
        feature_dim=int(features.shape[1]),
        frames_per_clip=frames_per_clip,
        frame_stride=frame_stride,
        start_frame=start_frame,
        resolution=(resolution, resolution),
        weights_file=i3d.weights_file,
        weights_sha256=i3d.weights_sha256,
    )
    return VideoFeatures(features, protocol)


def _features_pair(
    real: Any, fake: Any, i3d: InceptionI3D | None, extract_kwargs: dict[str, Any]
) -> tuple[VideoFeatures, VideoFeatures]:
    out = []
    for name, source in (("real", real), ("fake", fake)):
        if isinstance(source, VideoFeatures):
            out.append(source)
        elif i3d is None:
            raise ValueError(f"{name} videos were given as pixels, so an I3D model is needed (see load_i3d)")
        else:
            out.append(extract_i3d_features(source, i3d, **extract_kwargs))
    real_f, fake_f = out
    if real_f.protocol != fake_f.protocol:
        raise ValueError(
            "real and fake features were extracted under different protocols:\n"
            f"  real: {real_f.protocol}\n  fake: {fake_f.protocol}"
        )
    for name, feats in (("real", real_f), ("fake", fake_f)):
        if len(feats) < 2:
            raise ValueError(f"need at least 2 {name} videos, got {len(feats)}")
    return real_f, fake_f


def fvd(
    real_videos: Any | VideoFeatures,
    fake_videos: Any | VideoFeatures,
    i3d: InceptionI3D | None = None,
    batch_size: int = 8,
    frames_per_clip: int = 16,
    frame_stride: int = 1,
    start_frame: int = 0,
    resolution: int = 224,
    sqrtm_method: SqrtmMethod = "sqrtm",
    eps: float = 1e-6,
) -> dict[str, Any]:
    """Fréchet Video Distance between two video sets (pixels or precomputed :class:`VideoFeatures`).

    Published FVDs use thousands of videos (2048 is common); with fewer videos than feature dimensions (400) the
    covariances are singular and the value is strongly biased upwards, so compare only numbers with equal counts.
    ``sqrtm_method="eigh"`` gives the same quantity without ``scipy.linalg.sqrtm`` (faster, and exact on singular
    covariances); the default keeps the reference route.
    """
    kwargs = dict(batch_size=batch_size, frames_per_clip=frames_per_clip, frame_stride=frame_stride,
                  start_frame=start_frame, resolution=resolution)
    real_f, fake_f = _features_pair(real_videos, fake_videos, i3d, kwargs)
    value = frechet_distance_from_features(real_f.features, fake_f.features, eps=eps, method=sqrtm_method)
    protocol = FVDProtocol(num_real=len(real_f), num_fake=len(fake_f), features=real_f.protocol,
                           sqrtm_method=sqrtm_method, eps=float(eps))
    return metric_result("fvd", value, protocol)


def kvd(
    real_videos: Any | VideoFeatures,
    fake_videos: Any | VideoFeatures,
    i3d: InceptionI3D | None = None,
    batch_size: int = 8,
    frames_per_clip: int = 16,
    frame_stride: int = 1,
    start_frame: int = 0,
    resolution: int = 224,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Kernel Video Distance (unbiased polynomial-kernel MMD² on I3D features), mean and std over subsets."""
    kwargs = dict(batch_size=batch_size, frames_per_clip=frames_per_clip, frame_stride=frame_stride,
                  start_frame=start_frame, resolution=resolution)
    real_f, fake_f = _features_pair(real_videos, fake_videos, i3d, kwargs)
    kd = kernel_distance(real_f.features, fake_f.features, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    protocol = KVDProtocol(num_real=len(real_f), num_fake=len(fake_f), features=real_f.protocol,
                           subset_size=kd.subset_size, num_subsets=kd.num_subsets, seed=kd.seed)
    return metric_result("kvd", kd.value, protocol, std=kd.std)


def stack_features(parts: Iterable[VideoFeatures]) -> VideoFeatures:
    """Concatenate feature sets extracted in pieces (e.g. per shard) after checking they share one protocol."""
    parts = list(parts)
    if not parts:
        raise ValueError("stack_features needs at least one VideoFeatures")
    first = parts[0].protocol
    for i, part in enumerate(parts[1:], start=1):
        if part.protocol != first:
            raise ValueError(f"part {i} was extracted under a different protocol: {part.protocol} vs {first}")
    return VideoFeatures(np.concatenate([p.features for p in parts], axis=0), first)
