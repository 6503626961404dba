"""What the feature networks behind FVD / KVD (I3D) and FID / IS (Inception) share.

Both are loaded frozen from a local weights file whose name and SHA-256 travel into every protocol they produce, and
both extract features in eval mode without leaving the caller's model in a different train/eval state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from vidiff.metrics.protocols import load_checked_state_dict, sha256_file

__all__ = ["evaluating", "load_frozen_network"]

M = TypeVar("M", bound=nn.Module)


def load_frozen_network(
    model: M,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    what: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> M:
    """``model`` with ``state`` loaded (names and shapes checked), frozen in eval mode on ``device`` / ``dtype``.

    Sets ``weights_file`` and ``weights_sha256`` on the model so the features it produces can name their network.
    """
    load_checked_state_dict(model, state, path, what)
    model.weights_file = os.path.basename(os.fspath(path))
    model.weights_sha256 = sha256_file(path)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[tuple[torch.device, torch.dtype]]:
    """Eval mode for the block, the previous train/eval state restored after; yields the device and dtype of inputs."""
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        yield p.device, p.dtype
    finally:
        model.train(was_training)
