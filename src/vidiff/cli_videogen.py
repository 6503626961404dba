"""``vidiff generate`` with a VideoGen reference-guided model folder: the reference image is ``--reference IMG`` or
drawn by the folder's text-to-image model from the prompt (and written beside the video)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli_common import probe_verdict, torch_dtype, write_outputs

REFERENCE_CLASS = "ReferenceVideoPipeline"
CASCADE_CLASS = "CascadedVideoPipeline"


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", metavar="IMG",
                   help="VideoGen reference-guided models: the reference image (default: drawn by the model's "
                        "text-to-image reference model from the prompt)")
    p.add_argument("--stages", type=int, metavar="N",
                   help="VideoGen cascades: run the first N stages (default all; 1 = the base stage alone)")
    p.add_argument("--temporal-factor", type=int, metavar="F",
                   help="VideoGen cascades with a temporal super-resolution model: ×F frames (2, 4, 8)")
    p.add_argument("--decoder", choices=("video", "image"),
                   help="VideoGen cascades: decode with the cascade's video decoder (default when it has one) or the "
                        "image autoencoder")


def is_reference(index: dict) -> bool:
    return index.get("_class_name") in (REFERENCE_CLASS, CASCADE_CLASS)


def check_not_reference_args(args: argparse.Namespace, index: dict) -> None:
    """--reference and --stages belong to VideoGen models: elsewhere they are an error, not ignored."""
    if getattr(args, "reference", None) is not None and not is_reference(index):
        raise ValueError(f"--reference only works with a VideoGen reference-guided model folder ({REFERENCE_CLASS} or "
                         f"{CASCADE_CLASS}); this one is a {index.get('_class_name')!r}")
    for flag, value in (("--stages", getattr(args, "stages", None)),
                        ("--temporal-factor", getattr(args, "temporal_factor", None)),
                        ("--decoder", getattr(args, "decoder", None))):
        if value is not None and index.get("_class_name") != CASCADE_CLASS:
            raise ValueError(f"{flag} only works with a VideoGen cascade folder ({CASCADE_CLASS}); this one is a "
                             f"{index.get('_class_name')!r}")


def run_reference(args: argparse.Namespace, model: str, index: dict) -> int:
    """Generate with :class:`~vidiff.pipelines.reference.ReferenceVideoPipeline` (or a cascade of them) and write the
    outputs."""
    unsupported = [f for f, on in (("--window", args.window is not None), ("--image", args.image_prompt is not None),
                                   ("--text-scale", args.text_scale is not None),
                                   ("--image-scale", args.image_scale is not None)) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} not supported with a reference-guided model")
    from .pipelines.image_io import open_image
    from .pipelines.reference import ReferenceVideoPipeline

    image = open_image(args.reference) if args.reference is not None else None  # a bad file fails before the load
    start = time.time()
    common = dict(negative_prompt=args.negative_prompt, num_frames=args.frames, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale, eta=args.eta, seed=args.seed,
                  sampler=args.sampler, timestep_spacing=args.timestep_spacing)
    if index.get("_class_name") == CASCADE_CLASS:
        cascade_only = [f for f, on in (("--lora", bool(args.lora)), ("--vae", args.vae is not None),
                                        ("--height", args.height is not None), ("--width", args.width is not None))
                        if on]
        if cascade_only:
            raise ValueError(f"{', '.join(cascade_only)} not supported with a cascade (each stage has its own size)")
        from .pipelines.cascade import CascadedVideoPipeline

        pipe = CascadedVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype), device=args.device)
        if args.stages is not None and not 1 <= args.stages <= len(pipe.stages):
            raise ValueError(f"--stages must be in [1, {len(pipe.stages)}] for this cascade, got {args.stages}")
        last = pipe.stages[(args.stages or len(pipe.stages)) - 1]
        fps = args.fps if args.fps is not None else last.defaults.get("fps", 4)
        factor = args.temporal_factor or 1
        if factor != 1 and (factor < 2 or factor & (factor - 1)):
            raise ValueError(f"--temporal-factor must be a power of two (2, 4, 8), got {factor}")
        out = pipe(args.prompt, image, stages=args.stages, fps=fps, temporal_factor=factor, decoder=args.decoder,
                   **common)
        fps *= factor
    else:
        pipe = ReferenceVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype), device=args.device,
                                                      lora=args.lora, vae=args.vae)
        fps = args.fps if args.fps is not None else pipe.defaults.get("fps", 4)
        out = pipe(args.prompt, image, height=args.height, width=args.width, fps=fps, return_reference=True, **common)
    write_outputs(out.frames, args, fps, start, "generated")
    if image is None:
        from .utils.video import batch_to_uint8_frames, write_png

        path = Path(args.output).with_name(Path(args.output).stem + "_reference.png")
        write_png(batch_to_uint8_frames(out.reference[:, :, None])[0], str(path))
        print(f"reference drawn by the reference model: {path}")
    verdict = probe_verdict(out.frames[0], args.prompt, model, fps)
    if verdict:
        print(verdict)
    return 0


def add_interpolate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .cli_common import add_runtime_args

    p = sub.add_parser(
        "interpolate",
        help="raise a video's frame rate ×2/×4/×8 in latent space (VideoGen's temporal super-resolution)",
        description="Insert frames between every pair of VIDEO's frames with a temporal super-resolution model folder "
                    "(vidiff train task latent_flow): keyframes are kept, each inserted frame is the keyframes' "
                    "latents warped along the flow network's bilateral flows and blended; --guidance lerp / slerp "
                    "are the interpolation baselines.",
    )
    p.add_argument("video", help="input video (mp4, ...)")
    p.add_argument("--model", help="temporal super-resolution model folder (default: the embedded shapes-world one, "
                                   "src/vidiff/assets/models/shapes_temporal_sr)")
    p.add_argument("--factor", type=int, default=2, help="frame-rate factor, a power of two (default 2)")
    p.add_argument("--guidance", choices=("flow", "lerp", "slerp"), default="flow",
                   help="how inserted frames are made (default flow)")
    p.add_argument("--refiner", metavar="FOLDER",
                   help="a temporal refiner model folder (vidiff train task temporal_refiner): each pass is refined "
                        "and fused with the warps (default: the model folder's refiner, if it names one)")
    p.add_argument("--refine-steps", type=int, help="sampling steps of the refiner (default: its own)")
    p.add_argument("--fusion", type=int, default=2,
                   help="block size N of the low/high-frequency fusion of warp and refiner (default 2; 1: the warp)")
    p.add_argument("--no-refine", action="store_true", help="skip the refiner even if the model folder names one")
    p.add_argument("-o", "--output", default="outputs/interpolated.mp4", help="output .mp4 path")
    p.add_argument("--gif", action="store_true", help="also write <stem>.gif")
    p.add_argument("--sheet", action="store_true", help="also write a PNG contact sheet <stem>_sheet.png")
    add_runtime_args(p)
    return p


def run_interpolate(args: argparse.Namespace) -> int:
    from .cli_common import check_model_folder, check_output_path

    if args.factor < 2 or args.factor & (args.factor - 1):
        raise ValueError(f"--factor must be a power of two >= 2 (2, 4, 8), got {args.factor}")
    if args.fusion < 1:
        raise ValueError(f"--fusion must be >= 1, got {args.fusion}")
    if args.refine_steps is not None and args.refine_steps < 1:
        raise ValueError(f"--refine-steps must be >= 1, got {args.refine_steps}")
    if args.refiner is not None:
        refiner_index = check_model_folder(args.refiner)
        if refiner_index.get("_class_name") != "TemporalRefinerPipeline":
            raise ValueError(f"--refiner {args.refiner} holds a {refiner_index.get('_class_name')!r} model, not a "
                             "temporal refiner (vidiff train task temporal_refiner)")
    check_output_path(args.output, (".mp4",))
    if args.model is None:
        from .cli_common import EMBEDDED_MODELS

        args.model = str(EMBEDDED_MODELS / "shapes_temporal_sr")
    index = check_model_folder(args.model)
    if index.get("_class_name") != "TemporalSuperResolutionPipeline":
        raise ValueError(f"{args.model} holds a {index.get('_class_name')!r} model, not a temporal super-resolution "
                         "model (vidiff train task latent_flow)")
    from .cli_common import apply_runtime_args
    from .utils.video import read_video

    frames, fps = read_video(args.video)  # a missing or unreadable video fails before the model loads
    if len(frames) < 2:
        raise ValueError(f"{args.video} has {len(frames)} frame(s); interpolation needs at least 2")
    apply_runtime_args(args)
    from .pipelines.temporal_sr import TemporalSuperResolutionPipeline

    start = time.time()
    pipe = TemporalSuperResolutionPipeline.from_pretrained(args.model, device=args.device, refiner=args.refiner)
    out = pipe(frames, factor=args.factor, guidance=args.guidance, refine=not args.no_refine, fusion=args.fusion,
               refine_steps=args.refine_steps, fps=int(round(fps)))
    write_outputs(out.frames, args, fps * args.factor, start, f"interpolated ×{args.factor} ({args.guidance})")
    print(f"{len(frames)} frames at {fps:g} fps -> {out.frames.shape[1]} frames at {fps * args.factor:g} fps")
    return 0
