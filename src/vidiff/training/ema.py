"""Exponential moving average of the trained weights, on diffusers' ``EMAModel``.

EMAModel's decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so short runs still get a useful average.
The EMA is what previews and exports use; :func:`ema_weights` swaps it into the live parameters for that and back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.training_utils import EMAModel

__all__ = ["EMAModel", "ema_to", "ema_weights", "make_ema"]


def make_ema(parameters: list[torch.nn.Parameter], decay: float, update_after_step: int = 0) -> EMAModel:
    """An EMA over ``parameters`` (the trainable ones: frozen weights never change)."""
    return EMAModel(parameters, decay=decay, update_after_step=update_after_step)


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """Inside the block ``parameters`` hold the EMA values; the training values are put back afterwards."""
    if ema is None:
        yield
        return
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


def ema_to(ema: EMAModel, device: torch.device) -> None:
    """Move the shadow weights (accelerate restores them on the CPU) next to the model."""
    ema.shadow_params = [p.to(device) for p in ema.shadow_params]
