"""FVD-shapes: the Fréchet distance between shapes-world video sets in the feature space of the shapes classifier.

FVD with I3D needs Kinetics-trained weights and says little about 16 x 64 x 64 clips of flat shapes. FVD-shapes swaps I3D
for :mod:`vidiff.eval.shapes_classifier`, trained on the world's own labels, and keeps the rest of the recipe (Gaussian
fit, Fréchet distance from :mod:`vidiff.metrics.frechet`). Because Fréchet distances are biased upwards by finite samples,
every number should be read next to its **floor**: the distance between two independent real sets of the same size
(:func:`fvd_shapes_floor`), which is what a perfect generator would score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from vidiff.data.shapes import ShapesWorld, ShapesWorldConfig, render
from vidiff.eval.shapes_classifier import ShapesClassifier, load_shapes_classifier
from vidiff.metrics.frechet import SqrtmMethod, feature_statistics, frechet_distance
from vidiff.metrics.protocols import STATISTICS, Protocol, metric_result

__all__ = [
    "FVDShapesProtocol",
    "fvd_shapes",
    "fvd_shapes_features",
    "fvd_shapes_floor",
    "fvd_shapes_from_features",
    "reference_videos",
]


@dataclass(frozen=True)
class FVDShapesProtocol(Protocol):
    """Everything that fixes an FVD-shapes number (compare only numbers with equal protocols)."""

    num_real: int
    num_fake: int
    network: str = "vidiff shapes-world classifier (3D conv), penultimate layer"
    feature_dim: int = 128
    clip_shape: tuple[int, int, int] = (16, 64, 64)
    value_range: str = "[-1, 1] (uint8 frames are mapped with x / 127.5 - 1)"
    weights_file: str | None = None
    weights_sha256: str | None = None
    statistics: str = STATISTICS
    sqrtm_method: str = "sqrtm"
    eps: float = 1e-6


def _classifier(classifier: ShapesClassifier | None) -> ShapesClassifier:
    if classifier is None:
        return load_shapes_classifier()
    if not isinstance(classifier, ShapesClassifier):
        raise ValueError(
            f"classifier must be a ShapesClassifier (or None for the packaged one), got {type(classifier)}"
        )
    return classifier


def fvd_shapes_features(videos: Any, classifier: ShapesClassifier | None = None, batch_size: int = 64) -> torch.Tensor:
    """Classifier features ``(n, d)`` of a batch or an iterable of batches of clips (float [-1, 1] or uint8)."""
    return _classifier(classifier).features(videos, batch_size)


def _check_world(config: ShapesWorldConfig, clf: ShapesClassifier) -> None:
    c = clf.config
    if (config.num_frames, config.height, config.width) != (c.num_frames, c.height, c.width):
        raise ValueError(
            f"world clips are {config.num_frames}x{config.height}x{config.width} but the classifier takes "
            f"{c.num_frames}x{c.height}x{c.width}; use a matching ShapesWorldConfig or classifier"
        )


def reference_videos(
    n: int, seed: int = 0, world_config: ShapesWorldConfig | None = None, start: int = 0, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """Batches of ``n`` real clips ``(b, 3, t, h, w)`` in [-1, 1]: samples ``start .. start + n - 1`` of the world
    with this seed, rendered lazily so thousands of clips never sit in memory at once."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    config = dataclasses.replace(world_config or ShapesWorldConfig(), seed=seed)
    world = ShapesWorld(config)
    for lo in range(start, start + n, batch_size):
        hi = min(lo + batch_size, start + n)
        yield torch.stack([render(world.sample_spec(i)).video for i in range(lo, hi)])


def _distance(real: torch.Tensor, fake: torch.Tensor, sqrtm_method: SqrtmMethod, eps: float) -> float:
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"need at least 2 clips per set for a covariance, got {len(real)} real and {len(fake)} fake")
    mu1, s1 = feature_statistics(real)
    mu2, s2 = feature_statistics(fake)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps, method=sqrtm_method)


