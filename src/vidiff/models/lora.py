"""LoRA adapters on :class:`~vidiff.models.unet3d.UNet3DModel`, through PEFT.

PEFT's layers (``peft.tuners.lora``) wrap the U-Net's ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Conv3d`` modules in place
(``inject_adapter_in_model``), so the model keeps its class, its forward and its other weights; several adapters live
side by side under their adapter names, each with its own scale, and merging folds ``scale · alpha / r · B A`` into the
base weight. What vidiff adds: targets by layer kind (``spatial``, ``temporal``, ``cross``, ``attention``, ``all``, or
globs over module names), the file format (``docs/lora.md``: safetensors, keys ``unet.<module>.lora_A.weight`` /
``lora_B.weight``, a metadata block with rank, alpha, targets and the base model), checks that name what does not fit
(missing modules, shapes, ranks), and exactness: with no adapter active the U-Net runs its own layers only.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "KEY_PREFIX",
    "LORA_FORMAT_VERSION",
    "TARGET_PRESETS",
    "LoraError",
    "LoraFile",
    "add_lora",
    "active_loras",
    "load_lora",
    "lora_file_from_unet",
    "lora_parameters",
    "merge_lora",
    "read_lora",
    "resolve_targets",
    "save_lora",
    "set_lora_scales",
    "unload_lora",
]

LORA_FORMAT_VERSION = "1"
KEY_PREFIX = "unet."
METADATA_KEY = "lora_adapter_metadata"  # the key diffusers uses for the LoraConfig of a saved adapter
_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# The projections of an Attention layer (vidiff.models.attention.Attention) that the attention presets adapt.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "to_k_ip", "to_v_ip")
TARGET_PRESETS = {
    "cross": "the cross-attention (attn2) projections of the spatial transformers: text (and image) to pixels",
    "spatial": "self- and cross-attention projections of the spatial transformers",
    "temporal": "attention projections across frames: the temporal transformers (incl. the one after conv_in) and "
                "UniVid's PSTAttn",
    "attention": "spatial + temporal",
    "all": "every Linear, Conv2d and Conv3d of the U-Net (the coverage of the released VideoCrafter2 LoRAs)",
}
_ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Conv3d)


class LoraError(ValueError):
    """A LoRA that cannot be used with this model, or a malformed LoRA file or argument; the message says which."""


@dataclass
class LoraFile:
    """A LoRA as stored: per adapted module (vidiff name) its ``lora_A`` / ``lora_B`` weights, rank and alpha."""

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in, ...), B (out, r, ...))
    alpha: dict[str, float]
    targets: list[str] = field(default_factory=lambda: ["spatial"])  # the selectors it was made with
    base_model: dict[str, Any] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)  # words it teaches (added to a closed-vocabulary pipeline)
    extra: dict[str, str] = field(default_factory=dict)  # other metadata, kept as is (training, conversion notes)
    source: str | None = None  # the file it was read from (for messages and the default adapter name)

    def ranks(self) -> dict[str, int]:
        return {name: int(a.shape[0]) for name, (a, _) in self.weights.items()}

    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.weights.values())

    def describe(self) -> str:
        ranks = sorted(set(self.ranks().values()))
        rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
        return (f"{len(self.weights)} modules ({', '.join(self.targets)}), rank {rank}, "
                f"{self.num_parameters() / 1e3:.1f} k parameters")


# ---------------------------------------------------------------------------------------------------------- targets


def _kinds(unet: nn.Module) -> dict[str, str]:
    """Attention layer name -> "spatial" or "temporal", by the innermost layer that holds it: a spatial transformer,
    or a temporal transformer or UniVid's cross-frame attention (PSTAttn, inside a spatial transformer block)."""
    from .attention import Attention, SpatialTransformer, TemporalTransformer
    from .univid import PyramidFrameAttention

    owners = [(name, "spatial" if isinstance(m, SpatialTransformer) else "temporal")
              for name, m in unet.named_modules()
              if isinstance(m, SpatialTransformer | TemporalTransformer | PyramidFrameAttention)]
    owners.sort(key=lambda o: -len(o[0]))  # innermost first
    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            kind = next((k for owner, k in owners if name.startswith(owner + ".")), None)
            if kind is not None:
                out[name] = kind
    return out


