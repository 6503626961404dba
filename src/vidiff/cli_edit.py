"""``vidiff edit``: edit a video toward a new prompt with a text-to-video model (SDEdit, or DDIM inversion + prompt).

``add_parser(sub)`` registers the sub-command on the ``vidiff`` parser and ``run(args)`` executes it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli_common import (
    add_sampling_args,
    check_model_folder,
    check_runtime_args,
    non_negative_int,
    positive_int,
    probe_verdict,
    resolve_model,
    torch_dtype,
    unit_float,
    write_outputs,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "edit",
        help="edit a video toward a new prompt (SDEdit, or DDIM inversion + new prompt)",
        description="Noise VIDEO's latent to --strength (or invert it with --inversion ddim) and denoise it under "
                    "PROMPT with a text-to-video model: what the prompt does not change is kept.",
    )
    p.add_argument("video", help="input video (mp4, webm, gif, ...)")
    p.add_argument("prompt", help="the new prompt")
    p.add_argument("--model", help="text-to-video model folder (default: the embedded shapes-world model)")
    p.add_argument("--strength", type=unit_float, default=0.6,
                   help="share of the sampling steps rerun under the new prompt, in (0, 1] (default 0.6)")
    p.add_argument("--inversion", choices=("ddim",), help="reach the noisy latent by DDIM inversion instead of noise")
    p.add_argument("--source-prompt", default="", help="with --inversion: the prompt the video was made with")
    p.add_argument("--inversion-iterations", type=non_negative_int, default=0,
                   help="with --inversion: fixed-point refinements per step (exacter reconstruction; default 0)")
    add_sampling_args(p, "outputs/edited.mp4")
    p.add_argument("--fps", type=positive_int, help="fps conditioning and playback rate (default: the model's)")
    return p


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise ValueError("the prompt is empty")
    if not Path(args.video).is_file():
        raise ValueError(f"video not found: {args.video}")
    if args.strength == 0:
        raise ValueError("--strength must be above 0 (0 would return the input unchanged)")
    if args.inversion is None and (args.source_prompt or args.inversion_iterations):
        raise ValueError("--source-prompt and --inversion-iterations need --inversion ddim")
    if args.frames is not None:
        raise ValueError("--frames does not apply to edit: the input video sets the frame count")
    for flag in ("deep_cache", "deep_cache_depth"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to edit")
    if args.attention_broadcast:
        raise ValueError("--attention-broadcast does not apply to edit")
    model = resolve_model(args.model, "t2v")
    check_model_folder(model)
    check_runtime_args(args)
    from .pipelines.video_to_video import VideoToVideoPipeline

    start = time.time()
    pipe = VideoToVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype), device=args.device,
                                                lora=args.lora, vae=args.vae)
    fps = args.fps if args.fps is not None else pipe.defaults.get("fps", 1)
    out = pipe(
        args.video,
        args.prompt,
        strength=args.strength,
        inversion=args.inversion,
        inversion_iterations=args.inversion_iterations,
        source_prompt=args.source_prompt,
        negative_prompt=args.negative_prompt,
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
    )
    write_outputs(out.frames, args, fps, start, "edited")
    verdict = probe_verdict(out.frames[0], args.prompt, model, fps)
    if verdict:
        print(verdict)
    return 0