def _protocol(clf: ShapesClassifier, n_real: int, n_fake: int, sqrtm_method: str, eps: float) -> FVDShapesProtocol:
    c = clf.config
    return FVDShapesProtocol(
        num_real=n_real,
        num_fake=n_fake,
        feature_dim=c.feature_dim,
        clip_shape=(c.num_frames, c.height, c.width),
        weights_file=clf.source,
        weights_sha256=clf.weights_sha256,
        sqrtm_method=sqrtm_method,
        eps=float(eps),
    )


def fvd_shapes_from_features(
    real_features: Any,
    fake_features: Any,
    classifier: ShapesClassifier | None = None,
    sqrtm_method: SqrtmMethod = "sqrtm",
    eps: float = 1e-6,
) -> dict[str, Any]:
    """FVD-shapes from features already computed with :func:`fvd_shapes_features` (e.g. one real set, many fakes);
    ``classifier`` (default: the packaged one) is only recorded in the protocol."""
    clf = _classifier(classifier)
    real, fake = torch.as_tensor(real_features), torch.as_tensor(fake_features)
    for name, f in (("real_features", real), ("fake_features", fake)):
        if f.ndim != 2 or f.shape[1] != clf.config.feature_dim:
            raise ValueError(f"{name} must be (n, {clf.config.feature_dim}), got shape {tuple(f.shape)}")
    value = _distance(real, fake, sqrtm_method, eps)
    return metric_result("fvd_shapes", value, _protocol(clf, len(real), len(fake), sqrtm_method, eps))


def fvd_shapes(
    real_videos: Any,
    fake_videos: Any,
    classifier: ShapesClassifier | None = None,
    batch_size: int = 64,
    floor_seed: int | None = None,
    world_config: ShapesWorldConfig | None = None,
    sqrtm_method: SqrtmMethod = "sqrtm",
    eps: float = 1e-6,
) -> dict[str, Any]:
    """FVD-shapes between two sets of clips (each a batch or an iterable of batches, float [-1, 1] or uint8).

    With ``floor_seed`` the real-vs-real floor for the same number of clips (rendered from ``world_config``) is added
    as ``floor`` together with ``ratio_to_floor``.
    """
    clf = _classifier(classifier)
    real = clf.features(real_videos, batch_size)
    fake = real if fake_videos is real_videos else clf.features(fake_videos, batch_size)
    value = _distance(real, fake, sqrtm_method, eps)
    extra: dict[str, Any] = {}
    if floor_seed is not None:
        floor = fvd_shapes_floor(len(real), floor_seed, clf, world_config, batch_size, sqrtm_method, eps)["value"]
        extra = {"floor": floor, "ratio_to_floor": value / floor if floor > 0 else float("inf")}
    protocol = _protocol(clf, len(real), len(fake), sqrtm_method, eps)
    return metric_result("fvd_shapes", value, protocol, **extra)


def fvd_shapes_floor(
    n: int,
    seed: int = 0,
    classifier: ShapesClassifier | None = None,
    world_config: ShapesWorldConfig | None = None,
    batch_size: int = 64,
    sqrtm_method: SqrtmMethod = "sqrtm",
    eps: float = 1e-6,
) -> dict[str, Any]:
    """FVD-shapes between two independent sets of ``n`` real clips (samples 0..n-1 and n..2n-1 of the world seeded
    with ``seed``): the score of a perfect generator at this sample size."""
    clf = _classifier(classifier)
    config = world_config or ShapesWorldConfig()
    _check_world(config, clf)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (clips per set), got {n!r}")
    first = clf.features(reference_videos(n, seed, config, 0, batch_size), batch_size)
    second = clf.features(reference_videos(n, seed, config, n, batch_size), batch_size)
    value = _distance(first, second, sqrtm_method, eps)
    return metric_result("fvd_shapes_floor", value, _protocol(clf, n, n, sqrtm_method, eps), seed=seed)
