"""VideoGen's video decoder against the image decoder (design doc V5), on shapes-world clips.

Both decode the same latents of the same clips, under three conditions: (a) ``clean``, the posterior mean of the
clean frames (the decoder must not lose PSNR here); (b) ``degraded``, the latents of blurred / noisy / JPEG frames
(:mod:`vidiff.data.degrade`, what the video decoder was trained on: PSNR and sharpness against the clean clip);
(d) ``noisy_latents``, clean latents plus independent per-frame Gaussian noise (a stand-in for a diffusion sample's
frame-to-frame errors: flicker). Per condition and decoder:

* ``psnr``: dB against the clean clip, pixels in [-1, 1] (data range 2);
* ``edge_ratio``: spatial gradient magnitude on the clean clip's edges over the clean clip's (1 = as sharp);
* ``temporal_error``: mean |Δ_t decoded − Δ_t clean| in uint8 levels (frame-to-frame change that the clip does not
  have: flicker, whatever its cause);
* ``background_flicker``: the flicker probe's background change (uint8 levels, :mod:`vidiff.eval.probes`).

    python -m vidiff.eval.video_decoder_eval --video-vae outputs/shapes_video_decoder/model \\
        --image-vae src/vidiff/assets/models/shapes_t2v/vae -o outputs/video_decoder_eval

(c), cascade samples, needs the VideoGen cascade and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidiff.data.degrade import DegradeConfig, degrade_clip

CONDITIONS = ("clean", "degraded", "noisy_latents")


def shapes_clips(n: int, seed: int, num_frames: int = 16, size: int = 64):
    """``n`` shapes-world clips (b, 3, t, H, W) in [-1, 1], their captions and the world that rendered them."""
    from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig

    world = ShapesWorldConfig(height=size, width=size, num_frames=num_frames, seed=seed)
    ds = ShapesVideoDataset(world, length=n, ground_truth=False)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["video"] for it in items]), [it["caption"] for it in items], world


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (x.clamp(-1, 1) - ref).square().mean(dim=(1, 2, 3, 4)).clamp_min(1e-12)
    return float((10 * torch.log10(4.0 / mse)).mean())


def _gradients(x: torch.Tensor) -> torch.Tensor:
    """|∂x/∂h| + |∂x/∂w| per pixel (forward differences, last row/column dropped), summed over channels."""
    return ((x[..., 1:, :-1] - x[..., :-1, :-1]).abs() + (x[..., :-1, 1:] - x[..., :-1, :-1]).abs()).sum(dim=1)


def _edge_ratio(x: torch.Tensor, clean: torch.Tensor) -> float:
    """Gradient magnitude of ``x`` on the clean clip's edges over the clean clip's there (1 = as sharp; flat regions,
    where decoder noise would inflate a global measure, are left out)."""
    ref = _gradients(clean)
    edges = ref > 0.2
    return float(_gradients(x)[edges].mean() / ref[edges].mean()) if edges.any() else float("nan")


def _temporal_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    d = (x.clamp(-1, 1)[:, :, 1:] - x.clamp(-1, 1)[:, :, :-1]) - (ref[:, :, 1:] - ref[:, :, :-1])
    return float(d.abs().mean() * 127.5)


def _background_flicker(x: torch.Tensor, captions: list[str], world) -> float:
    from vidiff.eval.probes import probe_video
    from vidiff.utils.video import batch_to_uint8_frames

    values = []
    for video, caption in zip(batch_to_uint8_frames(x.clamp(-1, 1)).numpy(), captions):
        detected = probe_video(video, caption, world).scores["flicker"].detected
        if isinstance(detected, dict) and detected.get("background") is not None:
            values.append(float(detected["background"]))
    return float(np.mean(values)) if values else float("nan")


def _scores(x: torch.Tensor, clean: torch.Tensor, captions: list[str], world) -> dict[str, float]:
    return {"psnr": _psnr(x, clean), "edge_ratio": _edge_ratio(x.clamp(-1, 1), clean),
            "temporal_error": _temporal_error(x, clean), "background_flicker": _background_flicker(x, captions, world)}


@torch.no_grad()
def compare_decoders(image_vae, video_vae, clips: torch.Tensor, captions: list[str], world,
                     degrade: DegradeConfig | None = None, latent_noise: float = 0.1,
                     seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """condition -> decoder ("image", "video") -> scores; both decoders read the same latents (posterior means)."""
    from vidiff.models.autoencoder import decode_video, encode_video

    degrade = degrade or DegradeConfig()
    gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(clips))]
    degraded = torch.stack([degrade_clip(v, degrade, g) for v, g in zip(clips, gens)])
    z_clean = encode_video(video_vae, clips, sample=False)
    noise = torch.randn(z_clean.shape, generator=torch.Generator().manual_seed(seed + 7))
    latents = {"clean": z_clean, "degraded": encode_video(video_vae, degraded, sample=False),
               "noisy_latents": z_clean + latent_noise * noise}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for condition, z in latents.items():
        decoded = {"image": decode_video(image_vae, z, chunk_size=None), "video": decode_video(video_vae, z)}
        out[condition] = {name: _scores(x.float(), clips, captions, world) for name, x in decoded.items()}
    out["degraded_input"] = {"input": _scores(degraded, clips, captions, world)}
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| condition | decoder | PSNR dB | edge ratio | temporal error (levels) | background flicker |",
             "|---|---|---|---|---|---|"]
    for condition, by_decoder in results.items():
        for name, s in by_decoder.items():
            lines.append(f"| {condition} | {name} | {s['psnr']:.2f} | {s['edge_ratio']:.3f} | "
                         f"{s['temporal_error']:.2f} | {s['background_flicker']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video-vae", required=True, help="the video decoder (an autoencoder folder)")
    ap.add_argument("--image-vae", required=True, help="the image autoencoder it was built from")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--latent-noise", type=float, default=0.1, help="per-frame latent noise of noisy_latents")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", default="outputs/video_decoder_eval")
    args = ap.parse_args(argv)
    from vidiff.pipelines.base import PipelineError, load_autoencoder

    torch.set_num_threads(args.threads)
    start = time.time()
    try:
        video_vae, image_vae = load_autoencoder(Path(args.video_vae)), load_autoencoder(Path(args.image_vae))
    except PipelineError as err:
        raise SystemExit(f"error: {err}") from None
    size = int(video_vae.config.sample_size)
    clips, captions, world = shapes_clips(args.clips, args.seed, 16, size)
    results = compare_decoders(image_vae, video_vae, clips, captions, world, latent_noise=args.latent_noise,
                               seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from vidiff.utils.io import atomic_write_text

    report: dict[str, Any] = {"video_vae": args.video_vae, "image_vae": args.image_vae, "clips": args.clips,
                              "seed": args.seed, "latent_noise": args.latent_noise, "results": results,
                              "seconds": round(time.time() - start, 1)}
    atomic_write_text(out / "video_decoder_eval.json", json.dumps(report, indent=2))
    atomic_write_text(out / "video_decoder_eval.md", table(results))
    print(table(results), end="")
    print(f"wrote {out / 'video_decoder_eval.json'}\nwrote {out / 'video_decoder_eval.md'}  "
          f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
