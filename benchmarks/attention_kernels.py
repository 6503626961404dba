"""SDPA versus an explicit matmul-softmax-matmul, per attention shape of the LVDM U-Nets.

vidiff's attention picks the kernel by key count (``vidiff.models.attention.SDPA_MIN_KEYS``); this script measures the
choice. Shapes are those of a VideoCrafter2 forward at 16×40×64 latents, batch 1 (spatial: 16 frames × heads over 2560
tokens; temporal: 2560 pixels × heads over 16 frames).

    python benchmarks/attention_kernels.py [--dtypes fp32,bf16] [--backward]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = {
    # name: (batch, heads, queries, keys, dim_head)
    "temporal 16 frames, level 0 (2560 px, 5 heads)": (2560, 5, 16, 16, 64),
    "temporal 16 frames, level 2 (160 px, 20 heads)": (160, 20, 16, 16, 64),
    "spatial level 1 (16 frames, 640 tokens, 10 heads)": (16, 10, 640, 640, 64),
    "spatial level 2 cross-attn (160 q, 77 text keys)": (16, 20, 160, 77, 64),
    "spatial level 0 (16 frames, 2560 tokens, 5 heads)": (16, 5, 2560, 2560, 64),
}


def math_attention(q, k, v, scale):
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul(scale).softmax(-1), v)


def sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def timeit(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true", help="skip the 2560-token spatial shape")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {'fwd+bwd' if args.backward else 'fwd'}")
    print(f"{'shape':52s} {'dtype':5s} {'math ms':>9s} {'sdpa ms':>9s} {'sdpa/math':>9s}")
    for dtype_name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for name, (b, h, n, m, d) in SHAPES.items():
            if args.skip_large and n >= 2560:
                continue
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(b, h, s, d, generator=g).to(dtype) for s in (n, m, m))
            if args.backward:
                q, k, v = (x.requires_grad_() for x in (q, k, v))
            res = {}
            for kname, fn in (("math", math_attention), ("sdpa", sdpa)):
                def run(fn=fn, q=q, k=k, v=v, scale=d**-0.5):
                    out = fn(q, k, v, scale)
                    if args.backward:
                        out.float().sum().backward()
                    return out
                ctx = torch.enable_grad() if args.backward else torch.inference_mode()
                with ctx:
                    res[kname] = timeit(run, args.repeats) * 1e3
            print(f"{name:52s} {dtype_name:5s} {res['math']:9.2f} {res['sdpa']:9.2f} {res['sdpa'] / res['math']:9.2f}")


if __name__ == "__main__":
    main()
