"""Time one U-Net forward pass and relate it to the machine's matmul peak.

Configs: ``tiny`` (the ``vc2_t2v_512`` variant of the official tiny fixture U-Net, at the fixture's latent size) and
``full`` (VideoCrafter2's U-Net, 1.41 B parameters, at 16 frames of 40×64 latents = 320×512 pixels). Weights are random
(seeded): speed does not depend on their values. See benchmarks/README.md for the columns.

    python benchmarks/unet_forward.py --configs tiny,full --dtypes fp32,bf16 --batches 1,2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from vidiff.conversion.unet import unet_config_from_official
from vidiff.models.unet3d import UNet3DModel
from vidiff.utils.flops import FlopCount, count_flops, measure_matmul_peak, peak_memory, time_function
from vidiff.utils.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_ROOT = Path(os.environ.get("VIDIFF_LVDM_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "lvdm"))
TINY_VARIANT = "vc2_t2v_512"

# VideoCrafter2 (configs/inference_t2v_512_v2.0.yaml), see shared/docs/official-lvdm-architecture.md §1.
FULL_VC2_KWARGS = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "use_linear": True,
    "use_checkpoint": False,
    "temporal_conv": True,
    "temporal_attention": True,
    "temporal_selfatt_only": True,
    "use_causal_attention": False,
    "use_relative_position": False,
    "temporal_length": 16,
    "addition_attention": True,
    "fps_cond": True,
}
FULL_LATENT = (16, 40, 64)  # frames, height, width
FULL_CONTEXT = (77, 1024)  # text tokens, width
FPS = 28  # the VideoCrafter2 script's value

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-autocast": torch.bfloat16, "fp16": torch.float16}
DEFAULT_REPEATS = {"tiny": 10, "full": 1}
DEFAULT_WARMUP = {"tiny": 2, "full": 0}


def tiny_setup() -> tuple[dict, tuple[int, int, int], tuple[int, int]]:
    """Official kwargs of the tiny fixture variant and the latent/context sizes of its case ``a``."""
    cfg_path = FIXTURES_ROOT / "vc_unet_tiny" / "config.json"
    if not cfg_path.is_file():
        candidates = sorted(FIXTURES_ROOT.glob("*/config.json")) if FIXTURES_ROOT.is_dir() else []
        cfg_path = next((p for p in candidates if TINY_VARIANT in json.loads(p.read_text()).get("variants", {})), cfg_path)
    if not cfg_path.is_file():
        sys.exit(f"tiny config: no fixture folder with variant {TINY_VARIANT!r} under {FIXTURES_ROOT} (set VIDIFF_LVDM_FIXTURES)")
    cfg = json.loads(cfg_path.read_text())
    kwargs = cfg["variants"][TINY_VARIANT]["kwargs"]
    case = cfg["cases"][cfg["variants"][TINY_VARIANT]["cases"][0]]["inputs"]
    _, _, t, h, w = case["x"]["shape"]
    _, n_tokens, dim = case["context"]["shape"]
    return kwargs, (t, h, w), (n_tokens, dim)


def setup(name: str) -> tuple[dict, tuple[int, int, int], tuple[int, int]]:
    """Official kwargs, latent (t, h, w) and context (tokens, width) of a benchmark config."""
    return tiny_setup() if name == "tiny" else (FULL_VC2_KWARGS, FULL_LATENT, FULL_CONTEXT)


def build_model(kwargs: dict, device: torch.device | str) -> UNet3DModel:
    """Seeded random weights: speed does not depend on the values."""
    torch.manual_seed(0)
    with torch.device(device):
        model = UNet3DModel(**unet_config_from_official(kwargs, flavour="vc"))
    return model.eval().requires_grad_(False)


def forward_flops(kwargs: dict, batch: int, latent, context) -> FlopCount:
    """FLOPs of one forward, counted on the meta device: no memory, no arithmetic, same op sequence.

    (On the meta device SDPA runs its math fallback, whose two batched matmuls are counted with exactly the FLOPs of the
    fused kernel; on the tiny config the meta and real counts agree to the FLOP.)
    """
    model = build_model(kwargs, "meta")
    inputs = [t.to("meta") for t in make_inputs(batch, model.config.in_channels, latent, context, "cpu", torch.float32)]
    flops, _ = count_flops(forward_fn(model, inputs, None, torch.device("meta")))
    return flops


def make_inputs(batch: int, in_channels: int, latent, context, device, dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    t, h, w = latent
    x = torch.randn(batch, in_channels, t, h, w, generator=g)
    timestep = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, *context, generator=g)
    fps = torch.full((batch,), FPS, dtype=torch.int64)
    return x.to(device, dtype), timestep.to(device), ctx.to(device, dtype), fps.to(device)


def forward_fn(model, inputs, autocast_dtype: torch.dtype | None, device: torch.device) -> Callable[[], torch.Tensor]:
    x, timestep, ctx, fps = inputs

    def run() -> torch.Tensor:
        amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            return model(x, timestep, ctx, fps=fps)

    return run


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


HEADER = ["config", "dtype", "batch", "latent", "s/forward", "GFLOP", "GFLOP/s", "mm peak", "% peak", "peak MiB", "Δ MiB"]
WIDTHS = [6, 13, 5, 9, 10, 9, 8, 8, 7, 9, 8]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,full", help="comma list of: tiny, full")
    p.add_argument("--dtypes", default="fp32,bf16", help=f"comma list of: {', '.join(DTYPES)}")
    p.add_argument("--batches", default="1,2", help="comma list of batch sizes (2 = one classifier-free-guidance step)")
    p.add_argument("--repeats", type=int, default=None, help="timed forwards per row (default: tiny 10, full 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards before the timed ones (default: tiny 2, full 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (default 2048 cpu, 8192 cuda)")
    p.add_argument("--peak-seconds", type=float, default=2.0, help="seconds per matmul-peak measurement")
    p.add_argument("--no-peak-per-row", dest="peak_per_row", action="store_false",
                   help="use the matmul peaks measured at the start for every row instead of re-measuring before each")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    diffusers_logging.set_verbosity_error()  # ModelMixin.to() warns about dtype casts, which is what we want here

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches must be a comma list of integers, got {args.batches!r}")
    if bad := [c for c in configs if c not in DEFAULT_REPEATS]:
        p.error(f"unknown config(s) {bad}; choose from {list(DEFAULT_REPEATS)}")
    if bad := [d for d in dtypes if d not in DTYPES]:
        p.error(f"unknown dtype(s) {bad}; choose from {list(DTYPES)}")
    if not batches or min(batches) < 1:
        p.error("--batches needs positive integers")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak_n = args.peak_n or (2048 if device.type == "cpu" else 8192)
    # fp32 first: the model is built in fp32 and cast down once, never back up from bf16.
    dtypes.sort(key=lambda d: DTYPES[d] != torch.float32)

    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        cpu = torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, device {device} ({cpu}), threads {torch.get_num_threads()}", flush=True)
    peaks: dict[str, float] = {}

    def matmul_peak(dtype: torch.dtype) -> float:
        label = str(dtype).removeprefix("torch.")
        peaks[label] = measure_matmul_peak(dtype, n=peak_n, seconds=args.peak_seconds, device=device)
        return peaks[label]

    for name in dict.fromkeys(DTYPES[d] for d in dtypes):
        print(f"matmul peak {str(name).removeprefix('torch.')} ({peak_n}×{peak_n}): {matmul_peak(name) / 1e9:.1f} GFLOP/s", flush=True)

    results = []
    print(fmt_row(HEADER, WIDTHS), flush=True)
    for config in configs:
        kwargs, latent, context = setup(config)
        model = build_model(kwargs, device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"# {config}: {n_params / 1e6:.2f} M parameters, latent t×h×w = {'×'.join(map(str, latent))}", flush=True)
        flops_of: dict[int, FlopCount] = {}
        repeats = args.repeats or DEFAULT_REPEATS[config]
        warmup = DEFAULT_WARMUP[config] if args.warmup is None else args.warmup
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            autocast = dtype if dtype_name.endswith("-autocast") else None
            weight_dtype = torch.float32 if autocast else dtype
            if next(model.parameters()).dtype != weight_dtype:
                if weight_dtype == torch.float32:
                    model = build_model(kwargs, device)  # rebuild rather than upcast rounded weights
                else:
                    model = model.to(weight_dtype)
            for batch in batches:
                inputs = make_inputs(batch, model.config.in_channels, latent, context, device, weight_dtype)
                fn = forward_fn(model, inputs, autocast, device)
                if batch not in flops_of:
                    flops_of[batch] = forward_flops(kwargs, batch, latent, context)
                flops = flops_of[batch]
                # Measured again next to each row: on a shared machine the available compute drifts.
                peak = matmul_peak(dtype) if args.peak_per_row else peaks[str(dtype).removeprefix("torch.")]
                with peak_memory(device) as mem:
                    timing = time_function(fn, repeats=repeats, warmup=warmup, device=device)
                seconds = timing.median
                row = {
                    "config": config,
                    "dtype": dtype_name,
                    "batch": batch,
                    "latent": list(latent),
                    "params": n_params,
                    "seconds": seconds,
                    "times": timing.times,
                    "gflop": flops.total / 1e9,
                    "gflops_per_s": flops.total / seconds / 1e9,
                    "matmul_peak_gflops_per_s": peak / 1e9,
                    "fraction_of_peak": flops.total / seconds / peak,
                    "peak_mib": mem.peak_bytes / 2**20,
                    "delta_mib": mem.delta_bytes / 2**20,
                    "memory_method": mem.method,
                    "flops_by_op": {k: v / 1e9 for k, v in flops.by_op.items()},
                }
                results.append(row)
                cells = [
                    config,
                    dtype_name,
                    str(batch),
                    "×".join(map(str, latent)),
                    f"{seconds:.4g}",
                    f"{row['gflop']:.1f}",
                    f"{row['gflops_per_s']:.1f}",
                    f"{peak / 1e9:.0f}",
                    f"{100 * row['fraction_of_peak']:.1f}",
                    f"{row['peak_mib']:.0f}",
                    f"{row['delta_mib']:.0f}",
                ]
                print(fmt_row(cells, WIDTHS), flush=True)
        del model
    if results:
        print(f"memory: {results[0]['memory_method']}; FLOPs by op (GFLOP) for the last row: "
              + ", ".join(f"{k} {v:.1f}" for k, v in results[-1]["flops_by_op"].items()), flush=True)
    if args.json:
        atomic_write_json(args.json, {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                                      "results": results})


if __name__ == "__main__":
    main()
