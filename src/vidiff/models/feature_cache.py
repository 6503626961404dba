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


class AttentionBroadcast:
    """Pyramid attention broadcast (Zhao et al. 2024, PAB): in the stable middle of the trajectory, attention outputs
    are computed every few steps and reused in between — temporal attention least often, spatial self-attention more,
    cross-attention (the text) every ``cross`` steps.

    A U-Net call inside ``timestep_range`` (inclusive, in training timesteps) counts as one step of the window; at step
    k of the window an attention layer of a kind with interval n recomputes when k % n == 0 and otherwise returns its
    output of the last computed step. Outside the window every layer computes. An interval of 1 (or None) never
    reuses. One object serves one sampling run (calls must come in sampling order; :meth:`reset` starts over).
    """

    KINDS = ("spatial", "temporal", "cross")

    def __init__(self, spatial: int | None = 2, temporal: int | None = 4, cross: int | None = 6,
                 timestep_range: tuple[int, int] = (100, 800)):
        self.intervals = {}
        for kind, value in zip(self.KINDS, (spatial, temporal, cross)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"AttentionBroadcast {kind} interval must be a positive int or None, got {value!r}")
            self.intervals[kind] = value or 1
        lo, hi = timestep_range
        if not 0 <= lo <= hi:
            raise ValueError(f"timestep_range must be (low, high) with 0 <= low <= high, got {timestep_range!r}")
        self.timestep_range = (int(lo), int(hi))
        self.reset()

    def reset(self) -> None:
        self._outputs: dict[str, torch.Tensor] = {}
        self._window_step = -1
        self.computed = dict.fromkeys(self.KINDS, 0)
        self.reused = dict.fromkeys(self.KINDS, 0)

    def _layers(self, unet: torch.nn.Module):
        from .attention import SpatialTransformer, TemporalTransformer

        for name, module in unet.named_modules():
            if isinstance(module, SpatialTransformer):
                for i, block in enumerate(module.transformer_blocks):
                    yield f"{name}.{i}.attn1", "spatial", block.attn1
                    if not block.self_attention_only:
                        yield f"{name}.{i}.attn2", "cross", block.attn2
            elif isinstance(module, TemporalTransformer):
                for i, block in enumerate(module.transformer_blocks):
                    yield f"{name}.{i}.attn1", "temporal", block.attn1
                    yield f"{name}.{i}.attn2", "temporal", block.attn2

    def during(self, unet: torch.nn.Module, timestep: torch.Tensor):
        """Context manager for one U-Net call at ``timestep`` (all rows of a batch share the sampling step)."""
        import contextlib

        t = int(torch.as_tensor(timestep).reshape(-1)[0])
        lo, hi = self.timestep_range
        inside = lo <= t <= hi
        if inside:
            self._window_step += 1
        step = self._window_step

        @contextlib.contextmanager
        def applied():
            patched = []
            for name, kind, attn in self._layers(unet):
                reuse = inside and step % self.intervals[kind] != 0

                def forward(x, *args, _orig=attn.forward, _name=name, _kind=kind, _reuse=reuse, **kwargs):
                    stored = self._outputs.get(_name)
                    if _reuse and stored is not None and stored.shape == x.shape[:-1] + stored.shape[-1:]:
                        self.reused[_kind] += 1
                        return stored
                    out = _orig(x, *args, **kwargs)
                    self._outputs[_name] = out
                    self.computed[_kind] += 1
                    return out

                attn.forward = forward
                patched.append(attn)
            try:
                yield
            finally:
                for attn in patched:
                    del attn.forward  # back to the class's forward

        return applied()
