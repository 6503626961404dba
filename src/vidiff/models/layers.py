"""Named layer types for the U-Net's block factories: a new layer (a pyramid temporal attention, a temporal
convolution of another kernel, a temporal super-resolution block) is a registered factory and a config entry.

``UNet3DModel(layer_types={"temporal_attention": "my_attention"}, layer_options={"temporal_attention": {...}})``
builds every temporal attention of the U-Net with the factory registered under that name. A factory is called as
``factory(config, channels, out_channels, level, **options)`` (the U-Net's config, the layer's input and output
channels, its :class:`~vidiff.models.conditions.UNetLevel`) and returns a module that follows the layer protocol of
:mod:`vidiff.models.conditions` and, if it should start as an identity when added to a trained model, has an
``init_identity()`` method. The built-in ``lvdm`` types are the official VideoCrafter / DynamiCrafter layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .attention import SpatialTransformer, TemporalTransformer
from .conditions import UNetLevel
from .resnet import ResBlock

__all__ = ["LAYER_KINDS", "build_layer", "layer_names", "register_layer"]

LAYER_KINDS = ("resblock", "spatial_attention", "temporal_attention")
LayerFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, dict[str, LayerFactory]] = {kind: {} for kind in LAYER_KINDS}


def register_layer(kind: str, name: str) -> Callable[[LayerFactory], LayerFactory]:
    """Decorator: register ``factory(config, channels, out_channels, level, **options)`` as layer type ``name``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown layer kind {kind!r}; expected one of {LAYER_KINDS}")

    def add(factory: LayerFactory) -> LayerFactory:
        if name in _REGISTRY[kind]:
            raise ValueError(f"a {kind} layer named {name!r} is already registered")
        _REGISTRY[kind][name] = factory
        return factory

    return add


def layer_names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])


def check_layer_config(types: dict | None, options: dict | None) -> None:
    """One-line errors for unknown kinds or names in ``layer_types`` / ``layer_options``."""
    for what, entries in (("layer_types", types or {}), ("layer_options", options or {})):
        if not isinstance(entries, dict):
            raise ValueError(f"{what} must be a mapping of layer kind to value, got {entries!r}")
        for kind in entries:
            if kind not in _REGISTRY:
                raise ValueError(f"{what} has unknown layer kind {kind!r}; expected one of {LAYER_KINDS}")
    for kind, name in (types or {}).items():
        if name not in _REGISTRY[kind]:
            raise ValueError(f"unknown {kind} layer type {name!r}; registered: {', '.join(layer_names(kind))}")
    for kind, opts in (options or {}).items():
        if not isinstance(opts, dict):
            raise ValueError(f"layer_options.{kind} must be a mapping of keyword arguments, got {opts!r}")


def build_layer(kind: str, config: Any, channels: int, out_channels: int, level: UNetLevel) -> nn.Module:
    """The layer of ``kind`` that the U-Net config names (``lvdm`` unless ``layer_types`` says otherwise)."""
    name = (config.layer_types or {}).get(kind, "lvdm")
    options = (config.layer_options or {}).get(kind, {})
    return _REGISTRY[kind][name](config, channels, out_channels, level, **options)


@register_layer("resblock", "lvdm")
def _lvdm_resblock(config: Any, channels: int, out_channels: int, level: UNetLevel) -> ResBlock:
    return ResBlock(channels, config.model_channels * 4, config.dropout, out_channels, config.temporal_conv,
                    config.temporal_conv_dropout)


@register_layer("spatial_attention", "lvdm")
def _lvdm_spatial(config: Any, channels: int, out_channels: int, level: UNetLevel) -> SpatialTransformer:
    return SpatialTransformer(
        channels,
        channels // config.num_head_channels,
        config.num_head_channels,
        config.transformer_depth,
        config.context_dim,
        0.0,  # the official transformers are built without dropout
        config.use_linear,
        image_attention=config.image_cross_attention,
        image_scale=config.image_cross_attention_scale,
        image_scale_learnable=config.image_cross_attention_scale_learnable,
        text_context_len=config.text_context_len,
        truncate_text_context=config.truncate_text_context,
        image_context_dim=config.get("image_context_dim"),
    )


@register_layer("temporal_attention", "lvdm")
def _lvdm_temporal(config: Any, channels: int, out_channels: int, level: UNetLevel) -> TemporalTransformer:
    return lvdm_temporal_transformer(config, channels, channels // config.num_head_channels,
                                     config.temporal_transformer_depth, config.use_linear)


def lvdm_temporal_transformer(config: Any, channels: int, heads: int, depth: int, use_linear: bool
                              ) -> TemporalTransformer:
    """The official temporal transformer (also the "addition attention" after the first convolution)."""
    return TemporalTransformer(
        channels,
        heads,
        config.num_head_channels,
        depth,
        0.0,
        use_linear,
        relative_position=config.use_relative_position,
        temporal_length=config.temporal_length,
        causal=config.use_causal_attention,
        position_embedding=config.temporal_position_embedding,
        text_context_dim=config.context_dim if config.temporal_text_attention else None,
        text_context_len=config.text_context_len if config.image_cross_attention else None,  # text tokens only
    )

from . import univid  # noqa: E402,F401  (registers the "pst" layer types)
