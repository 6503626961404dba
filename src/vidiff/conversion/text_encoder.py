"""OpenCLIP text tower (official ``cond_stage_model.``) -> :class:`vidiff.models.text_encoder.OpenCLIPTextEncoder`.

Works on real and on meta tensors (only shapes, key names and view/slice ops), so a full-size checkpoint layout can be
validated without its weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vidiff.conversion.common import ConversionError, check_shapes
from vidiff.conversion.component import ConvertedComponent
from vidiff.conversion.openclip_blocks import convert_resblock_param, count_resblocks, first_mlp_weight

IGNORED_REASONS = {
    "model.text_projection": "CLIP contrastive head: FrozenOpenCLIPEmbedder returns token states, never the projection",
    "model.logit_scale": "CLIP contrastive temperature: unused by the text embedder's forward",
}
TOWER = "model.transformer"
_TOP_RENAMES = {
    "model.token_embedding.weight": "clip.embeddings.token_embedding.weight",
    "model.positional_embedding": "clip.embeddings.position_embedding.weight",
    "model.ln_final.weight": "clip.final_layer_norm.weight",
    "model.ln_final.bias": "clip.final_layer_norm.bias",
}
WHAT = "OpenCLIP text encoder (cond_stage_model.)"


def infer_text_config(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """Our OpenCLIPTextEncoder config from the tensor shapes; heads are not visible in shapes (default width // 64)."""
    _check_prefix(sd)
    for key in ("model.token_embedding.weight", "model.positional_embedding"):
        if key not in sd:
            raise ConversionError(f"{WHAT}: missing key {key!r}; cannot infer the model size")
        if sd[key].dim() != 2:
            raise ConversionError(f"{WHAT}: {key} must be 2-D, got shape {tuple(sd[key].shape)}")
    vocab_size, width = (int(n) for n in sd["model.token_embedding.weight"].shape)
    context_length = int(sd["model.positional_embedding"].shape[0])
    layers = count_resblocks(sd, TOWER, WHAT)
    fc = first_mlp_weight(sd, TOWER, WHAT)
    if fc.dim() != 2:
        raise ConversionError(f"{WHAT}: {TOWER}.resblocks.0.mlp.c_fc.weight must be 2-D, got {tuple(fc.shape)}")
    heads = width // 64 if num_heads is None else num_heads
    if not isinstance(heads, int) or heads < 1 or width % heads:
        how = "the default width // 64" if num_heads is None else "given"
        raise ConversionError(
            f"{WHAT}: num_heads={heads!r} ({how}) is not a positive divisor of the width {width}; "
            "the head count is not stored in the checkpoint, pass num_heads"
        )
    return {
        "vocab_size": vocab_size,
        "context_length": context_length,
        "width": width,
        "layers": layers,
        "heads": heads,
        "mlp_width": int(fc.shape[0]),
        "layer": "penultimate",
    }


def official_text_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The official key -> shape layout (without the ignored keys) of a text tower with this config."""
    w, m = config["width"], config["mlp_width"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.token_embedding.weight": (config["vocab_size"], w),
        "model.positional_embedding": (config["context_length"], w),
        "model.ln_final.weight": (w,),
        "model.ln_final.bias": (w,),
    }
    for i in range(config["layers"]):
        p = f"{TOWER}.resblocks.{i}."
        shapes |= {
            p + "ln_1.weight": (w,), p + "ln_1.bias": (w,),
            p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
            p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
            p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
            p + "mlp.c_fc.weight": (m, w), p + "mlp.c_fc.bias": (m,),
            p + "mlp.c_proj.weight": (w, m), p + "mlp.c_proj.bias": (w,),
        }
    return shapes


def convert_text_encoder(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> ConvertedComponent:
    """Convert a ``cond_stage_model.``-stripped state dict; every key is consumed, ignored with a reason, or an error."""
    from vidiff.models.text_encoder import OpenCLIPTextEncoder

    config = infer_text_config(sd, num_heads)
    width = config["width"]
    ignored = {k: IGNORED_REASONS[k] for k in sd if k in IGNORED_REASONS}
    official = official_text_shapes(config)
    unknown = sorted(set(sd) - set(official) - set(ignored))
    if unknown:
        head = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ConversionError(f"{WHAT}: unexpected keys (not an OpenCLIP text tower?): {head}")
    check_shapes(official, sd, WHAT)

    out: dict[str, torch.Tensor] = {}
    for key in official:
        tensor = sd[key]
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = tensor
            continue
        out |= convert_resblock_param(key, tensor, TOWER, width, WHAT)

    with torch.device("meta"):
        reference = OpenCLIPTextEncoder.from_config(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if set(out) != set(expected) or any(tuple(out[k].shape) != expected[k] for k in out):
        raise ConversionError(f"{WHAT}: internal key map does not match the model (transformers version change?)")
    return ConvertedComponent(config=config, state_dict=out, consumed=set(official), ignored=ignored)


def _check_prefix(sd: Mapping[str, torch.Tensor]) -> None:
    if not sd:
        raise ConversionError(f"{WHAT}: empty state dict")
    if any(k.startswith("cond_stage_model.") for k in sd):
        raise ConversionError(f"{WHAT}: keys still carry the 'cond_stage_model.' prefix; strip it first (strip_prefix)")
