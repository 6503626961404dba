"""Arguments and output handling shared by the generating sub-commands (generate, animate)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, DTYPES[name])


def add_sampling_args(p: argparse.ArgumentParser, default_output: str) -> None:
    p.add_argument("-o", "--output", default=default_output, help=f"output .mp4 path (default {default_output})")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default: the model's, 1.0 for the official scripts)")
    p.add_argument("--frames", type=int, help="number of frames")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="U-Net/encoder compute dtype")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--gif", action="store_true", help="also write <stem>.gif")
    p.add_argument("--sheet", action="store_true", help="also write a PNG contact sheet <stem>_sheet.png")


def check_runtime_args(args: argparse.Namespace) -> None:
    """Fail on bad arguments before any model is loaded; apply the thread count."""
    import torch

    if not args.output.endswith(".mp4"):
        raise ValueError(f"--output must end in .mp4, got {args.output}")
    if args.dtype == "fp16" and not str(args.device).startswith("cuda"):
        raise ValueError("--dtype fp16 needs a GPU (--device cuda); use bf16 or fp32 on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)


def write_outputs(frames, args: argparse.Namespace, fps: float, start: float, verb: str) -> None:
    """Write the first video of a pipeline output (mp4, optional GIF and contact sheet) and print the paths."""
    from .utils.video import save_video_outputs

    paths = save_video_outputs(frames[0], args.output, fps=fps, gif=args.gif, contact_sheet=args.sheet)
    print(f"{verb} {tuple(frames.shape[1:4])} (frames, height, width) in {time.time() - start:.1f} s")
    for path in paths:
        print(f"wrote {path}")


EMBEDDED_MODELS = Path(__file__).resolve().parent / "assets" / "models"


def resolve_model(model: str | None, kind: str) -> str:
    """The --model folder, or the embedded shapes-world default of this kind ("t2v" or "i2v") when none is given."""
    if model is not None:
        return model
    default = EMBEDDED_MODELS / f"shapes_{kind}"
    if not (default / "model_index.json").is_file():
        raise ValueError(f"no --model given and no embedded default {kind} model is installed at {default}")
    return str(default)
