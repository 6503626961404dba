"""Shape, per single frame, after an autoencoder round trip: the ceiling of a latent text-to-image model.

`vidiff eval --autoencoder` probes whole clips, where the probes take a majority over frames, so a decoder that rounds
the corners of small squares in some frames still passes. This round-trips single-object still frames (posterior
mode, no sampling) and reads each frame's shape with the probes of docs/probes.md, per true shape and size.

    python scripts/autoencoder_frame_probe.py src/vidiff/assets/models/shapes_t2i
    python scripts/autoencoder_frame_probe.py outputs/shapes_vae_decoder/model --frames 300
"""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="an autoencoder folder, or a model folder (its vae/)")
    parser.add_argument("--frames", type=int, default=300, help="frames drawn; those with a second object are skipped")
    parser.add_argument("--start", type=int, default=5000, help="first index of the shapes image stream (seed 0)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vidiff.data.shapes import ShapesImageDataset, ShapesWorldConfig
    from vidiff.eval.autoencoder_eval import EvalError, load_autoencoder_folder
    from vidiff.eval.probes import probe_video

    try:
        vae, _, _, _ = load_autoencoder_folder(args.folder)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    world = ShapesWorldConfig(height=64, width=64, num_frames=2)
    data = ShapesImageDataset(world, length=args.start + args.frames, ground_truth=False)
    confusion: collections.Counter = collections.Counter()
    by_size: dict[str, list[bool]] = collections.defaultdict(list)
    l1 = []
    for i in range(args.start, args.start + args.frames):
        item = data[i]
        labels = item["labels"]
        if labels.get("has_second"):
            continue
        x = item["image"][None]
        with torch.no_grad():
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        l1.append(float((recon - x).abs().mean()))
        frame = ((recon[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        score = probe_video(np.stack([frame, frame]), f"a {labels['colour']} {labels['shape']}", world).scores["shape"]
        confusion[(score.expected, score.detected)] += 1
        by_size[labels["size"]].append(bool(score.passed))
    n = sum(confusion.values())
    kept = sum(v for (want, got), v in confusion.items() if want == got)
    print(f"{args.folder}: {n} single-object frames, shape kept {100 * kept / n:.1f} %, mean L1 {np.mean(l1):.4f}")
    print("  by size: " + ", ".join(f"{s} {100 * np.mean(v):.1f} % (n={len(v)})" for s, v in sorted(by_size.items())))
    print("  true -> read: " + ", ".join(f"{a} -> {b}: {v}" for (a, b), v in sorted(confusion.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
