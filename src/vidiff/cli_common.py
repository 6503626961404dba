"""Arguments and output handling shared by the sub-commands.

Nothing here imports torch at module level: ``vidiff --help`` and every argument error must answer at once, so the
argument types below check values (ranges, finiteness, paths) before any heavy import runs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from pathlib import Path

from .model_folder import INDEX_NAME

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SEED_RANGE = 2**64  # torch.Generator.manual_seed takes 64-bit seeds
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``vidiff generate: error: argument --seed: ... (see vidiff generate --help)``)
    instead of the usage block, so a mistake is one line to read; sub-parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def describe_error(err: BaseException) -> str:
    """One line for an error: OS errors always name their path (``[Errno 13] Permission denied`` alone does not)."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        where = os.fsdecode(err.filename)
        if err.filename2 is not None:
            where += f" -> {os.fsdecode(err.filename2)}"
        return f"{err.strerror}: {where}"
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, DTYPES[name])


def seed_arg(text: str) -> int:
    """An integer seed in [0, 2**64)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**64), got {text!r}") from None
    if not 0 <= value < SEED_RANGE:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**64) (0 to {SEED_RANGE - 1}), got {text}")
    return value


def _int_at_least(text: str, low: int) -> int:
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _finite_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (guidance scales)."""
    value = _finite_float(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _finite_float(text, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (DDIM eta, guidance rescale, strengths)."""
    value = _finite_float(text, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def device_arg(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]`` (whether it exists is checked once torch is loaded)."""
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N, mps or xpu, got {text!r}")
    return text


def add_runtime_args(p: argparse.ArgumentParser, device_help: str = "device to run on (default cpu)") -> None:
    p.add_argument("--device", type=device_arg, default="cpu", help=device_help)
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads (default: the cores idle at start, at least 1; on a shared machine threads "
                        "on a busy core slow every step down)")


SAMPLER_CHOICES = ("ddim", "ddpm", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc")
SPACING_CHOICES = ("uniform", "uniform_trailing", "karras")


def add_sampler_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default="ddim",
                   help="sampler (default ddim, the official one); dpmpp_2m and unipc reach DDIM's quality in fewer "
                        "steps")
    p.add_argument("--timestep-spacing", choices=SPACING_CHOICES,
                   help="timesteps to visit: the official uniform / uniform_trailing, or karras (solvers only; "
                        "default: the model's)")
    p.add_argument("--deep-cache", type=positive_int, metavar="N",
                   help="DeepCache: a full U-Net forward every N calls, the calls between reuse its deep features "
                        "(default off)")
    p.add_argument("--deep-cache-depth", type=positive_int, metavar="D",
                   help="input blocks a cached call reruns (default 1, the shallowest branch)")
    p.add_argument("--attention-broadcast", action="store_true",
                   help="pyramid attention broadcast: between t=100 and 800 reuse spatial attention for 2 steps, "
                        "temporal for 4, cross-attention for 6 (default off)")


def parse_lora_spec(text: str) -> tuple[str, float]:
    """``PATH[:scale]`` -> (path, scale); the scale (default 1) is the part after the last colon when it is a number.

    A path that itself holds a colon works whenever the text after its last colon is not a number; ``PATH:`` or a
    non-numeric scale after a colon is an error only if ``PATH`` without it exists (so the mistake is the scale).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a LoRA must be given as PATH or PATH:SCALE, got an empty string")
    head, sep, tail = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        scale = float(tail)
    except ValueError:
        if Path(head).exists() and not Path(text).exists():
            raise ValueError(f"bad LoRA scale {tail!r} in {text!r}: write PATH:SCALE with a number, e.g. "
                             f"{head}:0.8") from None
        return text, 1.0
    if not head:
        raise ValueError(f"{text!r} has a scale but no path: write PATH:SCALE")
    if scale != scale or abs(scale) == float("inf"):
        raise ValueError(f"bad LoRA scale {tail!r} in {text!r}: it must be a finite number")
    return head, scale


def lora_arg(text: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` of an existing LoRA file (scale default 1), checked before torch loads."""
    try:
        path, scale = parse_lora_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"LoRA file not found: {path}" if not Path(path).exists()
                                         else f"LoRA path {path} is not a file")
    return path, scale


def add_lora_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--lora", type=lora_arg, action="append", metavar="PATH[:SCALE]",
                   help="load a LoRA file onto the model, at SCALE (default 1); repeat for several (docs/lora.md)")


