"""Does a LoRA teach a shapes-world model a new colour, and does it keep the old ones? Before/after numbers.

For the new colour's prompts ("a large pink circle", every shape x size; for a video model "a pink circle moving
left", every shape x motion) and for control prompts (every palette colour x shape), it generates images or videos with
the base model and again with the LoRA(s) loaded, measures each object's colour
(:func:`vidiff.data.shapes_palette.object_colour`: the median of the pixels far from the border-median background, per
frame, then the median over frames) and names it by the nearest colour of the palette plus the new one. It prints, for both, the share of new-colour prompts
whose object comes out in the new colour and the share of control prompts whose object keeps its colour; ``--json``
writes them. Same seeds with and without the LoRA, so the difference is the LoRA's.

    python scripts/lora_colour_probe.py --lora outputs/shapes_t2i_lora_pink/lora.safetensors --colour pink=1.0,0.5,0.75
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vidiff.cli_common import lora_arg, positive_int, resolve_model


def _colour(text: str) -> tuple[str, tuple[float, float, float]]:
    name, sep, rgb = text.partition("=")
    try:
        values = tuple(float(v) for v in rgb.split(","))
    except ValueError:
        values = ()
    if not sep or not name or len(values) != 3:
        raise argparse.ArgumentTypeError(f"must be NAME=R,G,B with R, G, B in [0, 1], got {text!r}")
    return name, values  # type: ignore[return-value]


def prompts(colour: str, per_prompt: int, video: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(new-colour prompts, control prompts) as (prompt, expected colour), each repeated ``per_prompt`` times."""
    from vidiff.data.shapes_vocab import COLOURS, MOTIONS, SHAPES

    def moving(i: int) -> str:
        motion = MOTIONS[i % len(MOTIONS)]
        return " standing still" if motion == "still" else f" moving {motion}"

    if video:
        new = [(f"a {colour} {shape}{moving(i)}", colour) for shape in SHAPES for i in range(len(MOTIONS))]
        control = [(f"a {c} {shape}{moving(i + j)}", c) for i, c in enumerate(COLOURS) for j, shape in enumerate(SHAPES)]
    else:
        new = [(f"a {size}{colour} {shape}", colour) for shape in SHAPES for size in ("small ", "", "large ")]
        control = [(f"a {c} {shape}", c) for c in COLOURS for shape in SHAPES]
    return new * per_prompt, control * per_prompt


def measure(pipe, items: list[tuple[str, str]], extra: dict, seed: int, steps: int | None, guidance: float | None,
            batch: int) -> dict:
    """Generate every prompt (seed + position) and count the objects named by their expected colour."""
    import numpy as np

    from vidiff.data.shapes_palette import nearest_colour_name, object_colour

    hits, named = 0, {}
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        out = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance, seed=seed + i,
                   output_type="np", progress=False)
        for (_, expected), frames in zip(chunk, out.frames):
            colours = [c for c in (object_colour(f.numpy()) for f in frames) if c is not None]
            name = "none" if not colours else nearest_colour_name(np.median(np.stack(colours), axis=0), extra)
            named[name] = named.get(name, 0) + 1
            hits += int(name == expected)
    return {"fraction": hits / len(items), "n": len(items), "named": dict(sorted(named.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="text-to-image or text-to-video model folder (default: the embedded shapes_t2i)")
    p.add_argument("--lora", type=lora_arg, action="append", required=True, metavar="PATH[:SCALE]")
    p.add_argument("--colour", type=_colour, required=True, metavar="NAME=R,G,B", help="the colour the LoRA teaches")
    p.add_argument("--per-prompt", type=positive_int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per sampling call (default 16)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    import torch

    from vidiff.data.shapes_palette import check_extra_colours
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    torch.set_num_threads(args.threads)
    name, rgb = args.colour
    extra = check_extra_colours({name: list(rgb)})
    model = resolve_model(args.model, "t2i")
    pipe = TextToVideoPipeline.from_pretrained(model)
    new, control = prompts(name, args.per_prompt, video=int(pipe.defaults.get("num_frames", 1)) > 1)
    result = {"model": model, "lora": [{"path": str(q), "scale": s} for q, s in args.lora], "colour": {name: rgb},
              "per_prompt": args.per_prompt, "seed": args.seed}
    for label in ("base", "lora"):
        if label == "lora":
            pipe.load_loras(args.lora)
        start = time.time()
        with torch.no_grad():
            result[label] = {"new_colour": measure(pipe, new, extra, args.seed, args.steps, args.guidance,
                                                   args.batch_size),
                             "control": measure(pipe, control, extra, args.seed + 100_000, args.steps,
                                                args.guidance, args.batch_size),
                             "seconds": round(time.time() - start, 1)}
    print(f"{'':10}{name + ' prompts come out ' + name:>31}{'palette prompts keep colour':>30}")
    for label in ("base", "lora"):
        r = result[label]
        print(f"{label:10}{100 * r['new_colour']['fraction']:>30.1f}%{100 * r['control']['fraction']:>29.1f}%"
              f"   ({r['new_colour']['n']} + {r['control']['n']} images, {r['seconds']:.0f} s)")
        print(f"{'':10}{name} prompts were named: {r['new_colour']['named']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
