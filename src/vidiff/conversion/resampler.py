"""Official image projector (``image_proj_model.``) -> :class:`vidiff.models.resampler.Resampler`.

Our module keeps the official key names, so conversion is an identity map plus a shape check. Sizes come from the tensor
shapes; what shapes cannot tell (how heads·dim_head splits, how DC latents split into queries × frames) comes from
arguments with the released values as defaults. Works on meta tensors, so a full-size layout can be checked without weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch

from vidiff.conversion.common import ConversionError, check_shapes
from vidiff.conversion.component import ConvertedComponent

WHAT = "image projector Resampler (image_proj_model.)"
FLAVOURS = ("vc", "dc")
DEFAULT_DIM_HEAD = 64  # released configs: 12 heads × 64
DEFAULT_QUERIES_PER_FRAME = 16  # released DC configs: 16 queries × 16 frames
_LAYER = re.compile(r"^layers\.(\d+)\.")


def infer_resampler_config(
    sd: Mapping[str, torch.Tensor],
    flavour: Literal["vc", "dc"] = "vc",
    heads: int | None = None,
    dim_head: int | None = None,
    num_queries: int | None = None,
) -> dict:
    """Our Resampler config from the shapes; ``flavour`` 'vc' = shared tokens, 'dc' = per-frame tokens."""
    if flavour not in FLAVOURS:
        raise ConversionError(f"{WHAT}: flavour must be one of {FLAVOURS}, got {flavour!r}")
    if not sd:
        raise ConversionError(f"{WHAT}: empty state dict")
    if any(k.startswith("image_proj_model.") for k in sd):
        raise ConversionError(f"{WHAT}: keys still carry the 'image_proj_model.' prefix; strip it first (strip_prefix)")
    if any(k.startswith("proj.") for k in sd) and "latents" not in sd:
        raise ConversionError(f"{WHAT}: this looks like an ImageProjModel (finegrained: false), not a Resampler")
    needed = ("latents", "proj_in.weight", "proj_out.weight", "layers.0.0.to_q.weight", "layers.0.1.1.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ConversionError(f"{WHAT}: missing keys {missing}; cannot infer the model size")
    latents = sd["latents"]
    if latents.dim() != 3 or latents.shape[0] != 1:
        raise ConversionError(f"{WHAT}: latents has shape {tuple(latents.shape)}, expected (1, queries, dim)")
    total, dim = int(latents.shape[1]), int(latents.shape[2])
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER.match(k))})
    if layer_ids != list(range(len(layer_ids))):
        raise ConversionError(f"{WHAT}: layer indices are not contiguous from 0: {layer_ids}")
    inner = int(sd["layers.0.0.to_q.weight"].shape[0])
    heads, dim_head = _split_heads(inner, heads, dim_head)
    ff_inner = int(sd["layers.0.1.1.weight"].shape[0])
    ff_mult: float = ff_inner // dim if ff_inner % dim == 0 else ff_inner / dim
    if int(dim * ff_mult) != ff_inner:
        raise ConversionError(f"{WHAT}: feed-forward width {ff_inner} is not expressible as a multiple of dim {dim}")
    if flavour == "vc":
        if num_queries is not None and num_queries != total:
            raise ConversionError(f"{WHAT}: num_queries={num_queries} but the checkpoint has {total} latents")
        queries, video_length = total, None
    else:
        queries = DEFAULT_QUERIES_PER_FRAME if num_queries is None else num_queries
        if not isinstance(queries, int) or queries < 1 or total % queries:
            raise ConversionError(
                f"{WHAT}: {total} latents do not split into frames of num_queries={queries!r} queries; "
                "pass the per-frame query count as num_queries"
            )
        video_length = total // queries
    return {
        "dim": dim,
        "depth": len(layer_ids),
        "dim_head": dim_head,
        "heads": heads,
        "num_queries": queries,
        "embedding_dim": int(sd["proj_in.weight"].shape[1]),
        "output_dim": int(sd["proj_out.weight"].shape[0]),
        "ff_mult": ff_mult,
        "video_length": video_length,
    }


def convert_resampler(
    sd: Mapping[str, torch.Tensor],
    flavour: Literal["vc", "dc"] = "vc",
    heads: int | None = None,
    dim_head: int | None = None,
    num_queries: int | None = None,
) -> ConvertedComponent:
    """Convert an ``image_proj_model.``-stripped state dict; every key is consumed or an error (none is unused)."""
    from vidiff.models.resampler import Resampler

    config = infer_resampler_config(sd, flavour, heads, dim_head, num_queries)
    with torch.device("meta"):
        reference = Resampler.from_config(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    unknown = sorted(set(sd) - set(expected))
    if unknown:
        head = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ConversionError(f"{WHAT}: unexpected keys (not an official Resampler?): {head}")
    check_shapes(expected, sd, WHAT)
    return ConvertedComponent(config=config, state_dict=dict(sd), consumed=set(sd), ignored={})


def _split_heads(inner: int, heads: int | None, dim_head: int | None) -> tuple[int, int]:
    """to_q is [heads·dim_head, dim]: only the product is visible, so one factor must be known (default dim_head 64)."""
    for name, value in (("heads", heads), ("dim_head", dim_head)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConversionError(f"{WHAT}: {name} must be a positive int, got {value!r}")
    if heads is not None and dim_head is not None:
        if heads * dim_head != inner:
            raise ConversionError(f"{WHAT}: heads {heads} × dim_head {dim_head} != attention width {inner} (to_q rows)")
        return heads, dim_head
    if heads is not None:
        if inner % heads:
            raise ConversionError(f"{WHAT}: heads={heads} does not divide the attention width {inner}")
        return heads, inner // heads
    dim_head = DEFAULT_DIM_HEAD if dim_head is None else dim_head
    if inner % dim_head:
        raise ConversionError(
            f"{WHAT}: attention width {inner} is not a multiple of dim_head={dim_head}; pass heads or dim_head"
        )
    return inner // dim_head, dim_head
