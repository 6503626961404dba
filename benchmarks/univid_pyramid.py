"""Cost of UniVid's temporal pyramid against plain temporal attention (design doc U4's FLOPs and s/step columns).

Variants of the shapes-world UniVid U-Net (``configs/shapes_univid.yaml``), one forward + backward of a training batch
each, in one run so the ratios compare like with like:

* ``A``  temporal attention only (the T2V default: no PSTAttn, no PSTConv);
* ``A2`` temporal attention, two layers per level (``temporal_transformer_depth: 2``): plain attention widened toward
  UniVid's FLOPs, U4's equal-FLOPs baseline;
* ``B``  UniVid: n_f = {1: 2, 2: 4, 4: 16} (dense at the middle), k_f = {1: 3, 2: 5, 4: 7};
* ``C``  dense everywhere: n_f = 16 at every level;
* ``D``  uniform: n_f = 4 at every level;
* ``E``  inverted: n_f = {1: 16, 2: 4, 4: 2}.

Printed per variant: parameters, analytic FLOPs of the step (torch's FlopCounterMode: matmuls, convolutions,
attention), median seconds per step, and both relative to B. Only cost is measured here; which variant generates
better motion at equal FLOPs needs trained models (U4's quality columns).

    python benchmarks/univid_pyramid.py --batch 8 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from vidiff.models.unet3d import UNet3DModel
from vidiff.training.config import load_config
from vidiff.utils.flops import count_flops, time_function

REPO = Path(__file__).resolve().parents[1]


def variants(base: dict) -> dict[str, dict]:
    plain = {k: v for k, v in base.items() if k not in ("layer_types", "layer_options", "image_cross_attention",
                                                          "image_context_dim")}

    def pyramid(refs: dict[int, int]) -> dict:
        cfg = copy.deepcopy(base)
        cfg["layer_options"]["spatial_attention"]["reference_frames"] = refs
        return cfg

    return {"A": plain, "A2": {**plain, "temporal_transformer_depth": 2}, "B": copy.deepcopy(base),
            "C": pyramid({1: 16, 2: 16, 4: 16}), "D": pyramid({1: 4, 2: 4, 4: 4}), "E": pyramid({1: 16, 2: 4, 4: 2})}


def step_fn(unet: UNet3DModel, batch: int, frames: int, size: int, context_dim: int, image: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, unet.config.in_channels, frames, size, size, generator=g)
    text = torch.randn(batch, 16, context_dim, generator=g)
    extra = {"image_context": torch.randn(batch, 65, context_dim, generator=g)} if image else {}
    t = torch.randint(0, 1000, (batch,), generator=g)

    def step() -> None:
        unet.zero_grad(set_to_none=True)
        unet(x, t, text, **extra).square().mean().backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "shapes_univid.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=16, help="latent side (16 = 64 px through the shapes autoencoder)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="A,A2,B,C,D,E")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = dict(load_config(args.config).model.unet.config)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    table = variants(base)
    unknown = [v for v in chosen if v not in table]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(table)}")
    rows = {}
    for name in chosen:
        cfg = table[name]
        torch.manual_seed(0)
        unet = UNet3DModel(**cfg).train()
        step = step_fn(unet, args.batch, args.frames, args.size, cfg["context_dim"],
                       bool(cfg.get("image_cross_attention")))
        flops, _ = count_flops(step)
        timing = time_function(step, repeats=args.repeats, warmup=1)
        rows[name] = {"params_m": sum(p.numel() for p in unet.parameters()) / 1e6, "gflops": flops.total / 1e9,
                      "s_per_step": timing.median}
        print(f"{name}: {rows[name]['params_m']:.2f} M params, {rows[name]['gflops']:.1f} GFLOP/step, "
              f"{timing.median:.2f} s/step", flush=True)
    ref = rows.get("B")
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads, batch {args.batch}, "
          f"{args.frames} frames of {args.size}x{args.size} latents, forward + backward")
    print("| variant | params M | GFLOP/step | FLOPs / B | s/step | time / B |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        fr = f"{r['gflops'] / ref['gflops']:.2f}" if ref else "-"
        tr = f"{r['s_per_step'] / ref['s_per_step']:.2f}" if ref else "-"
        print(f"| {name} | {r['params_m']:.2f} | {r['gflops']:.1f} | {fr} | {r['s_per_step']:.2f} | {tr} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
