"""DeepCache (Ma et al. 2024) for :class:`~vidiff.models.unet3d.UNet3DModel`: reuse the deep features across steps.

Between adjacent sampling steps the U-Net's deep (low-resolution) features change little; its outer levels carry the
detail. A full forward stores the input of the output block that takes the ``depth``-th skip connection; for the next
``interval − 1`` forwards only the first ``depth`` input blocks and the output blocks after the stored point run,
with the stored feature in place of everything deeper. One object serves one sampling run: make a new one (or call
:meth:`reset`) per run. Off (no cache passed) the U-Net runs exactly as without this module.
"""

from __future__ import annotations

import torch

__all__ = ["DeepCache"]


class DeepCache:
    """Full forward every ``interval`` calls; in between, only the outer ``depth`` input blocks (and their output blocks).

    ``depth`` counts the U-Net's input blocks from the top (1: only the first convolution, the shallowest branch of the
    paper; the U-Net's number of input blocks − 1 at most). The stored feature is reused only by a call of the same
    shape, so a different batch size or frame count falls back to a full forward. Counts of full and cached calls are
    kept in ``full_calls`` / ``cached_calls``.
    """

    def __init__(self, interval: int = 3, depth: int = 1):
        for name, value in (("interval", interval), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DeepCache {name} must be a positive int, got {value!r}")
        self.interval, self.depth = interval, depth
        self.reset()

    def reset(self) -> None:
        self.feature: torch.Tensor | None = None
        self._key: tuple | None = None
        self.calls = self.full_calls = self.cached_calls = 0

    def plan(self, num_input_blocks: int, key: tuple) -> bool:
        """Called by the U-Net at the start of a forward: True when this call reuses the stored feature."""
        if self.depth >= num_input_blocks:
            raise ValueError(f"DeepCache depth must be below the U-Net's {num_input_blocks} input blocks, got "
                             f"{self.depth}")
        reuse = self.feature is not None and key == self._key and self.calls % self.interval != 0
        self.calls += 1
        if reuse:
            self.cached_calls += 1
        else:
            self.full_calls += 1
            self._key = key
        return reuse

    def store(self, feature: torch.Tensor) -> None:
        self.feature = feature
