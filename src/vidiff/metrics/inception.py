"""FID's Inception-v3 (TF ``inception-2015-12-05`` graph) and the FID / Inception Score built on it.

The network is torchvision's Inception-v3 layout with the four block changes that make the TF-ported FID weights
(``pt_inception-2015-12-05-*.pth``, pytorch-fid's key names: ``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch5x5_1.bn.running_var``, ..., ``fc.weight``) reproduce the TF graph: the average pools inside
Mixed_5b-5d, Mixed_6b-6e and Mixed_7b exclude padding from the mean (TF semantics), and Mixed_7c pools with a max pool.
BatchNorm eps is 1e-3; there is no auxiliary head; ``fc`` has 1008 outputs (the TF graph's class count).

Protocols: images are resized to 299x299 (bilinear, as pytorch-fid), values in [-1, 1]. FID uses the 2048-d pool3
features. IS uses softmax over the 1008 logits computed as ``pool3 @ fc.weight.T`` *without the bias*, which is what
the original TF Inception Score code reads from the graph (torch-fidelity's ``logits_unbiased``), split into 10
contiguous chunks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidiff.metrics.feature_networks import evaluating, load_frozen_network
from vidiff.metrics.frechet import SqrtmMethod, frechet_distance_from_features
from vidiff.metrics.protocols import (
    FIDProtocol,
    ImageFeatureProtocol,
    ISProtocol,
    as_images,
    iter_batches,
    metric_result,
    read_state_dict,
)

__all__ = [
    "FIDInceptionV3",
    "ImageFeatures",
    "extract_inception_features",
    "fid",
    "inception_score",
    "inception_score_from_logits",
    "load_inception",
]

INCEPTION_RESOLUTION = 299
INCEPTION_MIN_SIZE = 75


class BasicConv2d(nn.Module):
    """Conv2d (no bias) + BatchNorm (eps 1e-3) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's 'SAME' average pool divides by the number of real (unpadded) pixels in the window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """The last two blocks; the FID graph's final block pools with max instead of average."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInceptionV3(nn.Module):
    """``(b, 3, h, w)`` in [-1, 1] (h, w >= 75; the protocol uses 299) -> 2048-d pool3 features.

    Convolutions start from a variance-preserving (He) initialisation so random-weight tests see well-scaled features;
    real evaluation loads the TF-ported weights with :func:`load_inception`.
    """

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        self.weights_file: str | None = None
        self.weights_sha256: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception expects (b, 3, h, w), got shape {tuple(x.shape)}")
        if min(x.shape[2:]) < INCEPTION_MIN_SIZE:
            raise ValueError(f"Inception needs images of at least {INCEPTION_MIN_SIZE}x{INCEPTION_MIN_SIZE}, "
                             f"got {tuple(x.shape[2:])}; the FID protocol resizes to 299x299")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))

    def class_logits(self, pool: torch.Tensor, bias: bool = False) -> torch.Tensor:
        """``(b, 2048)`` pool3 features -> ``(b, num_classes)`` logits; IS uses them without the bias."""
        return F.linear(pool, self.fc.weight, self.fc.bias if bias else None)


