"""Classifier-free guidance (Ho & Salimans 2022) and its LVDM variants, plus the glue that turns a model into a denoiser.

The samplers in :mod:`vidiff.diffusion.sampling` take a ``denoise(x, t)`` callable; :func:`guided_denoiser` builds one
from a model and its conditional/unconditional keyword arguments, so guidance is decided once, outside the update rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "classifier_free_guidance",
    "guided_denoiser",
    "multi_condition_guidance",
    "rescale_guidance",
]


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale·(cond − uncond), in the official operand order."""
    if cond.shape != uncond.shape:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} must have the same shape")
    return uncond + scale * (cond - uncond)


def multi_condition_guidance(
    e_c: torch.Tensor,
    e_ui: torch.Tensor,
    e_u: torch.Tensor,
    text_scale: float,
    image_scale: float | None = None,
) -> torch.Tensor:
    """DynamiCrafter's two-scale guidance: e_u + img·(e_ui − e_u) + txt·(e_c − e_ui).

    e_c is the full condition, e_ui the image without text and e_u neither. ``image_scale=None`` uses the text scale,
    which reduces to ordinary classifier-free guidance between e_c and e_u.
    """
    if not e_c.shape == e_ui.shape == e_u.shape:
        raise ValueError(
            f"e_c {tuple(e_c.shape)}, e_ui {tuple(e_ui.shape)} and e_u {tuple(e_u.shape)} must have the same shape"
        )
    if image_scale is None:
        image_scale = text_scale
    return e_u + image_scale * (e_ui - e_u) + text_scale * (e_c - e_ui)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4): pull the guided output's per-sample std back to the conditional one's.

    m ← φ·m·std_c/std_m + (1−φ)·m with the unbiased std over all non-batch dims, the conditional output as reference.
    """
    if guided.shape != cond.shape:
        raise ValueError(f"guided {tuple(guided.shape)} and cond {tuple(cond.shape)} must have the same shape")
    if isinstance(phi, bool) or not isinstance(phi, int | float) or not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance rescale phi must be a number in [0, 1], got {phi!r}")
    if phi == 0.0:
        return guided
    if guided.ndim < 2:
        raise ValueError("rescale_guidance needs a batch dimension and at least one more")
    dims = list(range(1, guided.ndim))
    std_c = cond.std(dim=dims, keepdim=True)
    std_m = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_c / std_m)
    return phi * rescaled + (1 - phi) * guided


def stack_branch_kwargs(branches: Sequence[Mapping[str, Any]], batch: int) -> dict[str, Any]:
    """Merge the kwargs of several guidance branches into one batch (branch-major); non-tensors must agree."""
    keys = set(branches[0])
    if any(set(br) != keys for br in branches[1:]):
        raise ValueError(f"guidance branches must have the same keyword arguments, got {[sorted(br) for br in branches]}")
    merged: dict[str, Any] = {}
    for key in branches[0]:
        values = [br[key] for br in branches]
        if all(isinstance(v, torch.Tensor) for v in values):
            if any(v.ndim == 0 or v.shape[0] != batch for v in values):
                shapes = [tuple(v.shape) for v in values]
                raise ValueError(f"kwarg {key!r}: every branch needs batch size {batch} in dim 0 to be batched, got {shapes}")
            merged[key] = torch.cat(values, dim=0)
        elif any(isinstance(v, torch.Tensor) for v in values):
            raise ValueError(f"kwarg {key!r} is a tensor in some guidance branches only; cannot batch them")
        elif any(v != values[0] for v in values[1:]):
            raise ValueError(f"kwarg {key!r} differs between guidance branches ({values!r}) and is not a tensor")
        else:
            merged[key] = values[0]
    return merged


def run_branches(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    branches: Sequence[Mapping[str, Any]],
    batch: bool = True,
) -> tuple[torch.Tensor, ...]:
    """The model output of each guidance branch: one batched pass, or separate passes in the given order."""
    if not batch:
        return tuple(model(x, t, **kw) for kw in branches)
    n = len(branches)
    out = model(torch.cat([x] * n), torch.cat([t] * n), **stack_branch_kwargs(branches, x.shape[0]))
    return out.chunk(n, dim=0)


def guided_denoiser(
    model: Callable[..., torch.Tensor],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None,
    scale: float,
    rescale: float = 0.0,
    batch: bool = True,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``denoise(x, t)`` closure applying classifier-free guidance (and optional guidance rescale) around ``model``.

    ``model(x, t, **kwargs)``. With ``batch=True`` cond and uncond run as one batch of 2b (tensor kwargs concatenated
    along dim 0, other values passed through); with ``batch=False`` they are two passes, cond first, as the official
    samplers do. ``scale == 1`` or ``uncond is None`` runs the conditional pass only (no rescale, as official).
    """
    if not callable(model):
        raise ValueError("model must be callable as model(x, t, **kwargs)")
    if not isinstance(cond, Mapping) or (uncond is not None and not isinstance(uncond, Mapping)):
        raise ValueError("cond and uncond must be dicts of keyword arguments for the model")
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"guidance scale must be a number, got {scale!r}")
    if isinstance(rescale, bool) or not isinstance(rescale, int | float) or not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must be a number in [0, 1], got {rescale!r}")
    cond = dict(cond)
    uncond = dict(uncond) if uncond is not None else None
    single = uncond is None or scale == 1.0

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if single:
            return model(x, t, **cond)
        m_c, m_u = run_branches(model, x, t, (cond, uncond), batch)
        guided = classifier_free_guidance(m_c, m_u, scale)
        if rescale > 0.0:
            guided = rescale_guidance(guided, m_c, rescale)
        return guided

    return denoise