def adaptable_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Every module a LoRA can wrap (Linear, Conv2d, Conv3d), by name, in the model's order; a module that already
    carries adapters is listed under its own name with its base layer."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, module in unet.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue  # the base layer and the adapters inside a PEFT layer
        if isinstance(module, LoraLayer):
            wrapped.append(name)
            out[name] = module.get_base_layer()
        elif type(module) in _ADAPTABLE:
            out[name] = module
    return out


def resolve_targets(unet: nn.Module, targets: Sequence[str]) -> list[str]:
    """The module names that ``targets`` (presets of :data:`TARGET_PRESETS` and/or globs over module names, e.g.
    ``*.attn2.to_k``) select, in the model's order; a selector that matches nothing is an error."""
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise LoraError("LoRA targets are empty: name a preset (" + ", ".join(TARGET_PRESETS) + ") or a glob")
    modules = adaptable_modules(unet)
    kinds = _kinds(unet)
    chosen: set[str] = set()
    for target in targets:
        if not isinstance(target, str) or not target.strip():
            raise LoraError(f"LoRA targets must be non-empty strings, got {target!r}")
        if target in TARGET_PRESETS:
            if target == "all":
                hit = set(modules)
            else:
                want = {"cross": ("spatial",), "spatial": ("spatial",), "temporal": ("temporal",),
                        "attention": ("spatial", "temporal")}[target]
                layers = [n for n, k in kinds.items() if k in want and (target != "cross" or n.endswith(".attn2"))]
                hit = {f"{n}.{p}" for n in layers for p in ATTENTION_PROJECTIONS if f"{n}.{p}" in modules}
        else:
            hit = {n for n in modules if fnmatch.fnmatchcase(n, target)}
        if not hit:
            raise LoraError(f"LoRA target {target!r} matches no Linear/Conv module of this U-Net (presets: "
                            f"{', '.join(TARGET_PRESETS)}; globs match names such as "
                            f"{next(iter(modules), 'input_blocks.1.1.transformer_blocks.0.attn1.to_q')})")
        chosen |= hit
    return [n for n in modules if n in chosen]


# ---------------------------------------------------------------------------------------------------------- adapters


def _tuner_layers(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _registry(unet: nn.Module) -> dict[str, float]:
    """Adapter name -> scale, kept on the U-Net (a plain attribute: not a parameter, not saved)."""
    reg = unet.__dict__.get("_vidiff_loras")
    if reg is None:
        reg = unet.__dict__["_vidiff_loras"] = {}
    return reg


def active_loras(unet: nn.Module) -> dict[str, float]:
    """The adapters loaded on ``unet`` and their scales (empty without LoRA)."""
    return dict(unet.__dict__.get("_vidiff_loras") or {})


def _inject(unet: nn.Module, modules: list[str], ranks: Mapping[str, int], alphas: Mapping[str, float],
            adapter_name: str, dropout: float = 0.0) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    if adapter_name in _registry(unet):
        raise LoraError(f"a LoRA named {adapter_name!r} is already loaded; give another adapter name")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", adapter_name):
        raise LoraError(f"adapter names must be identifiers (letters, digits, _), got {adapter_name!r}")
    rank = Counter(ranks[m] for m in modules).most_common(1)[0][0]
    alpha = Counter(alphas[m] for m in modules).most_common(1)[0][0]
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules), init_lora_weights=True,
        rank_pattern={f"^{re.escape(m)}$": ranks[m] for m in modules if ranks[m] != rank},
        alpha_pattern={f"^{re.escape(m)}$": alphas[m] for m in modules if alphas[m] != alpha},
    )
    # PEFT freezes every base parameter; keep them as they were: torch's linear takes another kernel path for a weight
    # that requires grad (even under no_grad), so freezing alone would move the base model's outputs in the last bits.
    # Training freezes what it does not train itself.
    base_grad = {n: p.requires_grad for n, p in unet.named_parameters()}
    with warnings.catch_warnings():  # PEFT warns that a second adapter is a second adapter
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    for name, param in unet.named_parameters():
        before = base_grad.get(name.replace(".base_layer.", "."), base_grad.get(name))
        if before is not None and ".lora_" not in name:
            param.requires_grad_(before)
    wrapped = {name for name, layer in _tuner_layers(unet) if adapter_name in layer.lora_A}
    if wrapped != set(modules):  # PEFT matched other modules than asked (it must not): refuse rather than guess
        raise LoraError(f"PEFT adapted {len(wrapped)} modules where {len(modules)} were asked for")
    _registry(unet)[adapter_name] = 1.0
    set_lora_scales(unet, {adapter_name: 1.0})


