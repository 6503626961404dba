"""DeepCache speed-up and drift: the same prompts and seeds with and without feature reuse, per sampler.

Prints, per (sampler, steps) and cache setting, the wall time of the batch, the speed-up over the uncached run in the
same process, and the relative change of the final latent (‖z_cached − z‖ / ‖z‖).

    python benchmarks/deep_cache.py                                   # embedded T2V default
    python benchmarks/deep_cache.py --runs ddim:50,dpmpp_2m:20 --caches 2/1,3/1,3/2 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: the embedded shapes-world text-to-video model)")
    p.add_argument("--runs", default="ddim:50,dpmpp_2m:20", help="SAMPLER:STEPS,... (default ddim:50,dpmpp_2m:20)")
    p.add_argument("--caches", default="2/1,3/1,2/2,3/2", help="INTERVAL/DEPTH,... (default 2/1,3/1,2/2,3/2)")
    p.add_argument("--prompts", default="a red circle moving left;a blue square moving up",
                   help="';'-separated prompts, sampled as one batch")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)

    import torch

    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = TextToVideoPipeline.from_pretrained(Path(args.model) if args.model else EMBEDDED_MODELS / "shapes_t2v")
    prompts = [s.strip() for s in args.prompts.split(";") if s.strip()]
    caches = [tuple(int(v) for v in c.split("/")) for c in args.caches.split(",")]

    def run(sampler: str, steps: int, cache: tuple[int, int] | None) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        z = pipe(prompts, sampler=sampler, num_inference_steps=steps, deep_cache=cache, seed=0, output_type="latent",
                 progress=False).frames
        return z, time.perf_counter() - start

    print(f"{'sampler':>10} {'steps':>5} {'cache':>6} {'seconds':>8} {'speed-up':>8} {'rel. change':>11}")
    for part in args.runs.split(","):
        sampler, steps = part.split(":")
        ref, t_ref = run(sampler, int(steps), None)
        print(f"{sampler:>10} {steps:>5} {'off':>6} {t_ref:8.1f} {1.0:8.2f} {0.0:11.4f}", flush=True)
        for interval, depth in caches:
            z, t = run(sampler, int(steps), (interval, depth))
            change = ((z - ref).norm() / ref.norm()).item()
            print(f"{sampler:>10} {steps:>5} {f'{interval}/{depth}':>6} {t:8.1f} {t_ref / t:8.2f} {change:11.4f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
