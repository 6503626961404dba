"""``vidiff animate``: turn an image (plus an optional prompt) into a video with an image-to-video model folder.

``add_parser(sub)`` registers the sub-command on the ``vidiff`` parser and ``run(args)`` executes it.
"""

from __future__ import annotations

import argparse
import time

from . import cli_univid
from .cli_common import (
    add_sampling_args,
    check_model_folder,
    check_runtime_args,
    deep_cache_arg,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probe_verdict,
    resolve_model,
    torch_dtype,
    write_outputs,
)

FRAME_STRIDE_PLAYBACK_FPS = 8  # DynamiCrafter-256's fps input is a frame stride; its script saves at 8 fps


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "animate",
        help="animate an image into a video (DynamiCrafter, VideoCrafter1 i2v)",
        description="Animate IMAGE, optionally guided by a text prompt. --last-image interpolates towards a second "
                    "image and --loop returns to the first one (DynamiCrafter models only).",
    )
    p.add_argument("image", help="input image (PNG, JPEG, WebP, ...)")
    p.add_argument("prompt", nargs="?", default="", help="text prompt (default: none)")
    p.add_argument("--model", help="vidiff image-to-video model folder (from `vidiff convert` or `vidiff train`; "
                                    "default: the embedded shapes-world model)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--last-image", help="second image: generate a transition from IMAGE to it")
    mode.add_argument("--loop", action="store_true", help="make a seamless loop that returns to IMAGE")
    mode.add_argument("--window", type=positive_int, metavar="N",
                      help="long videos: when --frames is larger, extend autoregressively in clips of N frames, each "
                           "animated from the last frame of the one before")
    add_sampling_args(p, "outputs/animation.mp4")
    p.add_argument("--image-guidance", type=non_negative_float,
                   help="image guidance scale: enables DynamiCrafter's multi-condition guidance (default: off)")
    p.add_argument("--fps", type=non_negative_int, help="fps conditioning (frame stride for DynamiCrafter-256); default: the model's")
    p.add_argument("--playback-fps", type=positive_float,
                   help="frame rate of the written video (default: --fps, or 8 where it is a frame stride)")
    cli_univid.add_stream_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    model = resolve_model(args.model, "i2v")
    index = check_model_folder(model)
    cli_univid.check_not_unified_args(args, index)
    for path in (args.image, args.last_image):
        _check_image_path(path)
    check_runtime_args(args)
    if cli_univid.is_unified(index):
        return cli_univid.run_unified(args, model, args.prompt or None, args.image, "animated")
    deep_cache = deep_cache_arg(args)
    if args.window is not None and args.window < 2:
        raise ValueError(f"--window needs at least 2 frames per clip, got {args.window}")
    from .pipelines.image_io import open_image
    from .pipelines.image_to_video import ImageToVideoPipeline

    # Read the images before the (slow) model load so that a bad file fails at once.
    image = open_image(args.image)
    last_image = open_image(args.last_image) if args.last_image else None

    start = time.time()
    pipe = ImageToVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype),
                                                device=args.device, lora=args.lora, vae=args.vae)
    fps = args.fps if args.fps is not None else pipe.defaults["fps"]
    out = pipe(
        image,
        args.prompt,
        negative_prompt=args.negative_prompt,
        last_image=last_image,
        loop=args.loop,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        image_guidance_scale=args.image_guidance,
        guidance_rescale=args.guidance_rescale,
        fps=fps,
        eta=args.eta,
        seed=args.seed,
        sampler=args.sampler,
        timestep_spacing=args.timestep_spacing,
        deep_cache=deep_cache,
        attention_broadcast=args.attention_broadcast,
        window=args.window,
        progress=True,
    )
    playback = args.playback_fps
    if playback is None:
        playback = FRAME_STRIDE_PLAYBACK_FPS if pipe.fps_is_frame_stride else fps
    write_outputs(out.frames, args, playback, start, "animated")
    if out.seam_psnr is not None:
        seams = ", ".join(f"{v:.1f}" for v in out.seam_psnr[0].tolist())
        print(f"seams: each clip's first frame against the frame it continues: {seams} dB")
    if args.prompt and not (last_image is not None or args.loop):
        import numpy as np

        condition = np.asarray(image.convert("RGB").resize(out.frames.shape[3:1:-1]))
        verdict = probe_verdict(out.frames[0], args.prompt, model, None if pipe.fps_is_frame_stride else fps,
                                condition_image=condition)
        if verdict:
            print(verdict)
    return 0


def _check_image_path(path: str | None) -> None:
    """A missing image or a folder in its place fails before torch is imported."""
    from pathlib import Path

    if path is None:
        return
    if not Path(path).exists():
        raise ValueError(f"image file not found: {path}")
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
