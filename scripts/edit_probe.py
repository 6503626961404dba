"""Measure video editing on the shapes world: does an edit change what the new prompt asks and keep the rest?

Ground-truth clips of SOURCE (rendered by the world, so the object really moves as captioned) are edited toward TARGET
with `VideoToVideoPipeline` at each strength, by SDEdit and by DDIM inversion; the probes read the result. Printed per
setting: the share of clips whose object has the target colour, shape and motion, and how far the object's centroid
is, on average over frames, from where the source clip had it (pixels; position and motion kept means small).

    python scripts/edit_probe.py --source "a red circle moving left" --target "a blue circle moving left"
    python scripts/edit_probe.py --clips 4 --strengths 0.6 --modes sdedit --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="text-to-video model folder (default: the embedded shapes-world model)")
    p.add_argument("--source", default="a red circle moving left", help="caption of the rendered source clips")
    p.add_argument("--target", default="a blue circle moving left", help="the edit prompt")
    p.add_argument("--clips", type=int, default=8, help="source clips (default 8)")
    p.add_argument("--stride", type=int, default=4, help="frame stride of the clips (default 4 = fps 4)")
    p.add_argument("--strengths", default="0.4,0.6,0.8", help="comma-separated (default 0.4,0.6,0.8)")
    p.add_argument("--modes", default="sdedit,ddim", help="sdedit and/or ddim (inversion); default both")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--sampler", default="ddim", help="sampler (default ddim)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.data.shapes import ShapesWorld, ShapesWorldConfig
    from vidiff.data.shapes_render import render
    from vidiff.eval.probes import analyse_video, probe_video
    from vidiff.pipelines.video_to_video import VideoToVideoPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.model) if args.model else EMBEDDED_MODELS / "shapes_t2v"
    pipe = VideoToVideoPipeline.from_pretrained(folder)
    h, w, t = pipe.defaults["height"], pipe.defaults["width"], pipe.defaults["num_frames"]
    config = ShapesWorldConfig(height=h, width=w, num_frames=t)
    world = ShapesWorld(config)
    sources = [render(world.spec_from_caption(args.source, stride=args.stride, seed=i)) for i in range(args.clips)]
    fps = int(round(config.base_fps / args.stride))

    def centroid_error(video: np.ndarray, truth: torch.Tensor) -> float:
        analysis = analyse_video(video, config, stride=args.stride)
        if not analysis.tracks:
            return float("nan")
        track = analysis.tracks[0]
        errs = [np.hypot(o.centroid[0] - float(truth[k, 0]), o.centroid[1] - float(truth[k, 1]))
                for k, o in enumerate(track.objects) if o is not None]
        return float(np.mean(errs)) if errs else float("nan")

    print(f"{args.source!r} -> {args.target!r}: {args.clips} rendered clips, {args.steps} {args.sampler} steps")
    print(f"{'mode':>7} {'strength':>8} {'colour':>7} {'shape':>6} {'motion':>7} {'centroid px':>11} {'s/clip':>7}")
    unedited = [((s.video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
                for s in sources]
    base = [probe_video(v, args.target, config, stride=args.stride) for v in unedited]
    rates = {k: 100 * sum(r.scores[k].passed for r in base) / len(base) for k in ("colour", "shape", "motion")}
    print(f"{'source':>7} {0.0:8.1f} {rates['colour']:6.1f}% {rates['shape']:5.1f}% {rates['motion']:6.1f}% "
          f"{np.nanmean([centroid_error(v, s.centroids) for v, s in zip(unedited, sources)]):11.2f} {'-':>7}")
    for mode in args.modes.split(","):
        for strength in (float(s) for s in args.strengths.split(",")):
            hits = {"colour": 0, "shape": 0, "motion": 0}
            dists, start = [], time.perf_counter()
            for i, (src, frames) in enumerate(zip(sources, unedited)):
                out = pipe(frames, args.target, strength=strength, inversion=None if mode == "sdedit" else "ddim",
                           source_prompt=args.source, num_inference_steps=args.steps, sampler=args.sampler, fps=fps,
                           seed=i, progress=False).frames[0].numpy()
                result = probe_video(out, args.target, config, stride=args.stride)
                for k in hits:
                    hits[k] += int(result.scores[k].passed)
                dists.append(centroid_error(out, src.centroids))
            n = len(sources)
            secs = (time.perf_counter() - start) / n
            print(f"{mode:>7} {strength:8.1f} {100 * hits['colour'] / n:6.1f}% {100 * hits['shape'] / n:5.1f}% "
                  f"{100 * hits['motion'] / n:6.1f}% {np.nanmean(dists):11.2f} {secs:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
