"""Starting a model from a trained model of another architecture: an image U-Net inflated to video, a text-to-video
U-Net grown into an image-to-video one.

Every paper vidiff implements starts this way (VideoCrafter and VideoGen from a text-to-image model, DynamiCrafter
from VideoCrafter, UniVid from a T2V/T2I model). Tensors with matching names and shapes are copied; layers the source
does not have start as identities, so the new model computes exactly what the source did until training moves them:

* temporal layers (temporal conv blocks, temporal transformers, the first temporal attention): their output
  projections are zero, and each sits inside a residual, so it passes its input through; a temporal transformer's
  absolute frame positions start at zero, so one added to a trained layer leaves it unchanged;
* the fps / frame-stride embedding and the pooled-text embedding: their last linear layers are zero, so they add
  nothing to the timestep embedding;
* image cross-attention: the value projection of the image stream is zero, so the image tokens add nothing;
* extra input channels of the first convolution (DynamiCrafter's concatenated image latent): zero weights.

The :class:`InflationReport` lists every new, dropped and reshaped tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["InflationReport", "inflate_from", "init_identity_layers"]


@dataclass
class InflationReport:
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # in the target only: identity / default initialisation
    dropped: list[str] = field(default_factory=list)  # in the source only: not used
    reshaped: list[str] = field(default_factory=list)  # same name, new shape: the overlap copied, the rest zero

    def describe(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.new)} new, {len(self.dropped)} dropped, "
                f"{len(self.reshaped)} reshaped")

    def to_dict(self) -> dict:
        return {"loaded": len(self.loaded), "new": self.new, "dropped": self.dropped, "reshaped": self.reshaped}


def _zero(module: nn.Module) -> None:
    for p in module.parameters():
        nn.init.zeros_(p)


@torch.no_grad()
def init_identity_layers(unet: nn.Module) -> list[str]:
    """Make every layer of ``unet`` (a :class:`~vidiff.models.unet3d.UNet3DModel`) that can start as an identity
    contribute nothing: each module with an ``init_identity()`` method (temporal conv blocks, temporal transformers,
    image streams, and any registered layer type that defines one) zeroes its output, and the fps and pooled-text
    embeddings their last layers. Returns the zeroed names."""
    zeroed: list[str] = []
    for name, module in unet.named_modules():
        init = getattr(module, "init_identity", None)
        if callable(init) and module is not unet:
            zeroed += [f"{name}.{part}" for part in init()]
    fps = getattr(unet, "fps_embedding", None)
    if fps is not None:
        _zero(fps[-1])
        zeroed.append("fps_embedding.2")
    text = getattr(unet, "text_embedding", None)
    if text is not None:
        _zero(text[-1])
        zeroed.append("text_embedding.2")
    return zeroed


def _aligned_state(target: nn.Module, source: nn.Module) -> dict[str, torch.Tensor]:
    """The source's state dict with layer indices renamed to the target's.

    Inside a U-Net stage (a ``BlockSequence``) layers are numbered by position, and a temporal transformer takes a
    position (official layout: ResBlock, SpatialTransformer, TemporalTransformer, ...). Layers are paired in order by
    class (a layer type that extends a class, e.g. UniVid's PSTResBlock, pairs with it), so ``middle_block.2`` (the second
    ResBlock of an image U-Net) becomes ``middle_block.3`` of a video U-Net.
    """
    from vidiff.models.unet3d import BlockSequence

    renames: dict[str, str] = {}
    source_blocks = dict(source.named_modules())
    for path, block in target.named_modules():
        other = source_blocks.get(path)
        if not isinstance(block, BlockSequence) or not isinstance(other, BlockSequence):
            continue
        theirs = list(enumerate(other))
        k = 0
        for i, layer in enumerate(block):
            if k < len(theirs) and isinstance(layer, type(theirs[k][1])):  # a subclass pairs with its base
                j = theirs[k][0]
                if i != j:
                    renames[f"{path}.{j}."] = f"{path}.{i}."
                k += 1
    state = {}
    for name, value in source.state_dict().items():
        for old, new in renames.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        state[name] = value
    return state


@torch.no_grad()
def inflate_from(target: nn.Module, source: nn.Module | dict[str, torch.Tensor],
                 identity: bool = True) -> InflationReport:
    """Load ``source`` (a module, or a state dict already in the target's names) into ``target``; new layers start as
    identities (``identity``).

    A tensor whose shape differs only by growing (e.g. a convolution's input channels 4 -> 8) gets the source values in
    the overlapping block and zeros elsewhere; any other shape mismatch is an error naming the tensor.
    """
    source_state = source if isinstance(source, dict) else _aligned_state(target, source)
    if identity and hasattr(target, "config") and "temporal_length" in getattr(target, "config", {}):
        init_identity_layers(target)
    own = target.state_dict()
    report = InflationReport()
    for name, value in own.items():
        if name not in source_state:
            report.new.append(name)
            continue
        src = source_state[name]
        if tuple(src.shape) == tuple(value.shape):
            value.copy_(src.to(value.dtype))
            report.loaded.append(name)
        elif src.ndim == value.ndim and all(a <= b for a, b in zip(src.shape, value.shape)):
            value.zero_()
            value[tuple(slice(0, n) for n in src.shape)] = src.to(value.dtype)
            report.reshaped.append(f"{name}: {tuple(src.shape)} -> {tuple(value.shape)}")
        else:
            raise ValueError(f"cannot inflate {name}: the source has shape {tuple(src.shape)}, the target "
                             f"{tuple(value.shape)} (only growing a dimension is supported)")
    report.dropped = sorted(set(source_state) - set(own))
    return report
