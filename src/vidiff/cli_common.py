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
    p.add_argument("-o", "--output", default=default_output,
                   help=f"output .mp4 path (.png for a text-to-image model; default {default_output})")
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

    if not args.output.endswith((".mp4", ".png")):
        raise ValueError(f"--output must end in .mp4 (or .png for an image), got {args.output}")
    if args.dtype == "fp16" and not str(args.device).startswith("cuda"):
        raise ValueError("--dtype fp16 needs a GPU (--device cuda); use bf16 or fp32 on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)


def probe_verdict(video_uint8, prompt: str, model: str, fps: float | None, condition_image=None) -> str | None:
    """One line saying what the shapes-world probes read from a generated clip, e.g.
    ``probe: blue square, moving up ✓`` (or ``✗ colour: expected blue, saw red``), for models trained on the shapes
    world and prompts in its vocabulary; None otherwise (nothing to check against)."""
    import json

    index = Path(model) / "model_index.json"
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if "vocabulary" not in meta:
        return None
    from .data.shapes import ShapesWorldConfig, parse_caption
    from .eval.probes import CORE_PROBES, probe_video

    attrs = parse_caption(prompt) if prompt else None
    if attrs is None:
        return None
    frames = video_uint8
    h, w = frames.shape[1:3]
    world = ShapesWorldConfig(height=int(h), width=int(w), num_frames=max(2, int(frames.shape[0])))
    stride = None
    if fps and frames.shape[0] > 1 and float(world.base_fps / fps).is_integer():
        stride = int(world.base_fps / fps)
    cond = None if condition_image is None else condition_image
    try:
        result = probe_video(frames, prompt, world, condition_image=cond, stride=stride)
    except ValueError:
        return None
    obj = attrs.primary
    said = f"{obj.colour} {obj.shape}"
    if obj.motion is not None:
        said += ", standing still" if obj.motion == "still" else f", moving {obj.motion}"
    failed = [f"{name}: expected {_short(s.expected)}, saw {_short(s.detected)}" for name, s in result.scores.items()
              if name in CORE_PROBES and not s.passed]
    return f"probe: {said} " + ("\u2713" if not failed else "\u2717 (" + "; ".join(failed) + ")")


def _short(value) -> str:
    """A probe's expected/detected value for one line: floats to 2 decimals, lists and dicts without quotes."""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_short(v) for v in value)
    return str(value)


def write_outputs(frames, args: argparse.Namespace, fps: float, start: float, verb: str) -> None:
    """Write the first video of a pipeline output (mp4, optional GIF and contact sheet) and print the paths."""
    from .utils.video import save_video_outputs, write_png

    if args.output.endswith(".png"):
        if frames.shape[1] != 1:
            raise ValueError(f"-o {args.output}: a PNG holds one image but {frames.shape[1]} frames were made; "
                             "use .mp4 or --frames 1")
        paths = [write_png(frames[0], args.output)]
    else:
        paths = save_video_outputs(frames[0], args.output, fps=fps, gif=args.gif, contact_sheet=args.sheet)
    print(f"{verb} {tuple(frames.shape[1:4])} (frames, height, width) in {time.time() - start:.1f} s")
    for path in paths:
        print(f"wrote {path}")


EMBEDDED_MODELS = Path(__file__).resolve().parent / "assets" / "models"


def resolve_model(model: str | None, kind: str) -> str:
    """The --model folder, or the embedded shapes-world default of this kind ("t2i", "t2v" or "i2v") when none is
    given."""
    if model is not None:
        return model
    default = EMBEDDED_MODELS / f"shapes_{kind}"
    if not (default / "model_index.json").is_file():
        raise ValueError(f"no --model given and no embedded default {kind} model is installed at {default}")
    return str(default)
