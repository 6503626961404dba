"""``vidiff lora merge | convert | info``: fold LoRAs into a model folder, convert released layouts, describe a file.

Training a LoRA is ``vidiff train`` with ``train.lora``; loading one is ``--lora PATH[:SCALE]`` on generate, animate,
edit and eval (docs/lora.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from .cli_common import check_model_folder, lora_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("lora", help="merge LoRAs into a model folder, convert a released LoRA, describe a LoRA file",
                       description="LoRA files (docs/lora.md): train them with `vidiff train` (train.lora), load them "
                                   "with --lora PATH[:SCALE] on generate, animate, edit and eval.")
    verbs = p.add_subparsers(dest="lora_command", required=True)
    m = verbs.add_parser("merge", help="write a full model folder with LoRAs folded into its U-Net")
    m.add_argument("model", help="vidiff model folder the LoRAs were made for")
    m.add_argument("loras", nargs="+", type=lora_arg, metavar="LORA[:SCALE]", help="LoRA files, each at SCALE (1)")
    m.add_argument("-o", "--output", required=True, help="model folder to create")
    m.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    c = verbs.add_parser("convert", help="convert a LoRA released for VideoCrafter2 (kohya, PEFT or cloneofsimo/T2V-Turbo "
                                         "layout) into vidiff's LoRA file")
    c.add_argument("source", help=".safetensors, .pt or .ckpt LoRA with official LVDM module names (or a module-order "
                                  "list)")
    c.add_argument("output", help="vidiff LoRA file to write (.safetensors)")
    c.add_argument("--model", required=True, help="the vidiff model folder it is for (e.g. a `vidiff convert` of "
                                                  "VideoCrafter2): its U-Net's layout resolves the names")
    c.add_argument("--layout", choices=("kohya", "peft", "list"), help="source layout (default: detected)")
    c.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    i = verbs.add_parser("info", help="print what a vidiff LoRA file holds")
    i.add_argument("file", type=lora_arg, metavar="LORA", help="vidiff LoRA file")
    return p


def _unet_on_meta(model: str):
    import torch

    from .models.unet3d import UNet3DModel

    config_path = Path(model) / "unet" / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{model} has no unet/config.json")
    config = json.loads(config_path.read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return UNet3DModel.from_config(config)


def _merge(args: argparse.Namespace) -> int:
    check_model_folder(args.model)
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ValueError(f"output folder {out} already exists (use --overwrite to replace it)")
    if out.resolve() == Path(args.model).resolve():
        raise ValueError("the output folder must differ from the model folder")
    from .model_folder import INDEX_NAME, load_component, read_index, write_index
    from .models.lora import LoraError, load_lora, merge_lora, read_lora
    from .utils.io import atomic_directory

    start = time.time()
    folder = Path(args.model)
    index = read_index(folder, ValueError)
    unet = load_component(folder, "unet", None, index, error=ValueError)
    words: list[str] = []
    for path, scale in args.loras:
        try:
            lora = read_lora(path)
            name = load_lora(unet, lora, scale)
        except LoraError as err:
            raise ValueError(str(err)) from None
        words += lora.vocabulary
        print(f"loaded {path} at scale {scale:g} as {name}: {lora.describe()}")
    merge_lora(unet)
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        for entry in folder.iterdir():
            if entry.name in ("unet", INDEX_NAME):
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        unet.save_pretrained(tmp / "unet")
        index["lora_merged"] = [{"file": Path(p).name, "scale": s} for p, s in args.loras]
        if words and "vocabulary" in index:
            index["vocabulary"] = sorted(set(index["vocabulary"]) | set(words))
        write_index(tmp, index, {"unet": unet})
    print(f"wrote {out} in {time.time() - start:.1f} s")
    return 0


def _convert(args: argparse.Namespace) -> int:
    check_model_folder(args.model)
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {out}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists (use --overwrite to replace it)")
    if not Path(args.source).is_file():
        raise ValueError(f"LoRA file not found: {args.source}")
    from .conversion.lora import convert_lora
    from .models.lora import save_lora

    lora = convert_lora(args.source, _unet_on_meta(args.model), args.layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_lora(lora, out)
    note = json.loads(lora.extra["converted_from"])
    print(f"{note['layout']} layout: {lora.describe()}")
    for dropped in note["dropped"]:
        print(f"  dropped {dropped}")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .models.lora import read_lora

    path, _ = args.file
    lora = read_lora(path)
    print(f"{path}: {lora.describe()}")
    alphas = sorted(set(lora.alpha.values()))
    print(f"  alpha {', '.join(f'{a:g}' for a in alphas)}; targets {', '.join(lora.targets)}")
    if lora.base_model:
        print(f"  made for {json.dumps(lora.base_model)}")
    if lora.vocabulary:
        print(f"  teaches {', '.join(lora.vocabulary)}")
    for key, value in lora.extra.items():
        print(f"  {key}: {value}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"merge": _merge, "convert": _convert, "info": _info}[args.lora_command](args)