def add_lora(unet: nn.Module, rank: int, alpha: float | None = None, targets: Sequence[str] = ("spatial",),
             dropout: float = 0.0, adapter_name: str = "default") -> list[str]:
    """Add a fresh, trainable adapter (B = 0, so the model is unchanged until it trains); returns the adapted module
    names. The base parameters keep their ``requires_grad``; :func:`lora_parameters` lists this adapter's."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoraError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    modules = resolve_targets(unet, targets)
    _inject(unet, modules, dict.fromkeys(modules, rank), dict.fromkeys(modules, alpha), adapter_name, dropout)
    unet.__dict__.setdefault("_vidiff_lora_targets", {})[adapter_name] = list(targets)
    return modules


def lora_parameters(unet: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    """The parameters of one adapter (what a LoRA fine-tune optimises)."""
    params = []
    for _, layer in _tuner_layers(unet):
        if adapter_name in layer.lora_A:
            params += [layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight]
    return params


def set_lora_scales(unet: nn.Module, scales: Mapping[str, float]) -> None:
    """Set the scales of loaded adapters; an adapter at scale 0 is switched off (its layers are skipped, so the
    output is bit for bit the model's without it)."""
    reg = _registry(unet)
    for name, scale in scales.items():
        if name not in reg:
            raise LoraError(f"no LoRA named {name!r} is loaded (loaded: {', '.join(reg) or 'none'})")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise LoraError(f"LoRA scale must be a finite number, got {scale!r}")
        reg[name] = float(scale)
    active = [n for n, s in reg.items() if s != 0.0]
    for _, layer in _tuner_layers(unet):
        for name, scale in reg.items():
            layer.set_scale(name, scale)
        keep_grad = {n: p.requires_grad for n, p in layer.named_parameters()}
        layer.set_adapter([n for n in active if n in layer.lora_A])
        for n, p in layer.named_parameters():  # set_adapter toggles requires_grad; training decides that, not scales
            p.requires_grad_(keep_grad[n])


def _replace_with_base(unet: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = unet.get_submodule(parent_name) if parent_name else unet
    setattr(parent, child, layer.get_base_layer())


def unload_lora(unet: nn.Module) -> None:
    """Remove every adapter: the U-Net gets its original modules back."""
    for name, layer in list(_tuner_layers(unet)):
        _replace_with_base(unet, name, layer)
    unet.__dict__.pop("_vidiff_loras", None)
    unet.__dict__.pop("_vidiff_lora_targets", None)
    unet.__dict__.pop("peft_config", None)


@torch.no_grad()
def merge_lora(unet: nn.Module) -> None:
    """Fold every active adapter (at its scale) into the base weights and remove the adapters: the merged U-Net is a
    plain one, as fast as before, computing what the adapters did (within float rounding)."""
    for name, layer in list(_tuner_layers(unet)):
        if layer.active_adapters:
            layer.merge(adapter_names=list(layer.active_adapters))
        _replace_with_base(unet, name, layer)
    unet.__dict__.pop("_vidiff_loras", None)
    unet.__dict__.pop("_vidiff_lora_targets", None)
    unet.__dict__.pop("peft_config", None)


# ---------------------------------------------------------------------------------------------------------- files


def base_model_info(unet: nn.Module) -> dict[str, Any]:
    """What a LoRA records about the model it was made for (shown when it does not fit another)."""
    config = dict(getattr(unet, "config", {}) or {})
    keep = ("in_channels", "model_channels", "channel_mult", "attention_resolutions", "num_res_blocks",
            "context_dim", "num_head_channels", "temporal_attention", "temporal_conv", "image_cross_attention")
    info: dict[str, Any] = {"class": type(unet).__name__}
    info.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k in keep})
    return info


