"""``vidiff generate`` / ``vidiff animate`` with a UniVid model folder: one model, its mode chosen by what is given
(a prompt, an image, or both) and weighted by ``--text-scale`` (λ_t) and ``--image-scale`` (λ_v)."""

from __future__ import annotations

import argparse
import time

from .cli_common import non_negative_float, probe_verdict, torch_dtype, write_outputs

UNIFIED_CLASS = "UnifiedVideoPipeline"


def add_stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-scale", type=non_negative_float,
                   help="UniVid models: weight λ_t of the text stream (default 1; 0 turns the prompt off)")
    p.add_argument("--image-scale", type=non_negative_float,
                   help="UniVid models: weight λ_v of the image stream (default 1; 0 turns the image off)")


def is_unified(index: dict) -> bool:
    return index.get("_class_name") == UNIFIED_CLASS


def check_not_unified_args(args: argparse.Namespace, index: dict) -> None:
    """Stream weights (and generate's --image) belong to UniVid models: elsewhere they are an error, not ignored."""
    if is_unified(index):
        return
    given = [f for f, v in (("--text-scale", args.text_scale), ("--image-scale", args.image_scale),
                            ("--image", getattr(args, "image_prompt", None))) if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only work with a UniVid model folder (UnifiedVideoPipeline); this one is a "
                         f"{index.get('_class_name')!r}")


def run_unified(args: argparse.Namespace, model: str, prompt: str | None, image_path: str | None, verb: str) -> int:
    """Generate with :class:`~vidiff.pipelines.unified.UnifiedVideoPipeline` and write the outputs."""
    unsupported = [flag for flag, on in (("--window", getattr(args, "window", None) is not None),
                                         ("--last-image", getattr(args, "last_image", None) is not None),
                                         ("--loop", getattr(args, "loop", False)),
                                         ("--deep-cache", getattr(args, "deep_cache", None) is not None),
                                         ("--attention-broadcast", getattr(args, "attention_broadcast", False)),
                                         ("--lora", bool(getattr(args, "lora", None)))) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} not supported with a UniVid model")
    from .pipelines.image_io import open_image
    from .pipelines.unified import UnifiedVideoPipeline, stream_weights

    text_scale = 1.0 if args.text_scale is None else args.text_scale
    image_scale = 1.0 if args.image_scale is None else args.image_scale
    stream_weights(prompt is not None, image_path is not None, text_scale, image_scale)  # fail before loading
    image = open_image(image_path) if image_path is not None else None
    start = time.time()
    pipe = UnifiedVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype), device=args.device)
    fps = args.fps if args.fps is not None else pipe.defaults.get("fps", 4)
    out = pipe(prompt, image, text_scale=text_scale, image_scale=image_scale, guidance_scale=args.guidance,
               image_guidance_scale=getattr(args, "image_guidance", None), negative_prompt=args.negative_prompt,
               num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps,
               guidance_rescale=args.guidance_rescale, fps=fps, eta=args.eta, seed=args.seed, sampler=args.sampler,
               timestep_spacing=args.timestep_spacing)
    write_outputs(out.frames, args, fps, start, verb)
    mode = {(True, False): "text-to-video", (False, True): "image-to-video", (True, True): "text+image-to-video"}
    print(f"mode: {mode[(prompt is not None and text_scale > 0, image is not None and image_scale > 0)]} "
          f"(λ_t = {text_scale if prompt is not None else 0.0:g}, λ_v = {image_scale if image is not None else 0.0:g})")
    if prompt:
        import numpy as np

        condition = None
        if image is not None:
            condition = np.asarray(image.convert("RGB").resize(out.frames.shape[3:1:-1]))
        verdict = probe_verdict(out.frames[0], prompt, model, fps, condition_image=condition)
        if verdict:
            print(verdict)
    return 0
