"""Choosing which parameters a training stage updates.

A stage lists *selectors* in ``train.trainable`` and optionally removes some with ``train.frozen``. A selector is

* a glob on the full parameter name, e.g. ``unet.*`` or ``*.attn2.to_k_ip.*`` (names are those of the trained module:
  ``unet.…``, ``text_encoder.…``, ``image_encoder.…``, ``image_projector.…``);
* ``re:<regex>``, searched in the name;
* ``module:<ClassName>``, every parameter inside modules of that class (the temporal transformers of the U-Net carry no
  "temporal" in their names, so layer kinds are selected by class);
* a preset: ``@temporal`` (temporal attention + temporal convolutions, for growing a video model out of an image model),
  ``@image_cross_attention`` (DynamiCrafter's first stage: the image projector and the image key/value projections of
  the cross-attention layers), ``@image_cross`` (UniVid's stage 2: every cross-attention, its image stream
  included), ``@pyramid`` (UniVid's PSTAttn and PSTConv layers), ``@video_decoder`` (a video decoder's decoder, 2D
  and temporal layers; its encoder stays frozen) and ``@video_decoder_temporal`` (its temporal layers alone), ``@all``.

UniVid's three stages (§IV-A) as selectors: 1, text-to-video from the base: ``[@all]`` with ``train.task_mix:
{t2v: 1}`` (the image stream then gets no gradient); 2, the image stream and cross-attention: ``[@image_cross,
image_encoder.*]`` with the three modes mixed; 3, everything: ``[@all]``.

A selector that matches nothing is an error, so a typo cannot silently freeze the whole model.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import nn

PRESETS: dict[str, tuple[str, ...]] = {
    "@all": ("*",),
    "@temporal": ("module:TemporalTransformer", "module:TemporalConvBlock"),
    "@image_cross_attention": ("*.to_k_ip.*", "*.to_v_ip.*", "*.attn2.alpha", "image_projector.*"),
    "@image_cross": ("*.attn2.*",),
    "@pyramid": ("module:PyramidFrameAttention", "module:TemporalConv1d"),
    "@video_decoder": ("autoencoder.decoder.*", "autoencoder.post_quant_conv.*", "autoencoder.temporal_*"),
    "@video_decoder_temporal": ("autoencoder.temporal_*",),
}


class SelectorError(ValueError):
    """A parameter selector that is malformed or matches no parameter."""


@dataclass
class TrainableSummary:
    trainable: list[str]
    frozen: list[str]
    num_trainable: int
    num_total: int

    def describe(self) -> str:
        share = 100.0 * self.num_trainable / max(self.num_total, 1)
        return (
            f"{self.num_trainable / 1e6:.2f} M of {self.num_total / 1e6:.2f} M parameters trainable ({share:.1f}%), "
            f"{len(self.trainable)} tensors"
        )


def _expand(selectors: list[str]) -> list[str]:
    out = []
    for sel in selectors:
        if not isinstance(sel, str) or not sel.strip():
            raise SelectorError(f"parameter selectors must be non-empty strings, got {sel!r}")
        if sel.startswith("@"):
            if sel not in PRESETS:
                raise SelectorError(f"unknown preset {sel!r}; presets: {', '.join(PRESETS)}")
            out.extend(PRESETS[sel])
        else:
            out.append(sel)
    return out


def _module_param_names(module: nn.Module, class_name: str) -> set[str]:
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if type(sub).__name__ == class_name:
            for name, _ in sub.named_parameters():
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def match_selector(module: nn.Module, selector: str) -> set[str]:
    """Names of the parameters of ``module`` one (non-preset) selector picks."""
    names = [n for n, _ in module.named_parameters()]
    if selector.startswith("module:"):
        return _module_param_names(module, selector.removeprefix("module:"))
    if selector.startswith("re:"):
        try:
            pattern = re.compile(selector.removeprefix("re:"))
        except re.error as err:
            raise SelectorError(f"bad regular expression in {selector!r}: {err}") from None
        return {n for n in names if pattern.search(n)}
    return {n for n in names if fnmatch.fnmatchcase(n, selector)}


def select_parameters(module: nn.Module, trainable: list[str], frozen: list[str] | None = None) -> set[str]:
    """Names selected by ``trainable`` minus those selected by ``frozen``; each selector must match something."""
    chosen: set[str] = set()
    for group, sign in ((trainable, 1), (frozen or [], -1)):
        for original in group:
            for sel in _expand([original]):
                hit = match_selector(module, sel)
                if not hit and not (original.startswith("@") and original != "@all"):
                    example = next(iter(n for n, _ in module.named_parameters()), "<none>")
                    raise SelectorError(
                        f"parameter selector {sel!r} matches no parameter (names look like {example!r})"
                    )
                chosen = chosen | hit if sign > 0 else chosen - hit
    for original in list(trainable) + list(frozen or []):
        if original.startswith("@") and original != "@all":
            if not any(match_selector(module, s) for s in _expand([original])):
                raise SelectorError(f"preset {original!r} matches no parameter of this model")
    return chosen


def apply_trainable(module: nn.Module, trainable: list[str], frozen: list[str] | None = None) -> TrainableSummary:
    """Set ``requires_grad`` from the selectors and return what was chosen."""
    chosen = select_parameters(module, trainable, frozen)
    if not chosen:
        raise SelectorError(f"the selectors trainable={trainable} frozen={frozen or []} leave nothing to train")
    on, off, n_on, n_all = [], [], 0, 0
    for name, p in module.named_parameters():
        p.requires_grad_(name in chosen)
        n_all += p.numel()
        if name in chosen:
            on.append(name)
            n_on += p.numel()
        else:
            off.append(name)
    return TrainableSummary(on, off, n_on, n_all)
