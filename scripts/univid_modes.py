"""UniVid at toy scale (design doc U1 and U2): one model's T2V, I2V and T+I modes, and a λ_v sweep on conflicting
text/image pairs, scored with the shapes-world probes.

    python scripts/univid_modes.py --model src/vidiff/assets/models/shapes_univid --samples 12

U1: each mode on fresh canonical clips ("a {colour} {shape} moving {direction}", a seed not trained on): the prompt is
the clip's caption, the image its first frame; colour/shape/motion probes read the generated clip against that
caption.
U2: the text names one colour, the image shows another (its shape may differ too; colour is scored); λ_v is swept
at λ_t = 1 and the share of clips whose colour is the text's or the image's is reported. Writes a JSON and a Markdown table; prints both paths.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig, parse_caption
from vidiff.eval.probes import probe_video
from vidiff.pipelines.unified import UnifiedVideoPipeline
from vidiff.utils.video import batch_to_uint8_frames


def clips(n: int, seed: int):
    world = ShapesWorldConfig(height=64, width=64, num_frames=16, second_object_prob=0.0, seed=seed, split="train",
                              phrasings=("canonical",))
    ds = ShapesVideoDataset(world, length=n, ground_truth=False)
    items = [ds[i] for i in range(n)]
    return world, torch.stack([it["video"] for it in items]), [it["caption"] for it in items]


def score(frames: np.ndarray, captions: list[str], world, images: np.ndarray | None) -> dict[str, float]:
    passed: dict[str, list[bool]] = {}
    detected = []
    for i, (video, caption) in enumerate(zip(frames, captions)):
        cond = None if images is None else images[i]
        result = probe_video(video, caption, world, condition_image=cond, stride=1)
        for name in ("colour", "shape", "motion", "identity", "first_frame"):
            if name in result.scores:
                passed.setdefault(name, []).append(bool(result.scores[name].passed))
        detected.append(result.scores["colour"].detected if "colour" in result.scores else None)
    out = {k: 100.0 * float(np.mean(v)) for k, v in passed.items()}
    out["_colours"] = detected
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="src/vidiff/assets/models/shapes_univid")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--sweep", default="0,0.5,1,1.5", help="λ_v values of the conflict sweep (λ_t = 1)")
    ap.add_argument("--out", default="outputs/univid_modes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    pipe = UnifiedVideoPipeline.from_pretrained(args.model)
    world, videos, captions = clips(args.samples, args.seed)
    first = videos[:, :, 0]
    first_u8 = batch_to_uint8_frames(videos)[:, 0]
    common = dict(num_inference_steps=args.steps, seed=0, progress=False, fps=4, num_frames=16)

    modes = {}
    for mode, (prompt, image) in {"t2v": (captions, None), "i2v": (None, first), "ti2v": (captions, first)}.items():
        frames = pipe(prompt if prompt is not None else None, image, **common).frames
        s = score(frames, captions, world, first_u8 if image is not None else None)
        s.pop("_colours")
        modes[mode] = s
        print(mode, {k: round(v, 1) for k, v in s.items()}, flush=True)

    # U2: swap the images so each caption's colour differs from its image's
    attrs = [parse_caption(c).primary for c in captions]
    order = [next((j for j in range(len(attrs)) if attrs[j].colour != a.colour), None) for a in attrs]
    rows = [i for i, j in enumerate(order) if j is not None]
    images = first[[order[i] for i in rows]]
    text_captions = [captions[i] for i in rows]
    image_colours = [attrs[order[i]].colour for i in rows]
    text_colours = [attrs[i].colour for i in rows]
    sweep = []
    for lam_v in [float(v) for v in args.sweep.split(",")]:
        kwargs = dict(common, image_scale=lam_v)
        frames = pipe(text_captions, images, **kwargs).frames if lam_v > 0 else pipe(text_captions, **common).frames
        s = score(frames, text_captions, world, None)
        seen = s.pop("_colours")
        row = {"image_scale": lam_v,
               "colour_is_text": 100.0 * np.mean([c == t for c, t in zip(seen, text_colours)]),
               "colour_is_image": 100.0 * np.mean([c == v for c, v in zip(seen, image_colours)]),
               "motion_is_text": s.get("motion", float("nan"))}
        sweep.append(row)
        print("sweep", {k: round(v, 1) for k, v in row.items()}, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "samples": args.samples, "seed": args.seed, "steps": args.steps, "modes": modes,
              "sweep": sweep, "seconds": round(time.time() - start, 1)}
    (out / "univid_modes.json").write_text(json.dumps(report, indent=2))
    lines = ["| mode | colour % | shape % | motion % | identity % |", "|---|---|---|---|---|"]
    for mode, s in modes.items():
        lines.append(f"| {mode} | {s.get('colour', float('nan')):.1f} | {s.get('shape', float('nan')):.1f} | "
                     f"{s.get('motion', float('nan')):.1f} | {s.get('identity', float('nan')):.1f} |")
    lines += ["", "| λ_v (λ_t = 1) | colour = text % | colour = image % | motion = text % |", "|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['image_scale']:g} | {r['colour_is_text']:.1f} | {r['colour_is_image']:.1f} | "
                     f"{r['motion_is_text']:.1f} |")
    (out / "univid_modes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {out / 'univid_modes.json'}\ntable: {out / 'univid_modes.md'}  ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
