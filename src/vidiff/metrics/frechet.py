"""Fréchet distance between Gaussians fitted to network features (the core of FID and FVD).

d² = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½), in float64. The default route is ``scipy.linalg.sqrtm`` on S1 S2, as in
the reference FID / FVD code, so numbers stay comparable with published tables. ``method="eigh"`` computes the same
trace as the eigenvalues of S1^½ S2 S1^½ (symmetric, so fast and stable even when there are fewer samples than feature
dimensions); it is exact for covariance matrices and is useful for small or rank-deficient sets. From features,
``frechet_distance_from_features(..., method="eigh")`` uses the same identity in its cheapest form when there are fewer
samples than dimensions: with S_i = A_iᵀA_i (A_i the centred features over sqrt(n_i - 1)), tr (S1 S2)^½ is the sum of
the singular values of A1 A2ᵀ, an n1 x n2 matrix.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from scipy import linalg

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features"]

SqrtmMethod = Literal["sqrtm", "eigh"]
_METHODS = ("sqrtm", "eigh")
_IMAG_ATOL = 1e-3


def _as_float64(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}") from err
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (n - 1) covariance of ``(n, d)`` features, in float64."""
    x = _as_float64(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def _sqrtm(m: np.ndarray) -> np.ndarray:
    # scipy warns on singular input and returns NaN/inf or complex values; those cases are handled by the caller.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return linalg.sqrtm(m)


def _max_imag_on_diagonal(m: np.ndarray) -> float:
    return float(np.max(np.abs(np.diagonal(m).imag))) if np.iscomplexobj(m) else 0.0


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = _sqrtm(sigma1 @ sigma2)
    finite = np.isfinite(covmean).all()
    imag = _max_imag_on_diagonal(covmean) if finite else float("inf")
    if not finite or imag > _IMAG_ATOL:
        reason = "is not finite" if not finite else f"has an imaginary part of {imag:.3g} on its diagonal"
        warnings.warn(
            f"Fréchet distance: sqrtm(sigma1 @ sigma2) {reason} (near-singular covariances, typically fewer samples "
            f"than feature dimensions); retrying with eps = {eps:g} added to the diagonal of both covariances",
            RuntimeWarning,
            stacklevel=3,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all() or _max_imag_on_diagonal(covmean) > _IMAG_ATOL:
            raise ValueError(
                "Fréchet distance: sqrtm(sigma1 @ sigma2) stays non-finite or complex even with the eps offset; "
                "use more samples, a larger eps, or method='eigh'"
            )
    return float(np.trace(covmean).real)


def _sqrt_eigenvalues(w: np.ndarray) -> np.ndarray:
    # Eigenvalues below the rounding level of the largest one are zeros of a rank-deficient matrix, not data: taking
    # their square root would turn 1e-17 noise into 3e-9 per dimension.
    w = np.where(w > np.abs(w).max(initial=0.0) * w.size * np.finfo(np.float64).eps, w, 0.0)
    return np.sqrt(w)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * _sqrt_eigenvalues(w)) @ v.T
    m = root @ sigma2 @ root
    return float(_sqrt_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2)).sum())


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6, method: SqrtmMethod = "sqrtm"
) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    mu1, mu2 = np.atleast_1d(_as_float64(mu1, "mu1")), np.atleast_1d(_as_float64(mu2, "mu2"))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1, "sigma1")), np.atleast_2d(_as_float64(sigma2, "sigma2"))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of equal length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, float(eps))
    else:
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_from_features(
    features1: Any, features2: Any, eps: float = 1e-6, method: SqrtmMethod = "sqrtm"
) -> float:
    """Fréchet distance between Gaussians fitted to two ``(n, d)`` feature sets (unbiased covariances)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature sets must have the same width, got {mu1.shape[0]} and {mu2.shape[0]}")
    x, y = _as_float64(features1, "features1"), _as_float64(features2, "features2")
    if method == "sqrtm" or min(x.shape[0], y.shape[0]) >= x.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps, method=method)
    a1 = (x - mu1) / np.sqrt(x.shape[0] - 1)
    a2 = (y - mu2) / np.sqrt(y.shape[0] - 1)
    tr_covmean = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
