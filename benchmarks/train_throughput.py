"""Training throughput of a shapes-world T2V config on this machine: samples/s, achieved FLOP/s, share of matmul peak.

One timed step is exactly what the trainer does per optimizer step: encode the clips with the autoencoder, draw the
per-sample noise/timesteps, run the denoiser forward and backward, AdamW step, EMA update. The model is built from the
config's U-Net and text encoder settings; the autoencoder is the config's pretrained one when it exists, otherwise a
random one of the shipped shapes VAE layout (speed does not depend on the weights).

    python benchmarks/train_throughput.py                                 # configs/shapes_t2v_tiny.yaml
    python benchmarks/train_throughput.py --steps 20 --threads 2 --json out.json
    python benchmarks/train_throughput.py --config my.yaml data.batch_size=4
    python benchmarks/train_throughput.py --config configs/shapes_t2v.yaml --baseline OLD.yaml   # prints the ratio

With ``--baseline`` both configs are timed in the same process, one after the other, and the speed-up is printed as the ratio
of their clips/s (and frames/s). Configs with ``train.cache_latents`` are timed in the steady state (every clip's
latents already cached), as the trainer runs from the second epoch on.

FLOPs are counted once, for a whole step, with torch's FlopCounterMode (matrix products, convolutions and attention;
element-wise ops and norms are not counted), and divided by the median step time. The peak is a large fp32 matmul
measured in the same run (``vidiff.utils.flops.measure_matmul_peak``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vidiff.training.config import load_config
from vidiff.training.data import BatchStream, build_batch_sampler, build_datasets
from vidiff.training.ema import make_ema
from vidiff.training.losses import sample_generators
from vidiff.training.params import apply_trainable
from vidiff.training.tasks import make_task
from vidiff.utils.flops import count_flops, measure_matmul_peak
from vidiff.utils.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
SHAPES_VAE = {
    "block_out_channels": [32, 32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "shapes_t2v_tiny.yaml"))
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's)")
    parser.add_argument("--peak-seconds", type=float, default=2.0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--baseline", help="a second config timed the same way; the ratio of throughputs is printed")
    args = parser.parse_args()

    results = [measure(args.config, args.overrides, args)]
    if args.baseline:
        results.append(measure(args.baseline, [], args))
    for result in results:
        report(result)
    if args.baseline:
        new, old = results
        print(f"speed-up over the baseline: {new['samples_per_s'] / old['samples_per_s']:.2f}x clips/s, "
              f"{new['frames_per_s'] / old['frames_per_s']:.2f}x frames/s "
              f"({old['step_seconds_median']:.2f} -> {new['step_seconds_median']:.2f} s/step)")
    if args.json:
        atomic_write_json(args.json, results[0] if len(results) == 1 else {"config": results[0],
                                                                            "baseline": results[1]})
        print(f"wrote {args.json}")
    return 0


def measure(config: str, overrides: list[str], args: argparse.Namespace) -> dict:
    cfg = load_config(config, overrides)
    vae = cfg.model.vae
    if vae.pretrained is not None and not Path(vae.pretrained).is_dir():
        print(f"note: {vae.pretrained} not found; using a random autoencoder of the shipped shapes layout")
        vae.pretrained, vae.config = None, dict(SHAPES_VAE)
    threads = args.threads or cfg.train.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)

    device = torch.device("cpu")
    task = make_task(cfg, device)
    apply_trainable(task.module, cfg.train.trainable, cfg.train.frozen)
    params = [p for p in task.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    ema = make_ema(params, cfg.train.ema_decay) if cfg.train.ema else None
    data = cfg.data
    if cfg.task == "t2i":
        dataset, n_videos, n_images = build_datasets(data, images_only=True)
    else:
        data.images, data.image_batches_per_video_batch = None, 0.0  # time video batches (the expensive kind)
        dataset, n_videos, n_images = build_datasets(data, masks=cfg.train.foreground_weight > 0)
    stream = BatchStream(dataset, build_batch_sampler(data, n_videos, n_images, 1, 0), seed=data.seed)
    batches = [stream.next() for _ in range(args.warmup + args.steps)]
    batch_size = len(batches[0]["caption"])

    def denoiser(*a, **kw):  # the trainer's autocast covers the denoiser's forward only (as accelerate's does)
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.train.mixed_precision == "bf16"):
            return task.module(*a, **kw)

    def step(i: int) -> None:
        gens = sample_generators(cfg.seed, i, 0, list(range(batch_size)))
        loss, _ = task.loss(denoiser, batches[i], gens)
        loss.backward()
        if cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)

    peak = measure_matmul_peak(torch.float32, seconds=args.peak_seconds)
    if cfg.train.cache_latents:  # steady state: every clip's posterior already in memory
        with torch.no_grad():
            for batch in batches:
                gens = sample_generators(cfg.seed, 0, 0, list(range(batch_size)))
                task._latents(batch, gens)
    flops, _ = count_flops(step, 0)
    for i in range(1, args.warmup):
        step(i)
    times = []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    achieved = flops.total / median
    frames = batches[0]["video"].shape[2]
    return {
        "config": config,
        "overrides": overrides,
        "mixed_precision": cfg.train.mixed_precision,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": threads,
        "batch_size": batch_size,
        "frames": frames,
        "trainable_parameters": sum(p.numel() for p in params),
        "step_seconds_median": median,
        "step_seconds": times,
        "samples_per_s": batch_size / median,
        "frames_per_s": batch_size * frames / median,
        "gflop_per_step": flops.total / 1e9,
        "achieved_gflop_s": achieved / 1e9,
        "matmul_peak_gflop_s": peak / 1e9,
        "fraction_of_peak": achieved / peak,
        "gflop_by_op": {k: v / 1e9 for k, v in sorted(flops.by_op.items(), key=lambda kv: -kv[1])},
    }


def report(result: dict) -> None:
    threads, batch_size, frames, median = (result["threads"], result["batch_size"], result["frames"],
                                           result["step_seconds_median"])
    times = result["step_seconds"]
    print(f"== {result['config']} ({result['mixed_precision']})")
    print(f"torch {torch.__version__}, {threads} thread(s); batch {batch_size} clips x {frames} frames; "
          f"{result['trainable_parameters'] / 1e6:.2f} M trainable parameters")
    print(f"step: {median:.3f} s median of {len(times)} (min {min(times):.3f})")
    print(f"samples/s: {result['samples_per_s']:.2f} clips ({result['frames_per_s']:.1f} frames)")
    print(f"FLOPs per step: {result['gflop_per_step']:.2f} GFLOP (forward + backward, counted ops only)")
    print(f"achieved: {result['achieved_gflop_s']:.1f} GFLOP/s; fp32 matmul peak {result['matmul_peak_gflop_s']:.1f} "
          f"GFLOP/s; ratio {100 * result['fraction_of_peak']:.1f} %")


if __name__ == "__main__":
    sys.exit(main())
