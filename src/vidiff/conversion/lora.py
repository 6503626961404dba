"""LoRAs in the layouts released for VideoCrafter2 -> vidiff's LoRA file (:mod:`vidiff.models.lora`).

Three layouts name the official LVDM modules (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``, the misspelt
``temopral_conv``, ``init_attn.0``); their names go through the same key map as full checkpoints
(:func:`vidiff.conversion.unet.rename_official_key`):

* ``kohya`` (the webui layout): ``lora_unet_<official name, dots as underscores>.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha``;
* ``peft`` (PEFT / diffusers): ``[base_model.model.][model.diffusion_model.]<official name>.lora_A[.<adapter>].weight``
  / ``lora_B`` (``lora_down`` / ``lora_up`` accepted too), alpha from the file's ``lora_adapter_metadata`` or ``.alpha``;
* ``list`` (cloneofsimo's ``lora.pt``, the layout of T2V-Turbo's VideoCrafter2 ``unet_lora.pt``): a pickled list
  ``[up_0, down_0, up_1, down_1, ...]`` over every ``nn.Linear``, ``nn.Conv2d`` and ``nn.Conv3d`` of the official U-Net in
  module order, scale 1 (alpha = rank); the same as a ``.safetensors`` with ``unet:<i>:up`` / ``unet:<i>:down`` keys
  (its "safeloras" form). T2V-Turbo's U-Net has one Linear more than VideoCrafter2, ``time_cond_proj`` (the guidance
  embedding, right after the time/fps embeddings); vidiff's U-Net has no such input, so that pair is dropped and
  recorded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.lora import LoraError, LoraFile, adaptable_modules, base_model_info
from .unet import rename_official_key

__all__ = ["LAYOUTS", "convert_lora", "detect_layout", "official_module_name", "read_lora_source"]

LAYOUTS = ("kohya", "peft", "list")
_PEFT_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "unet.")


def official_module_name(name: str) -> str:
    """The official LVDM name of a vidiff U-Net module (the inverse of the checkpoint key map)."""
    official = name.replace("temporal_conv.", "temopral_conv.")
    if official.startswith("init_attn."):
        official = "init_attn.0." + official[len("init_attn."):]
    if rename_official_key(official + ".weight") != name + ".weight":
        raise LoraError(f"no official name maps to the vidiff module {name}")
    return official


def read_lora_source(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """(contents, safetensors metadata) of a LoRA file: a dict of tensors or a list (``.pt`` pickles, read with
    ``weights_only``)."""
    from vidiff.utils.io import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
        except Exception as err:  # safetensors' own error types
            raise LoraError(f"{path} is not a readable safetensors file ({err})") from None
    data = safe_torch_load(path)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if isinstance(data, tuple):
        data = list(data)
    if not isinstance(data, Mapping | list):
        raise LoraError(f"{path} holds a {type(data).__name__}, not a LoRA (a dict of tensors or a list of them)")
    return data, {}


def detect_layout(data: Any) -> str:
    """Which of :data:`LAYOUTS` the contents are in (an error says what was found instead)."""
    if isinstance(data, list):
        return "list"
    keys = list(data)
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(re.fullmatch(r"unet:\d+:(up|down)", k) for k in keys):
        return "list"
    if any(re.search(r"\.(lora_A|lora_B|lora_down|lora_up)(\.[^.]+)?\.weight$", k) for k in keys):
        return "peft"
    raise LoraError(f"unknown LoRA layout (first key {keys[0]!r} if any); known: kohya lora_unet_*, PEFT lora_A/"
                    "lora_B, cloneofsimo lists" if keys else "the LoRA file is empty")


def _pairs_from_named(data: Mapping[str, torch.Tensor], layout: str, unet: nn.Module, meta: Mapping[str, str]
                      ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float], list[str]]:
    """(module -> (down, up), module -> alpha, dropped keys) for the kohya and PEFT layouts."""
    modules = adaptable_modules(unet)
    by_official: dict[str, str] = {}
    for name in modules:
        try:
            official = official_module_name(name)
        except LoraError:
            continue
        by_official[official] = name
        if official.startswith("fps_embedding."):  # DynamiCrafter-256 names it framestride_embed
            by_official["framestride_embed." + official[len("fps_embedding."):]] = name
    groups: dict[str, dict[str, torch.Tensor]] = {}
    dropped: list[str] = []
    if layout == "kohya":
        underscored = {o.replace(".", "_"): n for o, n in by_official.items()}
        for key, tensor in data.items():
            stem, _, part = key.partition(".")
            if not stem.startswith("lora_unet_"):
                dropped.append(key)  # text-encoder (lora_te_*) and other parts: vidiff adapts the U-Net
                continue
            name = underscored.get(stem[len("lora_unet_"):])
            if name is None:
                raise LoraError(f"LoRA key {key!r} names no module of this U-Net")
            role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(part)
            if role is None:
                raise LoraError(f"LoRA key {key!r}: expected .lora_down.weight, .lora_up.weight or .alpha")
            groups.setdefault(name, {})[role] = tensor
    else:
        rx = re.compile(r"^(?P<mod>.+?)\.(?P<role>lora_A|lora_B|lora_down|lora_up)(\.[^.]+)?\.weight$|^(?P<amod>.+)\.alpha$")
        for key, tensor in data.items():
            m = rx.match(key)
            if m is None:
                dropped.append(key)
                continue
            mod = m.group("mod") or m.group("amod")
            for prefix in _PEFT_PREFIXES:  # in this order: PEFT's wrapper, then the checkpoint's prefix
                mod = mod.removeprefix(prefix)
            if mod.startswith("text_encoder.") or mod.startswith("cond_stage_model."):
                dropped.append(key)
                continue
            name = rename_official_key(mod + ".weight")[: -len(".weight")]
            if name not in modules:
                raise LoraError(f"LoRA key {key!r} names no module of this U-Net (read as {name})")
            role = {"lora_A": "down", "lora_down": "down", "lora_B": "up", "lora_up": "up"}.get(m.group("role"), "alpha")
            groups.setdefault(name, {})[role] = tensor
    config = {}
    if "lora_adapter_metadata" in meta:
        try:
            config = json.loads(meta["lora_adapter_metadata"])
        except json.JSONDecodeError:
            config = {}
    pairs, alpha = {}, {}
    for name, g in groups.items():
        if "down" not in g or "up" not in g:
            raise LoraError(f"LoRA for {name} lacks its {'down (A)' if 'down' not in g else 'up (B)'} weight")
        pairs[name] = (g["down"], g["up"])
        rank = int(g["down"].shape[0])
        if "alpha" in g:
            alpha[name] = float(g["alpha"].float().reshape(-1)[0])
        else:
            alpha[name] = float(config.get("alpha_pattern", {}).get(name, config.get("lora_alpha", rank)))
    return pairs, alpha, dropped


def _list_pairs(data: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(down, up), ...] of a cloneofsimo list or its safeloras dict, in module order."""
    if isinstance(data, list):
        if len(data) % 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise LoraError(f"a cloneofsimo LoRA list holds up/down tensor pairs; got {len(data)} entries")
        return [(data[i + 1].detach(), data[i].detach()) for i in range(0, len(data), 2)]
    idx = sorted({int(k.split(":")[1]) for k in data if re.fullmatch(r"unet:\d+:(up|down)", k)})
    if idx != list(range(len(idx))):
        raise LoraError("the safeloras unet:<i> entries are not numbered 0..n-1")
    return [(data[f"unet:{i}:down"], data[f"unet:{i}:up"]) for i in idx]