def lora_file_from_unet(unet: nn.Module, adapter_name: str = "default", **extra: Any) -> LoraFile:
    """The adapter ``adapter_name`` of ``unet`` as a :class:`LoraFile` (weights copied to CPU float32)."""
    weights, alpha = {}, {}
    for name, layer in _tuner_layers(unet):
        if adapter_name in layer.lora_A:
            a = layer.lora_A[adapter_name].weight.detach().float().cpu().clone()
            b = layer.lora_B[adapter_name].weight.detach().float().cpu().clone()
            weights[name] = (a, b)
            alpha[name] = float(layer.lora_alpha[adapter_name])
    if not weights:
        raise LoraError(f"the U-Net has no LoRA named {adapter_name!r}")
    targets = unet.__dict__.get("_vidiff_lora_targets", {}).get(adapter_name, ["custom"])
    return LoraFile(weights, alpha, list(targets), base_model_info(unet), **extra)


def _common(values: Iterable) -> Any:
    return Counter(values).most_common(1)[0][0]


def save_lora(lora: LoraFile, path: str | os.PathLike) -> Path:
    """Write ``lora`` as a vidiff LoRA safetensors file, atomically (docs/lora.md has the layout)."""
    from vidiff.utils.io import atomic_save_safetensors

    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b) in lora.weights.items():
        tensors[f"{KEY_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{KEY_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    ranks = lora.ranks()
    rank, alpha = _common(ranks.values()), _common(lora.alpha.values())
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(lora.weights),
        "rank_pattern": {m: r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {m: a for m, a in lora.alpha.items() if a != alpha},
        "use_dora": False,
        "use_rslora": False,
    }
    metadata = {
        "format": "pt",
        "vidiff_lora_version": LORA_FORMAT_VERSION,
        METADATA_KEY: json.dumps(config),
        "targets": json.dumps(lora.targets),
        "base_model": json.dumps(lora.base_model),
    }
    if lora.vocabulary:
        metadata["vocabulary"] = json.dumps(sorted(set(lora.vocabulary)))
    metadata.update({k: v for k, v in lora.extra.items() if k not in metadata})
    return atomic_save_safetensors(tensors, path, metadata=metadata)


def _json_meta(meta: Mapping[str, str], key: str, path: Path, default: Any) -> Any:
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise LoraError(f"{path}: metadata entry {key!r} is not valid JSON") from None


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a vidiff LoRA file; a missing file, another layout or inconsistent ranks are one-line errors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}" if not path.exists() else f"LoRA path {path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except Exception as err:  # safetensors raises its own error types for a non-safetensors or truncated file
        raise LoraError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); a LoRA in "
                        "another layout can be converted with `vidiff lora convert`") from None
    bad = next((k for k in tensors if not (k.startswith(KEY_PREFIX) and k.endswith(_SUFFIXES))), None)
    if bad is not None:
        raise LoraError(f"{path} is not in vidiff's LoRA layout (key {bad!r}; expected unet.<module>.lora_A.weight "
                        "and .lora_B.weight): convert it with `vidiff lora convert`")
    if not tensors:
        raise LoraError(f"{path} holds no LoRA weights")
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            name = key[len(KEY_PREFIX): -len(".lora_A.weight")]
            b_key = f"{KEY_PREFIX}{name}.lora_B.weight"
            if b_key not in tensors:
                raise LoraError(f"{path}: {name} has lora_A but no lora_B")
            a, b = tensors[key], tensors[b_key]
            if a.ndim < 2 or b.ndim != a.ndim or b.shape[1] != a.shape[0]:
                raise LoraError(f"{path}: rank mismatch at {name}: lora_A {tuple(a.shape)} gives rank {a.shape[0]}, "
                                f"lora_B {tuple(b.shape)} expects {b.shape[1] if b.ndim > 1 else '?'}")
            weights[name] = (a, b)
    orphan = next((k for k in tensors if k.endswith(".lora_B.weight")
                   and k[len(KEY_PREFIX): -len(".lora_B.weight")] not in weights), None)
    if orphan is not None:
        raise LoraError(f"{path}: {orphan} has no matching lora_A")
    config = _json_meta(meta, METADATA_KEY, path, {})
    order = {m: i for i, m in enumerate(config.get("target_modules") or [])}  # the model's order (safetensors sorts)
    weights = dict(sorted(weights.items(), key=lambda kv: order.get(kv[0], len(order))))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    alpha: dict[str, float] = {}
    for name, (a, _) in weights.items():
        rank = int(a.shape[0])
        stated = rank_pattern.get(name, config.get("r"))
        if stated is not None and int(stated) != rank:
            raise LoraError(f"{path}: rank mismatch at {name}: the metadata says rank {stated}, the weights have {rank}")
        alpha[name] = float(alpha_pattern.get(name, config.get("lora_alpha", rank)))
    extra = {k: v for k, v in meta.items()
             if k not in ("format", "vidiff_lora_version", METADATA_KEY, "targets", "base_model", "vocabulary")}
    return LoraFile(weights, alpha, _json_meta(meta, "targets", path, ["custom"]),
                    _json_meta(meta, "base_model", path, {}), _json_meta(meta, "vocabulary", path, []), extra,
                    source=str(path))


