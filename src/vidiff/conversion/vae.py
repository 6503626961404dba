"""Official LDM ``first_stage_model.`` KL autoencoder -> :class:`vidiff.models.autoencoder.LDMAutoencoderKL`.

The key map is written out here (rather than using diffusers' single-file helpers) so that it covers any ch_mult,
num_res_blocks and attention resolutions, reports unknown keys instead of dropping them, and runs on meta tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from vidiff.conversion.common import ConversionError, check_shapes
from vidiff.conversion.component import ConvertedComponent

WHAT = "KL autoencoder (first_stage_model.)"
NORM_GROUPS = 32  # the official Normalize() always uses 32 groups
IGNORED_PREFIXES = {
    "loss.": "training loss weights (LPIPS / discriminator / logvar) of the autoencoder, unused at inference",
}

_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_PARAM = r"(weight|bias)"
_RULES = [
    (re.compile(rf"^(encoder|decoder)\.(conv_in|conv_out)\.{_PARAM}$"), "plain"),
    (re.compile(rf"^(quant_conv|post_quant_conv)\.{_PARAM}$"), "plain"),
    (re.compile(rf"^(encoder|decoder)\.norm_out\.{_PARAM}$"), "norm_out"),
    (re.compile(rf"^(encoder|decoder)\.mid\.block_([12])\.(\w+)\.{_PARAM}$"), "mid_block"),
    (re.compile(rf"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.{_PARAM}$"), "mid_attn"),
    (re.compile(rf"^encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.{_PARAM}$"), "down_block"),
    (re.compile(rf"^encoder\.down\.(\d+)\.attn\.(\d+)\.(\w+)\.{_PARAM}$"), "down_attn"),
    (re.compile(rf"^encoder\.down\.(\d+)\.downsample\.conv\.{_PARAM}$"), "downsample"),
    (re.compile(rf"^decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.{_PARAM}$"), "up_block"),
    (re.compile(rf"^decoder\.up\.(\d+)\.attn\.(\d+)\.(\w+)\.{_PARAM}$"), "up_attn"),
    (re.compile(rf"^decoder\.up\.(\d+)\.upsample\.conv\.{_PARAM}$"), "upsample"),
]


def _need(sd: Mapping[str, torch.Tensor], key: str, ndim: int = 4) -> torch.Tensor:
    if key not in sd:
        raise ConversionError(f"{WHAT}: missing key {key!r}; cannot infer the autoencoder layout")
    if sd[key].dim() != ndim:
        raise ConversionError(f"{WHAT}: {key} must be {ndim}-D, got shape {tuple(sd[key].shape)}")
    return sd[key]


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _check_contiguous(ids: list[int], what: str) -> None:
    if ids != list(range(len(ids))):
        raise ConversionError(f"{WHAT}: {what} indices are not contiguous from 0: {ids}")


def infer_vae_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """The LDMAutoencoderKL config (diffusers names) implied by the official key names and shapes."""
    if not sd:
        raise ConversionError(f"{WHAT}: empty state dict")
    if any(k.startswith("first_stage_model.") for k in sd):
        raise ConversionError(f"{WHAT}: keys still carry the 'first_stage_model.' prefix; strip it first (strip_prefix)")
    levels = _indices(sd, r"^encoder\.down\.(\d+)\.")
    if not levels:
        raise ConversionError(f"{WHAT}: no encoder.down.* keys found (not an LDM autoencoder?)")
    _check_contiguous(levels, "encoder.down")
    up_levels = _indices(sd, r"^decoder\.up\.(\d+)\.")
    if up_levels != levels:
        raise ConversionError(f"{WHAT}: encoder has levels {levels} but decoder.up has {up_levels}")
    n_levels = len(levels)

    res_blocks = {i: _indices(sd, rf"^encoder\.down\.{i}\.block\.(\d+)\.") for i in levels}
    for i, ids in res_blocks.items():
        _check_contiguous(ids, f"encoder.down.{i}.block")
    counts = {len(ids) for ids in res_blocks.values()}
    if len(counts) != 1 or 0 in counts:
        raise ConversionError(f"{WHAT}: levels have different numbers of encoder res blocks: {res_blocks}")
    num_res_blocks = counts.pop()
    for i in levels:
        ids = _indices(sd, rf"^decoder\.up\.{i}\.block\.(\d+)\.")
        if ids != list(range(num_res_blocks + 1)):
            raise ConversionError(
                f"{WHAT}: decoder.up.{i} has blocks {ids}, expected {num_res_blocks + 1} (num_res_blocks + 1)"
            )

    conv_in = _need(sd, "encoder.conv_in.weight")
    base_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    block_out = [int(_need(sd, f"encoder.down.{i}.block.0.conv1.weight").shape[0]) for i in levels]
    z_channels = int(_need(sd, "decoder.conv_in.weight").shape[1])
    moments = int(_need(sd, "encoder.conv_out.weight").shape[0])
    if moments != 2 * z_channels:
        raise ConversionError(
            f"{WHAT}: encoder.conv_out has {moments} channels, expected 2 * z_channels = {2 * z_channels} "
            "(only the double_z KL autoencoder is supported)"
        )
    embed_dim = int(_need(sd, "post_quant_conv.weight").shape[1])
    out_channels = int(_need(sd, "decoder.conv_out.weight").shape[0])

    enc_attn = set(_indices(sd, r"^encoder\.down\.(\d+)\.attn\."))
    dec_attn = set(_indices(sd, r"^decoder\.up\.(\d+)\.attn\."))
    if enc_attn != dec_attn:
        raise ConversionError(f"{WHAT}: attention levels differ between encoder {sorted(enc_attn)} and decoder {sorted(dec_attn)}")
    mid_enc = any(k.startswith("encoder.mid.attn_1.") for k in sd)
    mid_dec = any(k.startswith("decoder.mid.attn_1.") for k in sd)
    if mid_enc != mid_dec:
        raise ConversionError(f"{WHAT}: mid attention present in {'encoder' if mid_enc else 'decoder'} only")

    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["AttnDownEncoderBlock2D" if i in enc_attn else "DownEncoderBlock2D" for i in levels],
        # diffusers lists the decoder blocks from the lowest resolution up.
        "up_block_types": [
            "AttnUpDecoderBlock2D" if i in dec_attn else "UpDecoderBlock2D" for i in reversed(range(n_levels))
        ],
        "block_out_channels": block_out,
        "layers_per_block": num_res_blocks,
        "act_fn": "silu",
        "latent_channels": z_channels,
        "norm_num_groups": NORM_GROUPS,
        "scaling_factor": 0.18215,
        "mid_block_add_attention": mid_enc,
        "encoder_base_channels": base_channels,
        "embed_dim": embed_dim,
    }


def _our_key(key: str, tensor: torch.Tensor, n_levels: int) -> tuple[str, torch.Tensor] | None:
    """Our name (and possibly reshaped tensor) for an official key, or None when the key is not part of the layout."""
    for rx, kind in _RULES:
        m = rx.match(key)
        if m is None:
            continue
        g = m.groups()
        if kind == "plain":
            return key, tensor
        if kind == "norm_out":
            return f"{g[0]}.conv_norm_out.{g[1]}", tensor
        if kind == "downsample":
            return f"encoder.down_blocks.{g[0]}.downsamplers.0.conv.{g[1]}", tensor
        if kind == "upsample":
            return f"decoder.up_blocks.{n_levels - 1 - int(g[0])}.upsamplers.0.conv.{g[1]}", tensor
        if kind == "mid_block":
            part = _RESNET_PARTS.get(g[2])
            return None if part is None else (f"{g[0]}.mid_block.resnets.{int(g[1]) - 1}.{part}.{g[3]}", tensor)
        if kind == "mid_attn":
            return _attn(f"{g[0]}.mid_block.attentions.0", g[1], g[2], tensor)
        if kind == "down_block":
            part = _RESNET_PARTS.get(g[2])
            return None if part is None else (f"encoder.down_blocks.{g[0]}.resnets.{g[1]}.{part}.{g[3]}", tensor)
        if kind == "down_attn":
            return _attn(f"encoder.down_blocks.{g[0]}.attentions.{g[1]}", g[2], g[3], tensor)
        if kind == "up_block":
            part = _RESNET_PARTS.get(g[2])
            block = n_levels - 1 - int(g[0])
            return None if part is None else (f"decoder.up_blocks.{block}.resnets.{g[1]}.{part}.{g[3]}", tensor)
        if kind == "up_attn":
            return _attn(f"decoder.up_blocks.{n_levels - 1 - int(g[0])}.attentions.{g[1]}", g[2], g[3], tensor)
    return None


def _attn(prefix: str, part: str, param: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    name = _ATTN_PARTS.get(part)
    if name is None:
        return None
    if param == "weight" and part != "norm" and tensor.dim() == 4 and tuple(tensor.shape[2:]) == (1, 1):
        tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])  # official 1x1 convs -> diffusers linears
    return f"{prefix}.{name}.{param}", tensor


def build_vae(config: dict):
    """LDMAutoencoderKL from a converted config; bad channel counts become a ConversionError."""
    from vidiff.models.autoencoder import LDMAutoencoderKL

    try:
        return LDMAutoencoderKL(**config)
    except (ValueError, TypeError) as err:
        raise ConversionError(f"{WHAT}: cannot build an autoencoder from {config}: {err}") from err


def official_vae_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The official key -> shape layout of the autoencoder a converted config describes (LDM ``Encoder``/``Decoder``)."""
    ch, block_out = config["encoder_base_channels"], list(config["block_out_channels"])
    n_levels, nrb = len(block_out), config["layers_per_block"]
    z, embed = config["latent_channels"], config["embed_dim"]
    enc_attn = {i for i, t in enumerate(config["down_block_types"]) if t.startswith("Attn")}
    dec_attn = {n_levels - 1 - i for i, t in enumerate(config["up_block_types"]) if t.startswith("Attn")}
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_out, c_in, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_out, c_in, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def mid(name: str, c: int) -> None:
        resnet(f"{name}.mid.block_1", c, c)
        if config["mid_block_add_attention"]:
            attn(f"{name}.mid.attn_1", c)
        resnet(f"{name}.mid.block_2", c, c)

    conv("encoder.conv_in", ch, config["in_channels"], 3)
    c_in = ch
    for i, c_out in enumerate(block_out):
        for j in range(nrb):
            resnet(f"encoder.down.{i}.block.{j}", c_in, c_out)
            c_in = c_out
            if i in enc_attn:
                attn(f"encoder.down.{i}.attn.{j}", c_in)
        if i != n_levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", c_in, c_in, 3)
    mid("encoder", c_in)
    norm("encoder.norm_out", c_in)
    conv("encoder.conv_out", 2 * z, c_in, 3)
    conv("quant_conv", 2 * embed, 2 * z, 1)
    conv("post_quant_conv", z, embed, 1)

    c_in = block_out[-1]
    conv("decoder.conv_in", c_in, z, 3)
    mid("decoder", c_in)
    for i in reversed(range(n_levels)):
        for j in range(nrb + 1):
            resnet(f"decoder.up.{i}.block.{j}", c_in, block_out[i])
            c_in = block_out[i]
            if i in dec_attn:
                attn(f"decoder.up.{i}.attn.{j}", c_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c_in, c_in, 3)
    norm("decoder.norm_out", c_in)
    conv("decoder.conv_out", config["out_channels"], c_in, 3)
    return shapes


