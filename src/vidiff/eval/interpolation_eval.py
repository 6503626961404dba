"""Latent frame interpolation measured on the shapes world (design doc V4).

Dense one-object clips are rendered; their even frames are the keyframes, the odd frames the truth to recover. Each
variant inserts one frame between every keyframe pair in latent space (:class:`TemporalSuperResolutionPipeline`
machinery), the result is decoded, and every inserted frame is scored against the true frame:

* ``psnr`` (dB, pixels in [-1, 1]);
* ``centroid_error`` (px): the object's centroid (pixels that differ from the background) against the true one;
* ``ghost_rate``: share of inserted frames whose object is not one blob (of at least a tenth of its area), or whose
  area is off by more than 30 %.

The ``autoencoder`` row decodes the true frames' latents: the ceiling of any latent-space method.

Variants: ``nearest`` (the left keyframe), ``lerp``, ``slerp``, ``flow`` (the model's flow network), ``oracle`` (the
world's analytic bilateral flows: the ceiling of the warp), and ``flow+refiner`` when a refiner is given.

    python -m vidiff.eval.interpolation_eval --model outputs/videogen_shapes_flow/model -o outputs/interpolation_eval
    python -m vidiff.eval.interpolation_eval --vae src/vidiff/assets/models/shapes_t2v/vae     # baselines + oracle
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

VARIANTS = ("nearest", "lerp", "slerp", "flow", "oracle")


def dense_clips(n: int, seed: int, frames: int = 9, size: int = 64):
    """``n`` one-object moving clips with their truth: videos (n, 3, T, H, W), masks (n, T, H, W), flow, centroids."""
    from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig

    world = ShapesWorldConfig(height=size, width=size, num_frames=frames, second_object_prob=0.0, seed=seed,
                              strides=(1,))
    ds = ShapesVideoDataset(world, length=8 * n)
    items = []
    for i in range(8 * n):
        item = ds[i]
        if item["labels"]["motion"] != "still":
            items.append(item)
        if len(items) == n:
            break
    return {k: torch.stack([it[k] for it in items]) for k in ("video", "masks", "flow", "centroids")}


def _blobs(mask: np.ndarray, min_size: int = 1) -> int:
    """Connected components (4-neighbourhood) of at least ``min_size`` pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        size = 0
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        count += size >= min_size
    return count


def _object(frame: torch.Tensor, background: torch.Tensor) -> np.ndarray:
    return ((frame - background[:, None, None]).abs().amax(0) > 0.3).numpy()


