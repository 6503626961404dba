"""Kernel distance (KID for images, KVD for videos): unbiased MMD² with the cubic polynomial kernel.

k(x, y) = (xᵀy / d + 1)³ on d-dimensional features, as in the KID paper (Bińkowski et al. 2018) and the FVD paper's
KVD. Unlike the Fréchet distance the estimator is unbiased in the number of samples, so it is averaged over random
subsets of equal size (drawn without replacement, seeded) and reported with its spread across subsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vidiff.metrics.frechet import _as_float64

__all__ = ["KernelDistance", "kernel_distance", "mmd2_unbiased", "polynomial_kernel"]


@dataclass(frozen=True)
class KernelDistance:
    value: float
    std: float
    subset_size: int
    num_subsets: int
    seed: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """Gram matrix (xᵢᵀyⱼ / d + coef0)^degree."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between two equal-size samples (diagonal terms of k(x, x) and k(y, y) left out)."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"mmd2_unbiased needs two samples of equal size >= 2, got {x.shape[0]} and {y.shape[0]}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def kernel_distance(
    features1: Any, features2: Any, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> KernelDistance:
    """KID / KVD between two ``(n, d)`` feature sets: mean and std of the unbiased MMD² over random subsets.

    The subset size is ``min(subset_size, n1, n2)``; the value actually used is returned with the result.
    """
    x, y = _as_float64(features1, "features1"), _as_float64(features2, "features2")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got shapes {x.shape} and {y.shape}")
    num_subsets = _positive_int(num_subsets, "num_subsets")
    m = min(_positive_int(subset_size, "subset_size"), x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kernel distance needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        values[i] = mmd2_unbiased(a, b)
    return KernelDistance(float(values.mean()), float(values.std()), m, num_subsets, int(seed))