def deep_cache_arg(args: argparse.Namespace) -> int | tuple[int, int] | None:
    """The pipelines' ``deep_cache`` from --deep-cache / --deep-cache-depth (a depth alone is an error)."""
    if args.deep_cache is None:
        if args.deep_cache_depth is not None:
            raise ValueError("--deep-cache-depth needs --deep-cache N")
        return None
    return (args.deep_cache, args.deep_cache_depth or 1)


def add_sampling_args(p: argparse.ArgumentParser, default_output: str) -> None:
    p.add_argument("-o", "--output", default=default_output,
                   help=f"output .mp4 path (.png for a text-to-image model; default {default_output})")
    p.add_argument("--negative-prompt", default=None, help="prompt to steer away from (default: empty)")
    p.add_argument("--seed", type=seed_arg, default=123, help="random seed in [0, 2**64) (default 123)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=non_negative_float,
                   help="classifier-free guidance scale, >= 0 (default: the model's)")
    p.add_argument("--guidance-rescale", type=unit_float, help="guidance rescale φ in [0, 1] (default: the model's)")
    p.add_argument("--eta", type=unit_float,
                   help="noise of the stochastic samplers (ddim, euler_a, dpmpp_2m_sde) in [0, 1]: 0 deterministic, "
                        "1 as the official scripts (default: the model's)")
    add_sampler_args(p)
    add_lora_arg(p)
    p.add_argument("--vae", metavar="FOLDER",
                   help="decode with this autoencoder instead of the model's: one trained on the same latent space, "
                        "e.g. a video decoder (vidiff train task video_decoder); an autoencoder or model folder")
    p.add_argument("--frames", type=positive_int, help="number of frames (default: the model's)")
    p.add_argument("--height", type=positive_int, help="height in pixels (default: the model's)")
    p.add_argument("--width", type=positive_int, help="width in pixels (default: the model's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="U-Net/encoder compute dtype (default fp32)")
    add_runtime_args(p)
    p.add_argument("--gif", action="store_true", help="also write <stem>.gif")
    p.add_argument("--sheet", action="store_true", help="also write a PNG contact sheet <stem>_sheet.png")


def check_output_path(path: str, suffixes: tuple[str, ...] = (".mp4", ".png")) -> None:
    """Fail before any work when OUTPUT cannot be written: wrong extension, a folder, or a read-only place."""
    if not path.endswith(suffixes):
        raise ValueError(f"--output must end in {' or '.join(suffixes)}, got {path}")
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--output {path} is an existing folder; give a file name")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:  # the folder that will hold the new ones
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    try:  # the only test that holds for root, read-only mounts and pseudo file systems alike
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"cannot write {path}: files cannot be created in {parent} ({err.strerror or err})") from None


def check_model_folder(model: str) -> dict:
    """The folder's model_index.json, read without torch so a wrong --model fails at once."""
    from .model_folder import read_index

    return read_index(model, ValueError)


def check_runtime_args(args: argparse.Namespace) -> None:
    """Fail on bad arguments before any model is loaded; apply the thread count."""
    check_output_path(args.output)
    if args.dtype == "fp16" and not str(args.device).startswith("cuda"):
        raise ValueError("--dtype fp16 needs a GPU (--device cuda); use bf16 or fp32 on the CPU")
    apply_runtime_args(args)


def apply_runtime_args(args: argparse.Namespace) -> None:
    """Check that --device exists in this torch build and set the CPU thread count (the first torch import)."""
    import torch

    device = str(args.device)
    kind = device.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "xpu": hasattr(torch, "xpu") and torch.xpu.is_available()}[kind]
    if not available:
        build = f"torch {torch.__version__}"
        raise ValueError(f"--device {device}: this machine or this torch build ({build}) has no {kind} device; "
                         "use --device cpu")
    if ":" in device and kind in ("cuda", "xpu"):
        index, count = int(device.split(":")[1]), getattr(torch, kind).device_count()
        if index >= count:
            raise ValueError(f"--device {device}: only {count} {kind} device(s) (0 to {count - 1})")
    if kind == "cpu" or getattr(args, "threads", None):
        from .utils.threads import default_threads

        threads = args.threads or default_threads()
        torch.set_num_threads(threads)


def probe_verdict(video_uint8, prompt: str, model: str, fps: float | None, condition_image=None) -> str | None:
    """One line saying what the shapes-world probes read from a generated clip, e.g.
    ``probe: blue square, moving up ✓`` (or ``✗ colour: expected blue, saw red``), for models trained on the shapes
    world and prompts in its vocabulary; None otherwise (nothing to check against)."""
    from .model_folder import try_read_index

    meta = try_read_index(model)
    if meta is None or "vocabulary" not in meta:
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
    if not (default / INDEX_NAME).is_file():
        raise ValueError(f"no --model given and no embedded default {kind} model is installed at {default}")
    return str(default)
