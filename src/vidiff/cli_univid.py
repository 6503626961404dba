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
                                         ("--attention-broadcast", getattr(args, "attention_broadcast", False)))
                   if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} not supported with a UniVid model")
    from .pipelines.image_io import open_image
    from .pipelines.unified import UnifiedVideoPipeline, stream_weights

    text_scale = 1.0 if args.text_scale is None else args.text_scale
    image_scale = 1.0 if args.image_scale is None else args.image_scale
    stream_weights(prompt is not None, image_path is not None, text_scale, image_scale)  # fail before loading
    image = open_image(image_path) if image_path is not None else None
    start = time.time()
    pipe = UnifiedVideoPipeline.from_pretrained(model, torch_dtype=torch_dtype(args.dtype), device=args.device,
                                                lora=getattr(args, "lora", None), vae=getattr(args, "vae", None))
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


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """``vidiff eval`` options of UniVid folders (design doc U1/U2, :mod:`vidiff.eval.lambda_sweep`)."""
    u = p.add_argument_group("UniVid models (--model a UniVid folder; default: --mode t2v,i2v,ti2v)")
    u.add_argument("--mode", help="modes to score on fresh canonical clips, comma-separated: t2v, i2v, ti2v (of the "
                                  "--suite splits: seen and/or heldout object triples; default seen)")
    u.add_argument("--lambda-sweep", metavar="W,W,...",
                   help="sweep one stream weight over these values on conflicting text/image pairs (the other at 1) "
                        "and plot where colour and shape follow the text or the image")
    u.add_argument("--sweep-stream", choices=("image", "text"),
                   help="the stream --lambda-sweep weights: image (λ_v, default) or text (λ_t)")
    u.add_argument("--samples", type=int, help="clips per mode and per sweep weight (default 12)")


_UNIVID_EVAL = ("mode", "lambda_sweep", "sweep_stream", "samples")
# vidiff eval options a UniVid evaluation uses; any other one given is an error rather than silently ignored
_UNIVID_USES = {"model", "output", "overwrite", "quiet", "seed", "steps", "guidance", "frames", "fps", "dtype",
                "device", "threads", "suite", *_UNIVID_EVAL}


def univid_eval_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, n, None) is not None for n in _UNIVID_EVAL)


def _parse_eval_args(args: argparse.Namespace) -> tuple[list[str], list[float] | None, list[str]]:
    from .eval.lambda_sweep import MODES

    modes = [] if args.mode is None else [m.strip() for m in args.mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"--mode: unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    weights = None
    if args.lambda_sweep is not None:
        try:
            weights = [float(w) for w in args.lambda_sweep.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"--lambda-sweep takes comma-separated numbers, got {args.lambda_sweep!r}") from None
        if not weights or any(not (w >= 0 and w < float("inf")) for w in weights):
            raise ValueError(f"--lambda-sweep weights must be finite numbers >= 0, got {args.lambda_sweep!r}")
    elif args.sweep_stream is not None:
        raise ValueError("--sweep-stream chooses the stream of --lambda-sweep: give --lambda-sweep too")
    if not modes and weights is None:
        modes = list(MODES)
    from .eval.lambda_sweep import SPLIT_WORLDS

    splits = [s.strip() for s in (args.suite or "seen").split(",") if s.strip()]
    if not splits or any(s not in SPLIT_WORLDS for s in splits):
        raise ValueError(f"--suite: choose from {', '.join(SPLIT_WORLDS)} (comma-separated), got {args.suite!r}")
    if args.samples is not None and args.samples < 2:
        raise ValueError(f"--samples must be >= 2 (a sweep pairs clips), got {args.samples}")
    return modes, weights, splits


def run_eval(args: argparse.Namespace, index: dict) -> int:
    """``vidiff eval --model UNIVID``: its modes' probe scores and stream-weight sweeps, written to OUT_DIR."""
    from pathlib import Path

    if not is_unified(index):
        given = [f"--{n.replace('_', '-')}" for n in _UNIVID_EVAL if getattr(args, n, None) is not None]
        raise ValueError(f"{', '.join(given)} evaluate UniVid model folders; this one is a {index.get('_class_name')!r}")
    other = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
             if k not in _UNIVID_USES and k not in ("command", "func", "max_failures", "metrics_batch_size")
             and v not in (None, False)]
    if other:
        raise ValueError(f"{', '.join(sorted(other))} not supported when evaluating a UniVid model (it scores its "
                         "modes and stream weights on fresh canonical clips)")
    modes, weights, splits = _parse_eval_args(args)
    out = Path(args.output)
    if (out / "lambda_sweep.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out / 'lambda_sweep.json'} exists: pass --overwrite or another -o")
    import torch

    from .eval.lambda_sweep import MODE_NAMES, lambda_sweep, mode_scores, sweep_table, write_sweep
    from .pipelines.unified import UnifiedVideoPipeline

    start = time.time()
    pipe = UnifiedVideoPipeline.from_pretrained(args.model, torch_dtype=torch_dtype(args.dtype), device=args.device)
    frames = args.frames or int(pipe.defaults.get("num_frames", 16))
    size = int(pipe.defaults.get("height", 64))
    generate = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, num_frames=frames, height=size,
                    width=int(pipe.defaults.get("width", size)),
                    fps=args.fps if args.fps is not None else int(pipe.defaults.get("fps", 4)), seed=0,
                    progress=False)
    samples, seed = args.samples or 12, 4321 + int(args.seed or 0)
    scores = {}
    with torch.no_grad():
        for split in splits if modes else []:
            scores[split] = mode_scores(pipe, samples, seed, tuple(modes), split, **generate)
            for mode, s in scores[split].items():
                print(f"{split} {MODE_NAMES[mode]}: " + ", ".join(f"{k} {v:.1f} %" for k, v in s.items()), flush=True)
        sweeps = []
        if weights is not None:
            sweeps.append(lambda_sweep(pipe, weights, args.sweep_stream or "image", samples, seed, **generate))
            print(sweep_table(sweeps[-1]), end="")
    meta = {"model": str(args.model), "samples": samples, "seed": seed, "steps": args.steps, "num_frames": frames,
            "seconds": round(time.time() - start, 1)}
    for path in write_sweep(out, sweeps, scores, meta):
        print(f"wrote {path}")
    print(f"evaluated in {time.time() - start:.1f} s")
    return 0
