"""OpenCLIP image tower (official ``embedder.``) -> :class:`vidiff.models.image_encoder.OpenCLIPImageEncoder`.

The official ``FrozenOpenCLIPImageEmbedderV2`` deletes only the text *transformer*, so its state dict still carries the
other text-side parameters and the visual head (``ln_post``, ``proj``) that its forward never uses; those are listed as
ignored with the reason. Works on real and on meta tensors (shapes, key names and slicing only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from vidiff.conversion.common import ConversionError, check_shapes
from vidiff.conversion.component import ConvertedComponent
from vidiff.conversion.openclip_blocks import convert_resblock_param, count_resblocks, first_mlp_weight

WHAT = "OpenCLIP image encoder (embedder.)"
_UNUSED_TEXT = "text-side parameter of the CLIP model: the image embedder deletes the text tower and never uses it"
_UNUSED_HEAD = "visual head: FrozenOpenCLIPImageEmbedderV2 returns all tokens before ln_post / proj"
IGNORED_REASONS = {
    "model.visual.ln_post.weight": _UNUSED_HEAD,
    "model.visual.ln_post.bias": _UNUSED_HEAD,
    "model.visual.proj": _UNUSED_HEAD,
    "model.token_embedding.weight": _UNUSED_TEXT,
    "model.positional_embedding": _UNUSED_TEXT,
    "model.ln_final.weight": _UNUSED_TEXT,
    "model.ln_final.bias": _UNUSED_TEXT,
    "model.text_projection": _UNUSED_TEXT,
    "model.logit_scale": "CLIP contrastive temperature: unused by the image embedder's forward",
}
TOWER = "model.visual.transformer"
_TOP_RENAMES = {
    "model.visual.class_embedding": "clip.embeddings.class_embedding",
    "model.visual.conv1.weight": "clip.embeddings.patch_embedding.weight",
    "model.visual.positional_embedding": "clip.embeddings.position_embedding.weight",
    "model.visual.ln_pre.weight": "clip.pre_layrnorm.weight",
    "model.visual.ln_pre.bias": "clip.pre_layrnorm.bias",
}
VIT_H_WIDTH, VIT_H_HEAD_WIDTH, DEFAULT_HEAD_WIDTH = 1280, 80, 64


def default_num_heads(width: int) -> int:
    """OpenCLIP's head count when the checkpoint cannot say: ViT-H (width 1280) uses heads of 80, other towers 64."""
    return width // (VIT_H_HEAD_WIDTH if width == VIT_H_WIDTH else DEFAULT_HEAD_WIDTH)


def infer_image_config(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """Our OpenCLIPImageEncoder config from the tensor shapes; heads are not visible in shapes (see default_num_heads)."""
    _check_prefix(sd)
    for key in ("model.visual.class_embedding", "model.visual.conv1.weight", "model.visual.positional_embedding"):
        if key not in sd:
            raise ConversionError(f"{WHAT}: missing key {key!r}; cannot infer the model size")
    width = int(sd["model.visual.class_embedding"].shape[0])
    conv = sd["model.visual.conv1.weight"]
    if conv.dim() != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise ConversionError(f"{WHAT}: conv1.weight has shape {tuple(conv.shape)}, expected (width, 3, p, p)")
    patch_size = int(conv.shape[2])
    n_positions = int(sd["model.visual.positional_embedding"].shape[0])
    grid = math.isqrt(max(n_positions - 1, 0))
    if grid < 1 or grid * grid + 1 != n_positions:
        raise ConversionError(
            f"{WHAT}: {n_positions} positional embeddings is not 1 + grid² (a square patch grid plus the class token)"
        )
    layers = count_resblocks(sd, TOWER, WHAT)
    fc = first_mlp_weight(sd, TOWER, WHAT)
    heads = default_num_heads(width) if num_heads is None else num_heads
    if not isinstance(heads, int) or heads < 1 or width % heads:
        raise ConversionError(
            f"{WHAT}: num_heads={heads!r} does not divide the width {width}; pass num_heads (width / head width)"
        )
    return {
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "width": width,
        "layers": layers,
        "heads": heads,
        "mlp_width": int(fc.shape[0]),
    }


def convert_image_encoder(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> ConvertedComponent:
    """Convert an ``embedder.``-stripped state dict; every key is consumed, ignored with a reason, or an error."""
    from vidiff.models.image_encoder import OpenCLIPImageEncoder

    config = infer_image_config(sd, num_heads)
    width = config["width"]
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    ignored: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in sd.items():
        if key in IGNORED_REASONS:
            ignored[key] = IGNORED_REASONS[key]
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = tensor
            consumed.add(key)
            continue
        mapped = convert_resblock_param(key, tensor, TOWER, width, WHAT)
        if not mapped:
            unknown.append(key)
            continue
        out |= mapped
        consumed.add(key)
    if unknown:
        head = ", ".join(sorted(unknown)[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ConversionError(f"{WHAT}: unexpected keys (not an OpenCLIP ViT image embedder?): {head}")

    with torch.device("meta"):
        reference = OpenCLIPImageEncoder.from_config(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    check_shapes(expected, out, WHAT)
    extra = sorted(set(out) - set(expected))
    if extra:  # cannot happen for a well-formed map; guards against a broken rename table
        raise ConversionError(f"{WHAT}: converted keys with no place in the model: {extra[:10]}")
    return ConvertedComponent(config=config, state_dict=out, consumed=consumed, ignored=ignored)


def _check_prefix(sd: Mapping[str, torch.Tensor]) -> None:
    if not sd:
        raise ConversionError(f"{WHAT}: empty state dict")
    if any(k.startswith("embedder.") for k in sd):
        raise ConversionError(f"{WHAT}: keys still carry the 'embedder.' prefix; strip it first (strip_prefix)")
    if any(k.startswith("visual.") for k in sd) and not any(k.startswith("model.visual.") for k in sd):
        raise ConversionError(f"{WHAT}: keys start at 'visual.'; strip only 'embedder.' so that they start 'model.'")