def score_inserted(decoded: torch.Tensor, truth: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scores of the odd frames of ``decoded`` (n, 3, T, H, W) against the true clips."""
    video = truth["video"]
    psnr, errors, ghosts = [], [], []
    for i in range(video.shape[0]):
        background = video[i, :, 0, 0, 0]
        for j in range(1, video.shape[2], 2):
            x, y = decoded[i, :, j].clamp(-1, 1), video[i, :, j]
            psnr.append(float(10 * torch.log10(4.0 / (x - y).square().mean().clamp_min(1e-12))))
            obj, true_obj = _object(x, background), _object(y, background)
            area, true_area = obj.sum(), max(true_obj.sum(), 1)
            # specks of decoder noise are not objects: a blob counts from a tenth of the object's area
            ghosts.append(_blobs(obj, max(4, true_area // 10)) != 1 or abs(area - true_area) > 0.3 * true_area)
            if area:
                ys, xs = np.nonzero(obj)
                cx, cy = truth["centroids"][i, j].tolist()
                errors.append(float(np.hypot(xs.mean() - cx, ys.mean() - cy)))
    return {"psnr": float(np.mean(psnr)), "centroid_error": float(np.mean(errors)) if errors else float("nan"),
            "ghost_rate": 100.0 * float(np.mean(ghosts))}


@torch.no_grad()
def compare_interpolations(pipe, truth: dict[str, torch.Tensor], variants: tuple[str, ...] = VARIANTS,
                           refine_steps: int | None = None) -> dict[str, dict[str, float]]:
    """variant -> scores; every variant starts from the same keyframe latents (posterior means of the even frames)."""
    from vidiff.data.shapes_flow import latent_bilateral_flow
    from vidiff.models.autoencoder import decode_video, encode_video, spatial_factor_of
    from vidiff.models.latent_flow import bilateral_merge, interpolate_latents

    keys = encode_video(pipe.vae, truth["video"][:, :, 0::2], sample=False)
    f = spatial_factor_of(pipe.vae)

    def oracle(a: torch.Tensor, b: torch.Tensor, pair: int) -> torch.Tensor:
        to0, to1, weight = latent_bilateral_flow(truth["masks"], truth["flow"], [2 * pair + 1] * len(a), f)
        return bilateral_merge(a, b, to0, to1, weight)

    middles: dict[str, Any] = {"nearest": lambda a, b, i: a, "lerp": "lerp", "slerp": "slerp", "oracle": oracle,
                               "flow": pipe._middle("flow") if pipe.flow_net is not None else None}
    out = {"autoencoder": score_inserted(  # the true frames through the autoencoder: the ceiling of any latent method
        decode_video(pipe.vae, encode_video(pipe.vae, truth["video"], sample=False), chunk_size=None).float(), truth)}
    for name in variants:
        if middles.get(name) is None:
            continue
        z = interpolate_latents(keys, middles[name])
        out[name] = score_inserted(decode_video(pipe.vae, z, chunk_size=None).float(), truth)
    if pipe.refiner is not None and pipe.flow_net is not None:
        z = pipe(latents=keys, factor=2, refine_steps=refine_steps, output_type="latent").latents
        out["flow+refiner"] = score_inserted(decode_video(pipe.vae, z, chunk_size=None).float(), truth)
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| variant | PSNR dB (inserted) | centroid error px | ghost rate % |", "|---|---|---|---|"]
    for name, s in results.items():
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['centroid_error']:.2f} | {s['ghost_rate']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="temporal super-resolution model folder")
    src.add_argument("--vae", help="an autoencoder folder alone: the baselines and the oracle warp, no flow network")
    ap.add_argument("--refiner", help="temporal refiner model folder (adds the flow+refiner row)")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--frames", type=int, default=9, help="dense frames per clip (odd): (frames+1)/2 keyframes")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--refine-steps", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", default="outputs/interpolation_eval")
    args = ap.parse_args(argv)
    if args.frames < 3 or args.frames % 2 == 0:
        raise SystemExit(f"error: --frames must be odd and >= 3, got {args.frames}")
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.temporal_sr import TemporalSuperResolutionPipeline
    from vidiff.utils.io import atomic_write_text

    torch.set_num_threads(args.threads)
    start = time.time()
    try:
        if args.model is not None:
            pipe = TemporalSuperResolutionPipeline.from_pretrained(args.model, refiner=args.refiner)
        else:
            from vidiff.pipelines.base import load_autoencoder

            if args.refiner is not None:
                raise PipelineError("--refiner needs --model (a flow network to refine)")
            pipe = TemporalSuperResolutionPipeline(load_autoencoder(Path(args.vae)))
    except PipelineError as err:
        raise SystemExit(f"error: {err}") from None
    truth = dense_clips(args.clips, args.seed, args.frames, int(pipe.vae.config.sample_size))
    results = compare_interpolations(pipe, truth, refine_steps=args.refine_steps)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "vae": args.vae, "refiner": args.refiner, "clips": args.clips, "frames": args.frames,
              "seed": args.seed, "results": results, "seconds": round(time.time() - start, 1)}
    atomic_write_text(out / "interpolation_eval.json", json.dumps(report, indent=2))
    atomic_write_text(out / "interpolation_eval.md", table(results))
    print(table(results), end="")
    print(f"wrote {out / 'interpolation_eval.json'}\nwrote {out / 'interpolation_eval.md'}  ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
