"""``vidiff`` command line: convert official checkpoints, generate and animate videos, train, evaluate."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__, cli_animate, cli_edit, cli_eval, cli_lora, cli_serve, cli_train, cli_univid, cli_videogen
from .cli_common import (
    DTYPES,
    ArgumentParser,
    add_sampling_args,
    check_model_folder,
    check_runtime_args,
    deep_cache_arg,
    describe_error,
    positive_int,
    probe_verdict,
    resolve_model,
    torch_dtype,
    write_outputs,
)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .model_folder import FAMILIES

    p = sub.add_parser("convert", help="convert an official VideoCrafter/DynamiCrafter checkpoint into a vidiff model folder")
    p.add_argument("checkpoint", help="official .ckpt/.pt/.pth (Lightning, plain or DeepSpeed layout) or .safetensors")
    p.add_argument("out_dir", help="model folder to create")
    p.add_argument("--family", choices=sorted(FAMILIES), help="released configuration (detected from the keys if omitted)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as in the checkpoint)")
    p.add_argument("--num-head-channels", type=positive_int, help="U-Net attention head width (default 64, as every release)")
    p.add_argument("--text-heads", type=positive_int, help="text encoder head count (default width/64, 16 for OpenCLIP ViT-H)")
    p.add_argument("--image-heads", type=positive_int, help="image encoder head count (default 16 for OpenCLIP ViT-H/14)")
    p.add_argument("--projector-heads", type=positive_int, help="Resampler head count (default attention width / 64)")
    p.add_argument("--projector-dim-head", type=positive_int, help="Resampler head width (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video (or, with a text-to-image model and -o x.png, an image) "
                                        "from a text prompt")
    p.add_argument("prompt", help="text prompt")
    p.add_argument("--model", help="vidiff model folder (default: the embedded shapes-world text-to-video model, or "
                                   "the text-to-image one for -o *.png)")
    add_sampling_args(p, "outputs/video.mp4")
    p.add_argument("--fps", type=positive_int, help="fps conditioning and playback rate (default: the model's)")
    p.add_argument("--window", type=positive_int, metavar="N",
                   help="long videos: co-denoise overlapping windows of N frames (the model's trained length) when "
                        "--frames is larger, each frame fused over its windows")
    p.add_argument("--window-stride", type=positive_int, metavar="S", help="frames between windows (default N/4)")
    p.add_argument("--no-noise-rescheduling", action="store_true",
                   help="with --window: fresh noise for every frame instead of FreeNoise's shuffled repeats")
    p.add_argument("--image", dest="image_prompt", metavar="IMG",
                   help="UniVid models: an image prompt too (text+image-to-video)")
    cli_univid.add_stream_args(p)
    cli_videogen.add_generate_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="vidiff", description="Video diffusion toolkit")
    parser.add_argument("--version", action="version", version=f"vidiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_generate(sub)
    cli_animate.add_parser(sub)
    cli_edit.add_parser(sub)
    cli_eval.add_parser(sub)
    cli_train.add_parser(sub)
    cli_lora.add_parser(sub)
    cli_serve.add_parser(sub)
    cli_videogen.add_interpolate_parser(sub)
    return parser


def cmd_convert(args: argparse.Namespace) -> int:
    source, target = Path(args.checkpoint), Path(args.out_dir)
    if not source.is_file():
        raise ValueError(f"checkpoint not found: {source}" if not source.exists() else f"{source} is not a file")
    if target.exists() and not args.overwrite:
        raise ValueError(f"output folder {target} already exists (use --overwrite to replace it)")
    from .conversion.lvdm import HeadCounts, convert_checkpoint

    start = time.time()
    converted = convert_checkpoint(
        args.checkpoint,
        args.out_dir,
        args.family,
        heads=HeadCounts(
            args.num_head_channels, args.text_heads, args.image_heads, args.projector_heads, args.projector_dim_head
        ),
        dtype=torch_dtype(args.dtype),
        overwrite=args.overwrite,
    )
    print(f"family: {converted.family.name} ({converted.family.task})")
    for name, comp in converted.components.items():
        n = sum(v.numel() for v in comp.state_dict.values())
        print(f"  {name}: {len(comp.state_dict)} tensors, {n / 1e6:.2f} M parameters")
    if converted.ignored:
        print(f"  ignored {len(converted.ignored)} unused keys (listed in model_index.json)")
    print(f"wrote {args.out_dir} in {time.time() - start:.1f} s")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise ValueError("the prompt is empty")
    model = resolve_model(args.model, "t2i" if args.output.endswith(".png") else "t2v")
    index = check_model_folder(model)
    cli_univid.check_not_unified_args(args, index)
    cli_videogen.check_not_reference_args(args, index)
    check_runtime_args(args)
    if cli_univid.is_unified(index):
        if args.image_prompt is not None:
            cli_animate._check_image_path(args.image_prompt)
        return cli_univid.run_unified(args, model, args.prompt, args.image_prompt, "generated")
    if cli_videogen.is_reference(index):
        return cli_videogen.run_reference(args, model, index)
    deep_cache = deep_cache_arg(args)
    if args.window is None and (args.window_stride is not None or args.no_noise_rescheduling):
        raise ValueError("--window-stride and --no-noise-rescheduling need --window N")
    if args.window is not None and args.window_stride is not None and args.window_stride > args.window:
        raise ValueError(f"--window-stride ({args.window_stride}) must not exceed --window ({args.window})")
    from .pipelines.text_to_video import TextToVideoPipeline

    start = time.time()
    pipe = TextToVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype), device=args.device,
                                               lora=args.lora, vae=args.vae)
    fps = args.fps if args.fps is not None else pipe.defaults.get("fps", 1)
    frames = args.frames
    if frames is None and args.output.endswith(".png"):
        frames = 1
    out = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_rescale=args.guidance_rescale,
        fps=fps,
        eta=args.eta,
        seed=args.seed,
        sampler=args.sampler,
        timestep_spacing=args.timestep_spacing,
        deep_cache=deep_cache,
        attention_broadcast=args.attention_broadcast,
        window=args.window,
        window_stride=args.window_stride,
        noise_rescheduling=not args.no_noise_rescheduling,
    )
    write_outputs(out.frames, args, fps, start, "generated")
    verdict = probe_verdict(out.frames[0], args.prompt, model, fps)
    if verdict:
        print(verdict)
    return 0


COMMANDS = {"convert": cmd_convert, "generate": cmd_generate, "animate": cli_animate.run, "edit": cli_edit.run,
            "eval": cli_eval.run, "train": cli_train.run, "serve": cli_serve.run,
            "lora": cli_lora.run, "interpolate": cli_videogen.run_interpolate}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vidiff: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is returned (argument errors and --help included), never raised."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse: --help, --version (0) or a one-line argument error (2)
        return done.code if isinstance(done.code, int) else 2
    if not os.environ.get("VIDIFF_DEBUG"):
        warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        print(f"vidiff {args.command}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # FileNotFoundError, PermissionError, PipelineError, ConversionError, ...
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        print(f"vidiff {args.command}: error: {describe_error(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
