"""Train the shapes-world video classifier behind FVD-shapes (CPU, a few minutes) and write it atomically.

    python scripts/train_shapes_classifier.py                       # -> src/vidiff/assets/shapes_classifier
    python scripts/train_shapes_classifier.py --out /tmp/clf --steps 50

Every training clip is freshly rendered from the shapes world (split "all", so held-out prompts are covered too), so
there is no fixed data set to overfit. Clips with a second object only train the background and "objects" heads: the
world draws the main object on top, which a classifier cannot tell from the picture alone. Runs are deterministic for a
given seed, thread count and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidiff.data.shapes import ShapesWorld, ShapesWorldConfig, render
from vidiff.eval.shapes_classifier import (
    ShapesClassifier,
    ShapesClassifierConfig,
    default_classifier_path,
    save_shapes_classifier,
)

# Heads that describe "the" object, so they are only trained and scored on single-object clips.
OBJECT_HEADS = ("colour", "shape", "motion", "size")
IGNORE = -100
# Shape and motion are learnt last when all heads weigh the same (colour, size and background grab the shared
# features first; alone, the same network learns shape in ~100 steps), so their losses count more.
LOSS_WEIGHTS = {"shape": 4.0, "motion": 2.0}


def batch(world: ShapesWorld, indices: range, config: ShapesClassifierConfig) -> tuple[torch.Tensor, dict]:
    """Rendered clips (n, 3, t, h, w) in [-1, 1] and integer targets per head (IGNORE where undefined)."""
    videos, targets = [], {name: [] for name in config.heads}
    for i in indices:
        sample = render(world.sample_spec(i))
        labels = dict(sample.labels)
        labels["objects"] = "two" if labels["has_second"] else "one"
        videos.append(sample.video)
        for name, classes in config.heads.items():
            undefined = labels["has_second"] and name in OBJECT_HEADS
            targets[name].append(IGNORE if undefined else classes.index(labels[name]))
    return torch.stack(videos), {k: torch.tensor(v) for k, v in targets.items()}


def evaluate(model: ShapesClassifier, world: ShapesWorld, size: int, batch_size: int) -> dict[str, float]:
    model.eval()
    correct = {name: 0 for name in model.config.heads}
    total = {name: 0 for name in model.config.heads}
    with torch.inference_mode():
        for start in range(0, size, batch_size):
            x, y = batch(world, range(start, min(start + batch_size, size)), model.config)
            for name, logits in model(x).items():
                keep = y[name] != IGNORE
                correct[name] += int((logits.argmax(1)[keep] == y[name][keep]).sum())
                total[name] += int(keep.sum())
    model.train()
    return {name: correct[name] / max(total[name], 1) for name in correct}


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces these weights (the output folder does not change them)."""
    return (
        f"python scripts/train_shapes_classifier.py --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
        f"--weight-decay {args.weight_decay} --second-prob {args.second_prob} --val-size {args.val_size} "
        f"--seed {args.seed} --threads {args.threads}"
    )


def load(info: dict) -> str:
    """Load average while training, because wall times on a shared machine mean little without it."""
    if not info.get("load_average"):
        return ""
    first, last = info["load_average"]
    return f", load average {first:.1f} at the start and {last:.1f} at the end"


def model_card(args: argparse.Namespace, info: dict) -> str:
    acc = "\n".join(f"| {k} | {v:.4f} |" for k, v in info["validation_accuracy"].items())
    return f"""# shapes-world video classifier (FVD-shapes features)

A {info["parameters"]:,}-parameter two-stream (per-frame 2D appearance + 3D motion) conv classifier of 16x64x64
shapes-world clips, trained on the world's labels.
Its {info["config"]["feature_dim"]}-d penultimate layer is the feature space of `vidiff.eval.fvd_shapes`.
Load it with `vidiff.eval.shapes_classifier.load_shapes_classifier()`.

Heads: {", ".join(f"{k} ({len(v)})" for k, v in info["config"]["heads"].items())}. Colour, shape, motion and size
describe the single object of one-object clips; background and objects (one / two) are trained on all clips.

## Training

* command: `{command(args)}` (plus `--out FOLDER --overwrite`)
* data: fresh renders of `ShapesWorldConfig(split="all", seed={args.seed}, second_object_prob={args.second_prob})`,
  {info["train_clips"]:,} clips, none repeated
* loss: cross-entropy per head, weights {LOSS_WEIGHTS} (others 1)
* optimiser: AdamW (lr {args.lr}, weight decay {args.weight_decay}), one-cycle schedule, batch {args.batch_size},
  {args.steps} steps, seed {args.seed}, {args.threads} CPU threads
* wall time: {info["wall_time_s"]:.0f} s on {info["machine"]}, {info["cpu_count"]} CPUs{load(info)} (torch {info["torch"]})

## Validation

{args.val_size} fresh clips from `ShapesWorldConfig(split="all", seed={args.seed + 1})` (object heads on the one-object
clips only):

| head | accuracy |
|---|---|
{acc}
{info.get("note", "")}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_classifier_path(), help="output folder")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--second-prob", type=float, default=0.25, help="fraction of training clips with two objects")
    parser.add_argument("--val-size", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.val_size < 1 or args.threads < 1:
        parser.error("--steps, --batch-size, --val-size and --threads must be positive")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ShapesClassifierConfig()
    world_kwargs = dict(height=config.height, width=config.width, num_frames=config.num_frames, split="all")
    train_world = ShapesWorld(ShapesWorldConfig(seed=args.seed, second_object_prob=args.second_prob, **world_kwargs))
    val_world = ShapesWorld(ShapesWorldConfig(seed=args.seed + 1, second_object_prob=args.second_prob, **world_kwargs))
    model = ShapesClassifier(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"shapes classifier: {params:,} parameters; {args.steps} steps of {args.batch_size} clips")
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)

    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = batch(train_world, range(step * args.batch_size, (step + 1) * args.batch_size), config)
        logits = model(x)
        losses = {k: F.cross_entropy(v, y[k], ignore_index=IGNORE) for k, v in logits.items()}
        # A head can have no targets in a batch (all clips with two objects): its loss is NaN and skipped.
        loss = sum(LOSS_WEIGHTS.get(k, 1.0) * v for k, v in losses.items() if not torch.isnan(v))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 25 == 0 or step == args.steps - 1:
            parts = " ".join(f"{k} {float(v.detach()):.3f}" for k, v in losses.items())
            print(
                f"step {step:4d}  loss {float(loss.detach()):.3f}  ({parts})  {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    train_time = time.perf_counter() - start

    accuracy = evaluate(model, val_world, args.val_size, 64)
    wall = time.perf_counter() - start
    print("validation accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    info = {
        "parameters": params,
        "config": config.to_dict(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_clips": args.steps * args.batch_size,
        "lr": args.lr,
        "loss_weights": LOSS_WEIGHTS,
        "weight_decay": args.weight_decay,
        "second_object_prob": args.second_prob,
        "seed": args.seed,
        "threads": args.threads,
        "train_time_s": round(train_time, 1),
        "wall_time_s": round(wall, 1),
        "validation_size": args.val_size,
        "validation_seed": args.seed + 1,
        "validation_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "command": command(args),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    save_shapes_classifier(model, args.out, readme=model_card(args, info), training=info, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    print(json.dumps(info["validation_accuracy"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
