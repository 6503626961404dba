"""Evaluating a text-to-image model on the shapes world: canonical image prompts, the per-image probes, one report.

The suite is every colour x shape in the canonical image phrasing ("a red circle"; sizes and backgrounds optional),
``per_prompt`` seeds each. Each image is probed (colour, shape, size, background) against its prompt; the report
holds the accuracy per probe, the per-image results, a contact sheet of every image and a confusion matrix of
colours, so a person sees both the numbers and the pictures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidiff.model_folder import try_read_index
from vidiff.utils.io import atomic_write_text

__all__ = ["image_suite", "evaluate_image_model", "is_image_model"]

IMAGE_PROBES = ("colour", "shape", "size", "background")


def is_image_model(folder: str | Path) -> bool:
    """A model folder exported by the t2i task (or any folder whose default clip is one frame)."""
    index = try_read_index(folder)
    if index is None:
        return False
    return index.get("modality") == "image" or index.get("defaults", {}).get("num_frames") == 1


def image_suite(per_prompt: int = 1, sizes: bool = False, backgrounds: bool = False) -> list[str]:
    """Canonical image prompts: every colour x shape, optionally x size and x background."""
    from vidiff.data.shapes_vocab import (
        BACKGROUNDS,
        COLOURS,
        DEFAULT_BACKGROUND,
        SHAPES,
        CaptionAttributes,
        ObjectAttributes,
        caption_text,
    )

    prompts = []
    for colour in COLOURS:
        for shape in SHAPES:
            for size in (("small", "medium", "large") if sizes else ("medium",)):
                for bg in (tuple(BACKGROUNDS) if backgrounds else (DEFAULT_BACKGROUND,)):
                    attrs = CaptionAttributes(ObjectAttributes(colour, shape, None, size), None, bg)
                    prompts += [caption_text(attrs, "image_canonical")] * per_prompt
    return prompts


def evaluate_image_model(model: str | Path, out_dir: str | Path, *, per_prompt: int = 1, sizes: bool = False,
                         backgrounds: bool = False, seed: int = 0, steps: int | None = None,
                         guidance: float | None = None, batch_size: int = 8, device: str = "cpu",
                         overwrite: bool = False, progress: bool = True,
                         lora: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """Generate the image suite with ``model`` (and ``lora`` files loaded onto it) and probe it; writes report.json
    (with the colour confusion) and images.png."""
    from tqdm.auto import tqdm

    from vidiff.data.shapes import ShapesWorldConfig
    from vidiff.eval.probes import probe_video
    from vidiff.pipelines.text_to_video import TextToVideoPipeline
    from vidiff.utils.video import write_contact_sheet

    out = Path(out_dir)
    if (out / "report.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'report.json'} exists: pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    pipe = TextToVideoPipeline.from_pretrained(model, device=device, lora=lora or None)
    prompts = image_suite(per_prompt, sizes, backgrounds)
    h, w = int(pipe.defaults["height"]), int(pipe.defaults["width"])
    world = ShapesWorldConfig(height=h, width=w, num_frames=2)
    start = time.time()
    images: list[np.ndarray] = []
    bar = tqdm(total=len(prompts), desc="t2i eval", disable=not progress)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        result = pipe(chunk, num_frames=1, num_inference_steps=steps, guidance_scale=guidance, seed=seed + i,
                      output_type="np", progress=False)
        images += [f for f in result.frames]
        bar.update(len(chunk))
    bar.close()
    rows, correct, counts = [], {p: 0 for p in IMAGE_PROBES}, {p: 0 for p in IMAGE_PROBES}
    confusion: dict[str, dict[str, int]] = {}
    for prompt, frames in zip(prompts, images):
        res = probe_video(frames, prompt, world)
        scores = {k: v for k, v in res.scores.items() if k in IMAGE_PROBES}
        for name, s in scores.items():
            counts[name] += 1
            correct[name] += int(s.passed)
        col = res.scores.get("colour")
        if col is not None:
            confusion.setdefault(str(col.expected), {}).setdefault(str(col.detected), 0)
            confusion[str(col.expected)][str(col.detected)] += 1
        rows.append({"prompt": prompt, "passed": all(s.passed for s in scores.values()),
                     "scores": {k: s.to_dict() for k, s in scores.items()}})
    accuracy = {k: correct[k] / counts[k] for k in IMAGE_PROBES if counts[k]}
    report = {"model": str(model), "lora": [{"path": str(p), "scale": s} for p, s in (lora or [])],
              "num_images": len(prompts), "per_prompt": per_prompt, "seed": seed,
              "accuracy": accuracy, "all_probes": float(np.mean([r["passed"] for r in rows])),
              "seconds": round(time.time() - start, 1), "colour_confusion": confusion, "results": rows}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    per_row = 3 * per_prompt * (3 if sizes else 1) * (4 if backgrounds else 1)  # one colour per row
    grid = [np.stack([images[j][0] for j in range(r, min(r + per_row, len(images)))])
            for r in range(0, len(images), per_row)]
    write_contact_sheet(grid, out / "images.png", columns=None)
    return {"report": report, "paths": {"report": out / "report.json", "images": out / "images.png"}}


def format_image_report(report: dict[str, Any]) -> str:
    lines = [f"{'probe':<12} accuracy  (n={report['num_images']})"]
    for name, acc in report["accuracy"].items():
        lines.append(f"{name:<12} {100 * acc:6.1f} %")
    lines.append(f"{'all probes':<12} {100 * report['all_probes']:6.1f} %")
    return "\n".join(lines)