def _fits(module: nn.Module | None, down: torch.Tensor, up: torch.Tensor) -> bool:
    if module is None:
        return False
    if isinstance(module, nn.Linear):
        return down.ndim == 2 and up.ndim == 2 and down.shape[1] == module.in_features \
            and up.shape == (module.out_features, down.shape[0])
    kernel = tuple(module.kernel_size)
    return down.ndim == 2 + len(kernel) and tuple(down.shape[1:]) == (module.in_channels, *kernel) \
        and tuple(up.shape[:2]) == (module.out_channels, down.shape[0]) and all(s == 1 for s in up.shape[2:])


def _align(sequence: list[tuple[str, nn.Module | None]], pairs: list) -> tuple[dict, list[str]] | str:
    """Pair the modules (in order) with the pairs one to one, as T2V-Turbo's loader does for a LoRA that covers every
    module; ``None`` marks a module vidiff lacks (its pair is dropped). A string is the first misfit."""
    if len(sequence) != len(pairs):
        return f"the list holds {len(pairs)} pairs for {len(sequence)} modules"
    out, dropped = {}, []
    for i, ((name, module), (down, up)) in enumerate(zip(sequence, pairs)):
        if module is None:
            if down.ndim != 2 or up.ndim != 2:
                return f"pair {i} (down {tuple(down.shape)}, up {tuple(up.shape)}) is no Linear's, as {name} is"
            dropped.append(f"{name} (pair {i}: down {tuple(down.shape)}, up {tuple(up.shape)}): vidiff's U-Net has "
                           "no guidance-embedding input")
        elif not _fits(module, down, up):
            return (f"pair {i} (down {tuple(down.shape)}, up {tuple(up.shape)}) does not fit {name} "
                    f"({type(module).__name__})")
        else:
            out[name] = (down, up)
    return out, dropped


