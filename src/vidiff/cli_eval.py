"""``vidiff eval``: shapes-world evaluation of a model folder (generate a prompt suite), of existing videos, or of an
autoencoder's round trip of the ground truth (the ceiling a latent model built on it can reach).

``add_parser(sub)`` registers the sub-command on the ``vidiff`` parser and ``run(args)`` executes it. The work is done by
:mod:`vidiff.eval.report` and :mod:`vidiff.eval.autoencoder_eval`; see ``docs/eval.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli_common import (
    DTYPES,
    SAMPLER_CHOICES,
    SPACING_CHOICES,
    add_lora_arg,
    add_runtime_args,
    apply_runtime_args,
    non_negative_float,
    seed_arg,
    unit_float,
)
from .cli_univid import add_eval_args as add_univid_eval_args
from .cli_univid import is_unified, univid_eval_requested
from .cli_univid import run_eval as run_univid_eval

DEFAULT_SUITE = "seen,heldout"
# Options that only make sense when vidiff generates the videos itself.
_GENERATION_ONLY = ("steps", "guidance", "guidance_rescale", "image_guidance", "eta", "sampler", "timestep_spacing",
                    "deep_cache", "deep_cache_depth", "attention_broadcast", "negative_prompt", "frames", "height",
                    "width", "fps", "lora", "suite", "per_triple", "max_triples", "per_prompt")
# Of those, the ones about sampling itself (the suite options also select what --autoencoder round-trips).
_SAMPLING_ONLY = tuple(n for n in _GENERATION_ONLY if n not in ("suite", "per_triple", "max_triples", "per_prompt"))
_SOURCES = ("model", "videos", "autoencoder")
_PATHS = {"model": "model folder", "videos": "videos folder", "autoencoder": "autoencoder folder",
          "prompts": "--prompts file", "world": "--world file", "i3d": "--i3d weights", "inception": "--inception weights",
          "clip": "--clip folder", "shapes_classifier": "--shapes-classifier folder"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="evaluate prompt adherence on the shapes world (probes, FVD-shapes, optional FVD/FID/CLIPSIM)",
        description="Generate a shapes-world prompt suite with --model (or read existing videos with --videos and a "
                    "--prompts manifest, or round-trip the suite's ground truth through an --autoencoder), probe "
                    "every clip against its prompt, compute metrics, and write OUT_DIR/report.json, accuracy.png and "
                    "failures.png.",
    )
    src = p.add_argument_group("what to evaluate (give exactly one of --model / --videos / --autoencoder)")
    src.add_argument("--model", help="vidiff model folder (text-to-video or image-to-video): generate and evaluate")
    src.add_argument("--videos", help="folder of existing videos to evaluate (needs --prompts MANIFEST)")
    src.add_argument("--autoencoder", help="autoencoder folder (or a model folder: its vae/): evaluate the suite's "
                                           "ground truth round-tripped through it, the ceiling of a latent model")
    src.add_argument("--prompts", help="prompt file: with --model a .txt (one per line), .json or .csv of prompts; with "
                                       "--videos a manifest naming each video (CSV 'file,prompt' or JSON)")
    s = p.add_argument_group("prompt suite")
    s.add_argument("--suite", help=f"canonical splits to generate, comma-separated: seen, heldout (default {DEFAULT_SUITE})")
    s.add_argument("--per-triple", type=int, help="videos per colour x shape x motion triple (default 1)")
    s.add_argument("--max-triples", type=int, help="evaluate a seeded subset of this many triples per split")
    s.add_argument("--per-prompt", type=int, help="videos per prompt of a --prompts file with --model (default 1)")
    s.add_argument("--seed", type=seed_arg, default=0, help="suite seed: per-video generation seeds and ground-truth "
                                                       "placements derive from it (default 0)")
    s.add_argument("--stride", type=int, help="frame stride of the clips (fps = base_fps / stride); default: the "
                                              "world's largest")
    s.add_argument("--world", help="JSON file of ShapesWorldConfig fields (default: the model / autoencoder folder's "
                                   "training world, else the defaults), resized to the clip size (--model, --videos)")
    g = p.add_argument_group("generation (--model only; unset: the model folder's defaults)")
    g.add_argument("--steps", type=int, help="sampling steps")
    g.add_argument("--guidance", type=non_negative_float, help="classifier-free guidance scale, >= 0")
    g.add_argument("--guidance-rescale", type=unit_float, help="guidance rescale in [0, 1]")
    g.add_argument("--image-guidance", type=non_negative_float,
                   help="image guidance scale, >= 0 (image-to-video DynamiCrafter models)")
    g.add_argument("--eta", type=unit_float, help="noise of the stochastic samplers in [0, 1]")
    g.add_argument("--sampler", choices=SAMPLER_CHOICES, help="sampler (default ddim)")
    g.add_argument("--timestep-spacing", choices=SPACING_CHOICES, help="uniform, uniform_trailing or karras")
    g.add_argument("--deep-cache", type=int, metavar="N", help="DeepCache interval (default off)")
    g.add_argument("--deep-cache-depth", type=int, metavar="D", help="DeepCache depth (default 1)")
    g.add_argument("--attention-broadcast", action="store_true", default=None,
                   help="pyramid attention broadcast (default off)")
    g.add_argument("--negative-prompt")
    add_lora_arg(g)
    g.add_argument("--frames", type=int, help="frames per clip")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--fps", type=int, help="fixed fps conditioning (default: from the stride, as in training)")
    g.add_argument("--batch-size", type=int,
                   help="prompts per sampling call (default 1: each video is reproducible with `vidiff generate`; "
                        "8 for a text-to-image model); with --autoencoder, clips per round-trip call (default 1)")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="U-Net/encoder compute dtype (default fp32)")
    add_runtime_args(g, device_help="device for generation and metric networks (default cpu)")
    m = p.add_argument_group("metrics (networks are read from local files, never downloaded)")
    m.add_argument("--fvd-shapes", action="store_true", help="FVD-shapes against ground-truth clips, with its floor")
    m.add_argument("--shapes-classifier", help="FVD-shapes classifier folder (default: the packaged one)")
    m.add_argument("--i3d", help="I3D weights file: adds FVD (with its real-vs-real floor)")
    m.add_argument("--inception", help="Inception weights file (pytorch-fid layout): adds per-frame FID and IS")
    m.add_argument("--clip", help="local Hugging Face CLIP folder: adds CLIPSIM and CLIP frame consistency")
    m.add_argument("--metrics-batch-size", type=int, default=16)
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", help="output folder (report.json, accuracy.png, failures.png, videos/)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing report in the output folder")
    o.add_argument("--no-videos", action="store_true", help="--model: do not save the generated videos")
    o.add_argument("--max-failures", type=int, default=12, help="rows of failures.png (default 12)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    add_univid_eval_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every argument error is reported before a model is loaded or a video is read."""
    given_sources = [f"--{name}" for name in _SOURCES if getattr(args, name) is not None]
    if not given_sources:
        raise ValueError("give --model FOLDER (generate the suite and evaluate it), --videos DIR --prompts MANIFEST "
                         "(evaluate existing videos) or --autoencoder FOLDER (evaluate its round trip of the ground "
                         "truth)")
    if len(given_sources) > 1:
        raise ValueError(f"give exactly one of --model, --videos, --autoencoder, not "
                         f"{'both' if len(given_sources) == 2 else 'all of'} {' and '.join(given_sources)}: --model "
                         "generates the videos, --videos reads existing ones, --autoencoder reconstructs the ground "
                         "truth")
    if args.output is None:
        raise ValueError("no output folder: pass -o OUT_DIR")
    if args.videos is not None:
        if args.prompts is None:
            raise ValueError("--videos needs --prompts MANIFEST: a CSV with header 'file,prompt' or a JSON list of "
                             "{\"file\": ..., \"prompt\": ...} naming each video in the folder")
        given = [f"--{name.replace('_', '-')}" for name in _GENERATION_ONLY if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --model (vidiff generating the videos)")
    if args.autoencoder is not None:
        if args.dtype is not None:
            raise ValueError("--dtype only applies to --model (the generation compute dtype)")
        if args.no_videos:
            raise ValueError("--no-videos only applies to --model (the generated clips it saves)")
        given = [f"--{name.replace('_', '-')}" for name in _SAMPLING_ONLY if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --model (sampling); --autoencoder round-trips the "
                             "ground truth at the world's clip size (set it with --world)")
    if (args.model is not None or args.autoencoder is not None) and args.prompts is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("suite", "per_triple", "max_triples") if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} select canonical prompts; with --prompts (your own) use --per-prompt")
    if args.videos is None and args.prompts is None and args.per_prompt is not None:
        raise ValueError("--per-prompt applies to a --prompts file; for the canonical suite use --per-triple")
    for name in ("per_triple", "max_triples", "per_prompt", "batch_size", "metrics_batch_size", "stride", "steps",
                 "frames", "height", "width"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_failures < 0:
        raise ValueError(f"--max-failures must be >= 0, got {args.max_failures}")
    for name, what in _PATHS.items():  # last: the messages above say more than "not found" would
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{what} not found: {value}")


def run(args: argparse.Namespace) -> int:
    if univid_eval_requested(args) and args.model is None:
        raise ValueError("--mode, --lambda-sweep, --sweep-stream and --samples evaluate a UniVid model: give --model")
    _check_args(args)
    apply_runtime_args(args)
    if args.model is not None:
        from .model_folder import read_index

        index = read_index(args.model, ValueError) if (Path(args.model) / "model_index.json").is_file() else {}
        if is_unified(index) or univid_eval_requested(args):
            return run_univid_eval(args, index)
    from .eval.image_eval import evaluate_image_model, format_image_report, is_image_model
    from .eval.report import (
        GenerationSettings,
        MetricSettings,
        evaluate_model,
        evaluate_video_folder,
        print_table,
        read_world_file,
    )
    from .eval.suite import canonical_suite, suite_from_file

    if args.model is not None and is_image_model(args.model):
        if args.prompts is not None or args.suite is not None:
            raise ValueError("a text-to-image model is evaluated on the canonical image prompts (every colour x "
                             "shape); --prompts and --suite apply to video models")
        start = time.time()
        result = evaluate_image_model(args.model, args.output, per_prompt=args.per_triple or 1, seed=args.seed,
                                      steps=args.steps, guidance=args.guidance, batch_size=args.batch_size or 8,
                                      device=args.device, overwrite=args.overwrite, progress=not args.quiet,
                                      lora=args.lora)
        print(format_image_report(result["report"]))
        print(f"evaluated {result['report']['num_images']} images in {time.time() - start:.1f} s")
        for name, path in result["paths"].items():
            print(f"wrote {name}: {path}")
        return 0
    batch_size = args.batch_size or 1
    world = read_world_file(args.world) if args.world else None
    metrics = MetricSettings(
        fvd_shapes=args.fvd_shapes or args.shapes_classifier is not None,
        shapes_classifier=args.shapes_classifier,
        i3d=args.i3d,
        inception=args.inception,
        clip=args.clip,
        device=args.device,
        batch_size=args.metrics_batch_size,
    )
    start = time.time()
    if args.videos is not None:
        result = evaluate_video_folder(
            args.videos, args.prompts, args.output, stride=args.stride, seed=args.seed, world=world, metrics=metrics,
            max_failures=args.max_failures, overwrite=args.overwrite,
        )
    else:
        if args.prompts is not None:
            suite = suite_from_file(args.prompts, seed=args.seed, per_prompt=args.per_prompt or 1)
        else:
            suite = canonical_suite(args.suite or DEFAULT_SUITE, per_triple=args.per_triple or 1, seed=args.seed,
                                    max_triples=args.max_triples)
    if args.autoencoder is not None:
        from .eval.autoencoder_eval import evaluate_autoencoder

        result = evaluate_autoencoder(
            args.autoencoder, suite, args.output, stride=args.stride, metrics=metrics, world=world,
            batch_size=batch_size, device=args.device, max_failures=args.max_failures, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    elif args.model is not None:
        generation = GenerationSettings(
            steps=args.steps, guidance=args.guidance, guidance_rescale=args.guidance_rescale,
            image_guidance=args.image_guidance, eta=args.eta, sampler=args.sampler or "ddim",
            timestep_spacing=args.timestep_spacing, deep_cache=args.deep_cache,
            deep_cache_depth=args.deep_cache_depth or 1, attention_broadcast=bool(args.attention_broadcast),
            negative_prompt=args.negative_prompt,
            frames=args.frames, height=args.height, width=args.width, fps=args.fps, batch_size=batch_size,
            dtype=args.dtype or "fp32", device=args.device, lora=tuple(args.lora or ()),
        )
        result = evaluate_model(
            args.model, suite, args.output, stride=args.stride, generation=generation, metrics=metrics, world=world,
            save_videos=not args.no_videos, max_failures=args.max_failures, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    print_table(result.report)
    n = sum(s["num_videos"] for s in result.report["splits"].values())
    print(f"evaluated {n} videos in {time.time() - start:.1f} s")
    for name, path in result.paths.items():
        print(f"wrote {name}: {path}")
    return 0