def _module_shape(module: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, ()
    return module.in_channels, module.out_channels, tuple(module.kernel_size)


def check_fits(unet: nn.Module, lora: LoraFile, where: str = "the LoRA") -> None:
    """Raise :class:`LoraError` naming the first module of ``lora`` this U-Net lacks or whose shape differs."""
    modules = adaptable_modules(unet)
    missing = [n for n in lora.weights if n not in modules]
    if missing:
        matched = len(lora.weights) - len(missing)
        base = lora.base_model
        made_for = f" (it was made for {json.dumps(base)})" if base else ""
        raise LoraError(f"{where} does not fit this U-Net: {matched} of {len(lora.weights)} modules match, the first "
                        f"missing one is {missing[0]}{made_for}")
    for name, (a, b) in lora.weights.items():
        fan_in, fan_out, kernel = _module_shape(modules[name])
        ok = a.shape[1] == fan_in and b.shape[0] == fan_out and a.ndim == 2 + len(kernel)
        if ok and kernel:
            ok = tuple(a.shape[2:]) == kernel and all(s == 1 for s in b.shape[2:])
        if not ok:
            raise LoraError(f"{where} does not fit this U-Net at {name}: lora_A {tuple(a.shape)} and lora_B "
                            f"{tuple(b.shape)} against a {type(modules[name]).__name__} {fan_in} -> {fan_out}"
                            + (f" with kernel {kernel}" if kernel else ""))


def _adapter_name(unet: nn.Module, path: str | os.PathLike | None) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem) if path is not None else "lora"
    stem = stem if stem and not stem[0].isdigit() else f"lora_{stem}"
    taken = _registry(unet)
    name, i = stem, 1
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    return name


@torch.no_grad()
def load_lora(unet: nn.Module, lora: str | os.PathLike | LoraFile, scale: float = 1.0,
              adapter_name: str | None = None) -> str:
    """Load a LoRA (a file or a :class:`LoraFile`) onto ``unet`` beside any already loaded; returns its adapter name.

    The checks run before the model is touched, so a LoRA that does not fit leaves the U-Net as it was.
    """
    lora = lora if isinstance(lora, LoraFile) else read_lora(lora)
    path = lora.source
    where = f"the LoRA {path}" if path is not None else "the LoRA"
    check_fits(unet, lora, where)
    name = adapter_name or _adapter_name(unet, path)
    modules = list(lora.weights)
    _inject(unet, modules, lora.ranks(), lora.alpha, name)
    layers = dict(_tuner_layers(unet))
    for module, (a, b) in lora.weights.items():
        layer = layers[module]
        layer.lora_A[name].weight.copy_(a.reshape(layer.lora_A[name].weight.shape))
        layer.lora_B[name].weight.copy_(b.reshape(layer.lora_B[name].weight.shape))
        layer.lora_A[name].requires_grad_(False)
        layer.lora_B[name].requires_grad_(False)
    unet.__dict__.setdefault("_vidiff_lora_targets", {})[name] = list(lora.targets)
    set_lora_scales(unet, {name: scale})
    return name