def _pairs_from_list(data: Any, unet: nn.Module) -> tuple[dict, dict, list[str]]:
    pairs = _list_pairs(data)
    plain = list(adaptable_modules(unet).items())
    result = _align(plain, pairs)
    if isinstance(result, str) and len(pairs) == len(plain) + 1:
        # T2V-Turbo: its guidance embedding time_cond_proj comes right after the time / fps embeddings
        embeds = [k for k, (n, _) in enumerate(plain) if n.split(".")[0] in ("time_embed", "fps_embedding")]
        at = embeds[-1] + 1 if embeds else 0
        result = _align(plain[:at] + [("time_cond_proj", None)] + plain[at:], pairs)
    if isinstance(result, str):
        raise LoraError(f"the LoRA list does not fit this U-Net ({len(plain)} Linear/Conv2d/Conv3d modules in the "
                        f"official order, each with a pair, as T2V-Turbo's VideoCrafter2 LoRA has): {result}")
    weights, dropped = result
    return weights, {n: float(d.shape[0]) for n, (d, _) in weights.items()}, dropped


def convert_lora(path: str | os.PathLike, unet: nn.Module, layout: str | None = None) -> LoraFile:
    """Read a LoRA released for an official LVDM U-Net and map it onto ``unet`` (which may live on the meta device:
    only its module structure is used). Every key is used or reported in ``extra["converted_from"]``."""
    data, meta = read_lora_source(path)
    layout = layout or detect_layout(data)
    if layout not in LAYOUTS:
        raise LoraError(f"unknown LoRA layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if layout == "list":
        weights, alpha, dropped = _pairs_from_list(data, unet)
    else:
        if not isinstance(data, Mapping):
            raise LoraError(f"the {layout} layout is a dict of tensors; {path} holds a list")
        weights, alpha, dropped = _pairs_from_named(data, layout, unet, meta)
    if not weights:
        raise LoraError(f"{path} holds no U-Net LoRA weights")
    order = list(adaptable_modules(unet))
    weights = {n: (d.float().contiguous(), u.float().contiguous()) for n, (d, u) in
               sorted(weights.items(), key=lambda kv: order.index(kv[0]))}
    note = {"layout": layout, "source": Path(path).name, "modules": len(weights), "dropped": dropped}
    lora = LoraFile(weights, {n: alpha[n] for n in weights}, ["custom"], base_model_info(unet),
                    extra={"converted_from": json.dumps(note)})
    from ..models.lora import check_fits

    check_fits(unet, lora, f"the converted LoRA {path}")
    return lora