def load_inception(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> FIDInceptionV3:
    """FID Inception-v3 from a local state dict with pytorch-fid's ``pt_inception-2015-12-05`` key names, in eval mode."""
    state = read_state_dict(path, "Inception")
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 1008
    model = FIDInceptionV3(num_classes=num_classes)
    return load_frozen_network(model, state, path, "FID Inception-v3 (pt_inception-2015-12-05 key names)", device, dtype)


@dataclass(frozen=True)
class ImageFeatures:
    """pool3 features and unbiased logits of an image set, with the protocol that produced them."""

    pool: np.ndarray
    logits: np.ndarray
    protocol: ImageFeatureProtocol

    def __len__(self) -> int:
        return int(self.pool.shape[0])


@torch.no_grad()
def extract_inception_features(
    images: Any, inception: FIDInceptionV3, batch_size: int = 50, resolution: int = INCEPTION_RESOLUTION
) -> ImageFeatures:
    """pool3 features and bias-free logits (float64, one row per image); runs on the model's device / dtype."""
    if not isinstance(inception, FIDInceptionV3):
        raise ValueError(f"inception must be a FIDInceptionV3 (see load_inception), got {type(inception).__name__}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < INCEPTION_MIN_SIZE:
        raise ValueError(f"resolution must be an int >= {INCEPTION_MIN_SIZE}, got {resolution!r}")
    pools, logits = [], []
    with evaluating(inception) as (device, dtype):
        for batch in iter_batches(images, batch_size, "images"):
            x = as_images(torch.as_tensor(batch).to(device))
            if tuple(x.shape[2:]) != (resolution, resolution):
                x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                  antialias=False)
            pool = inception(x.to(dtype))
            pools.append(pool.double().cpu().numpy())
            logits.append(inception.class_logits(pool).double().cpu().numpy())
    protocol = ImageFeatureProtocol(
        logits=f"pool3 @ fc.weight.T (no bias), {inception.num_classes} classes",
        resolution=(resolution, resolution),
        weights_file=inception.weights_file,
        weights_sha256=inception.weights_sha256,
    )
    return ImageFeatures(np.concatenate(pools), np.concatenate(logits), protocol)


def _features(source: Any, inception: FIDInceptionV3 | None, name: str, batch_size: int, resolution: int) -> ImageFeatures:
    if isinstance(source, ImageFeatures):
        return source
    if inception is None:
        raise ValueError(f"{name} were given as pixels, so an Inception model is needed (see load_inception)")
    return extract_inception_features(source, inception, batch_size=batch_size, resolution=resolution)


def fid(
    real_images: Any | ImageFeatures,
    fake_images: Any | ImageFeatures,
    inception: FIDInceptionV3 | None = None,
    batch_size: int = 50,
    resolution: int = INCEPTION_RESOLUTION,
    sqrtm_method: SqrtmMethod = "sqrtm",
    eps: float = 1e-6,
) -> dict[str, Any]:
    """Fréchet Inception Distance (pool3, 2048-d). For videos, pass ``video_frames_as_images(videos)``."""
    real = _features(real_images, inception, "real images", batch_size, resolution)
    fake = _features(fake_images, inception, "fake images", batch_size, resolution)
    if real.protocol != fake.protocol:
        raise ValueError(f"real and fake features come from different protocols:\n  real: {real.protocol}\n"
                         f"  fake: {fake.protocol}")
    value = frechet_distance_from_features(real.pool, fake.pool, eps=eps, method=sqrtm_method)
    protocol = FIDProtocol(num_real=len(real), num_fake=len(fake), features=real.protocol,
                           sqrtm_method=sqrtm_method, eps=float(eps))
    return metric_result("fid", value, protocol)


def inception_score_from_logits(logits: Any, splits: int = 10) -> tuple[float, float]:
    """Mean and std over ``splits`` contiguous chunks of exp(E_x KL(p(y|x) || p(y))), computed in float64."""
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (n, classes) with at least 2 classes, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    if not isinstance(splits, int) or isinstance(splits, bool) or not 1 <= splits <= z.shape[0]:
        raise ValueError(f"splits must be an int in [1, {z.shape[0]}] (number of samples), got {splits!r}")
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    n = z.shape[0]
    scores = []
    for i in range(splits):
        part_p, part_log_p = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = np.log(part_p.mean(axis=0, keepdims=True))
        kl = (part_p * (part_log_p - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(
    images: Any | ImageFeatures,
    inception: FIDInceptionV3 | None = None,
    splits: int = 10,
    batch_size: int = 50,
    resolution: int = INCEPTION_RESOLUTION,
) -> dict[str, Any]:
    """Inception Score (value = mean over splits, with its std). For videos, pass ``video_frames_as_images``."""
    feats = _features(images, inception, "images", batch_size, resolution)
    mean, std = inception_score_from_logits(feats.logits, splits)
    return metric_result("inception_score", mean, ISProtocol(num_images=len(feats), splits=splits,
                                                             features=feats.protocol), std=std)
