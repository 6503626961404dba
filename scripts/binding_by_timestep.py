"""The binding probe of a finished text-to-image or text-to-video model folder, one timestep at a time.

`vidiff train` logs the binding gap averaged over a few timesteps; this shows where in the trajectory each word is
read (colour at high noise, shape in the middle, once the object's position is known). Clips are the shapes world's
single objects in canonical captions, drawn from the training split with a fixed seed.

    python scripts/binding_by_timestep.py src/vidiff/assets/models/shapes_t2i
    python scripts/binding_by_timestep.py outputs/shapes_t2v/model --timesteps 150 450 750 --samples 16
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a vidiff model folder trained on the shapes world (t2i or t2v)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 150, 300, 450, 600, 750, 900, 999])
    parser.add_argument("--samples", type=int, default=48, help="held-out clips (default 48)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vidiff.data.shapes import ShapesImageDataset, ShapesVideoDataset, ShapesWorldConfig, parse_caption
    from vidiff.models.autoencoder import encode_video
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.text_to_video import TextToVideoPipeline
    from vidiff.training.binding import BindingBatch, BindingProbe

    try:
        pipe = TextToVideoPipeline.from_pretrained(args.model)
    except (PipelineError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    d = pipe.defaults
    frames, fps = int(d["num_frames"]), int(d.get("fps", 1))
    image = frames == 1
    world = ShapesWorldConfig(height=int(d["height"]), width=int(d["width"]), num_frames=max(frames, 2),
                              second_object_prob=0.0, seed=args.seed, split="train",
                              image_phrasings=("image_canonical",), phrasings=("canonical",))
    if image:
        items = [ShapesImageDataset(world, length=args.samples, ground_truth=False)[i] for i in range(args.samples)]
        video = torch.stack([it["image"][:, None] for it in items])
    else:
        world = replace(world, num_frames=frames, strides=(max(1, int(round(world.base_fps / fps))),))
        items = [ShapesVideoDataset(world, length=args.samples, ground_truth=False)[i] for i in range(args.samples)]
        video = torch.stack([it["video"] for it in items])
    captions = [it["caption"] for it in items]
    with torch.no_grad():
        latents = encode_video(pipe.vae, video, sample=False).float()
    batch = BindingBatch(latents, captions, [parse_caption(c) for c in captions], torch.full((len(items),), fps))
    attributes = ["colour", "shape", "size", "background"] + ([] if image else ["motion"])

    def loss_fn(x0, noise, t, caps, fps_rows, images):
        xt = pipe.schedule.add_noise(x0, noise, t)
        pred = pipe.unet(xt, t, pipe.encode_prompt(caps), fps=fps_rows.long())
        return (pred.float() - pipe.schedule.training_target(x0, noise, t)).square().flatten(1).mean(1)

    print(f"{args.model}: {len(items)} held-out {'images' if image else 'clips'}; gap % (accuracy) per timestep")
    print(f"{'t':>5} " + " ".join(f"{a:>18}" for a in attributes))
    for t in args.timesteps:
        result = BindingProbe(batch, [t], attributes, seed=args.seed).run(loss_fn, step=0)
        cells = [f"{result.gap[a]:+9.1f}% ({result.accuracy[a]:.2f})" for a in attributes]
        print(f"{t:>5} " + " ".join(f"{c:>18}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
