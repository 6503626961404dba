"""OpenCLIP residual blocks -> transformers ``CLIPEncoderLayer`` keys, shared by the text and the image tower.

Both OpenCLIP towers stack the same ``ResidualAttentionBlock`` (``ln_1``, ``attn`` = ``nn.MultiheadAttention``,
``ln_2``, ``mlp.c_fc`` / ``mlp.c_proj``) under a tower prefix (``model.transformer`` for text,
``model.visual.transformer`` for images), so one key map serves both converters. Works on real and on meta tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from vidiff.conversion.common import ConversionError

BLOCK_RENAMES = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
IN_PROJ = ("attn.in_proj_weight", "attn.in_proj_bias")


def resblock_pattern(tower: str) -> re.Pattern[str]:
    """Matches ``<tower>.resblocks.<index>.<parameter>``; groups: index, parameter."""
    return re.compile(rf"^{re.escape(tower)}\.resblocks\.(\d+)\.(.+)$")


def count_resblocks(sd: Mapping[str, torch.Tensor], tower: str, what: str) -> int:
    """Number of residual blocks under ``tower``; a gap in the indices means a truncated or foreign checkpoint."""
    pattern = resblock_pattern(tower)
    block_ids = sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
    if not block_ids:
        raise ConversionError(f"{what}: no {tower}.resblocks.* keys found")
    if block_ids != list(range(len(block_ids))):
        raise ConversionError(f"{what}: residual block indices are not contiguous from 0: {block_ids}")
    return len(block_ids)


def first_mlp_weight(sd: Mapping[str, torch.Tensor], tower: str, what: str) -> torch.Tensor:
    """Block 0's ``mlp.c_fc.weight``: the only place the MLP width is visible in the shapes."""
    key = f"{tower}.resblocks.0.mlp.c_fc.weight"
    fc = sd.get(key)
    if fc is None:
        raise ConversionError(f"{what}: missing key {key!r}")
    return fc


def convert_resblock_param(
    key: str, tensor: torch.Tensor, tower: str, width: int, what: str
) -> dict[str, torch.Tensor]:
    """Our keys for one official block parameter (the packed in_proj becomes q/k/v); empty if not a block parameter."""
    m = resblock_pattern(tower).match(key)
    if m is None:
        return {}
    index, rest = m.groups()
    prefix = f"clip.encoder.layers.{index}."
    if rest in BLOCK_RENAMES:
        return {prefix + BLOCK_RENAMES[rest]: tensor}
    if rest not in IN_PROJ:
        return {}
    if tensor.dim() == 0 or tensor.shape[0] != 3 * width:
        raise ConversionError(f"{what}: {key} has shape {tuple(tensor.shape)}, expected first dimension 3 * {width}")
    suffix = "weight" if rest.endswith("weight") else "bias"
    # nn.MultiheadAttention packs q, k, v along dim 0 in this order.
    return {
        f"{prefix}self_attn.{name}.{suffix}": part
        for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split(width, dim=0))
    }