def convert_vae(sd: Mapping[str, torch.Tensor]) -> ConvertedComponent:
    """Convert a ``first_stage_model.``-stripped state dict; every key is consumed, ignored with a reason, or an error."""
    config = infer_vae_config(sd)
    n_levels = len(config["block_out_channels"])
    ignored: dict[str, str] = {}
    for key in sd:
        reason = next((r for p, r in IGNORED_PREFIXES.items() if key.startswith(p)), None)
        if reason is not None:
            ignored[key] = reason
    official = official_vae_shapes(config)
    unknown = sorted(set(sd) - set(official) - set(ignored))
    if unknown:
        head = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ConversionError(f"{WHAT}: unexpected keys: {head}")
    check_shapes(official, sd, WHAT)

    out: dict[str, torch.Tensor] = {}
    for key in official:
        mapped = _our_key(key, sd[key], n_levels)
        if mapped is None:  # cannot happen: official_vae_shapes only emits mapped names
            raise ConversionError(f"{WHAT}: internal key map has no rule for {key}")
        out[mapped[0]] = mapped[1]

    with torch.device("meta"):
        reference = build_vae(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if set(out) != set(expected) or any(tuple(out[k].shape) != expected[k] for k in out):
        bad = sorted(set(out) ^ set(expected))[:10] or [k for k in out if tuple(out[k].shape) != expected[k]][:10]
        raise ConversionError(f"{WHAT}: internal key map does not match the diffusers model (diffusers change?): {bad}")
    return ConvertedComponent(config=config, state_dict=out, consumed=set(official), ignored=ignored)
