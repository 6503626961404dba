"""``vidiff animate``: turn an image (plus an optional prompt) into a video with an image-to-video model folder.

``add_parser(sub)`` registers the sub-command on the ``vidiff`` parser and ``run(args)`` executes it; ``main`` runs it
stand-alone (``python -m vidiff.cli_animate animate IMAGE ...``) with the same error handling as ``vidiff``.
"""

from __future__ import annotations

import argparse
import time

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
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
    p.add_argument("--model", help="vidiff image-to-video model folder (from `vidiff convert`)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--last-image", help="second image: generate a transition from IMAGE to it")
    mode.add_argument("--loop", action="store_true", help="make a seamless loop that returns to IMAGE")
    p.add_argument("-o", "--output", default="outputs/animation.mp4", help="output .mp4 (default outputs/animation.mp4)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="text classifier-free guidance scale (default: the model's)")
    p.add_argument("--image-guidance", type=float,
                   help="image guidance scale: enables DynamiCrafter's multi-condition guidance (default: off)")
    p.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default: the model's, 1.0 for the official scripts)")
    p.add_argument("--frames", type=int, help="number of frames (a --loop video has one fewer)")
    p.add_argument("--fps", type=int, help="fps conditioning (frame stride for DynamiCrafter-256); default: the model's")
    p.add_argument("--playback-fps", type=float,
                   help="frame rate of the written video (default: --fps, or 8 where it is a frame stride)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="U-Net/encoder compute dtype")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--gif", action="store_true", help="also write <stem>.gif")
    p.add_argument("--sheet", action="store_true", help="also write a PNG contact sheet <stem>_sheet.png")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from .pipelines.image_io import open_image
    from .pipelines.image_to_video import ImageToVideoPipeline
    from .utils.video import save_video_outputs

    if args.model is None:
        raise ValueError(
            "no --model given: pass an image-to-video model folder made by `vidiff convert` "
            "(from a DynamiCrafter or VideoCrafter1 i2v checkpoint)"
        )
    if not args.output.endswith(".mp4"):
        raise ValueError(f"--output must end in .mp4, got {args.output}")
    if args.dtype == "fp16" and not str(args.device).startswith("cuda"):
        raise ValueError("--dtype fp16 needs a GPU (--device cuda); use bf16 or fp32 on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Read the images before the (slow) model load so that a bad path fails at once.
    image = open_image(args.image)
    last_image = open_image(args.last_image) if args.last_image else None

    start = time.time()
    pipe = ImageToVideoPipeline.from_pretrained(args.model, torch_dtype=getattr(torch, DTYPES[args.dtype]),
                                                device=args.device)
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
        progress=True,
    )
    playback = args.playback_fps
    if playback is None:
        playback = FRAME_STRIDE_PLAYBACK_FPS if pipe.fps_is_frame_stride else fps
    paths = save_video_outputs(out.frames[0], args.output, fps=playback, gif=args.gif, contact_sheet=args.sheet)
    print(f"animated {tuple(out.frames.shape[1:4])} (frames, height, width) in {time.time() - start:.1f} s")
    for path in paths:
        print(f"wrote {path}")
    return 0
