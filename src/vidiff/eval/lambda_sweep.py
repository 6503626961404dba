"""UniVid's inference weights measured on the shapes world (design doc U1 and U2).

* :func:`mode_scores`: one model's text-to-video, image-to-video and text+image-to-video modes on fresh canonical
  clips (the prompt is the clip's caption, the image its first frame), scored by the probes against that caption.
* :func:`lambda_sweep`: conflicting pairs (the text names one colour and shape, the image shows another colour), one
  stream's weight swept with the other at 1; the share of clips whose colour (and shape) is the text's or the image's
  at each weight, its rank correlation with the weight (monotone: |ρ| near 1) and where the two curves cross.
* :func:`write_sweep`: the JSON, a Markdown table and the plot (``lambda_sweep.png``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig, parse_caption
from vidiff.eval.probes import probe_video
from vidiff.utils.io import atomic_write_text, atomic_write_with
from vidiff.utils.video import batch_to_uint8_frames

MODES = ("t2v", "i2v", "ti2v")
MODE_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video", "ti2v": "text+image-to-video"}


SPLIT_WORLDS = {"seen": "train", "heldout": "heldout"}  # eval split -> the shapes world's split of object triples


def canonical_clips(n: int, seed: int, num_frames: int = 16, size: int = 64, split: str = "seen"):
    """``n`` one-object clips with canonical captions ("a {colour} {shape} moving {direction}") of a seeded world,
    their objects from the training triples (``seen``) or the held-out ones (``heldout``)."""
    if split not in SPLIT_WORLDS:
        raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLIT_WORLDS)}")
    world = ShapesWorldConfig(height=size, width=size, num_frames=num_frames, second_object_prob=0.0, seed=seed,
                              split=SPLIT_WORLDS[split], phrasings=("canonical",))
    ds = ShapesVideoDataset(world, length=n, ground_truth=False)
    items = [ds[i] for i in range(n)]
    return world, torch.stack([it["video"] for it in items]), [it["caption"] for it in items]


def _clip_shape(generate: dict[str, Any]) -> tuple[int, int]:
    """(frames, size) of the clips to compare with: those the pipeline is asked to generate (square)."""
    height, width = int(generate.get("height") or 64), int(generate.get("width") or 64)
    if height != width:
        raise ValueError(f"the shapes-world clips are square: got height {height}, width {width}")
    return int(generate.get("num_frames") or 16), height


def _probe(frames: np.ndarray, captions: list[str], world, images: np.ndarray | None) -> list[dict[str, Any]]:
    out = []
    for i, (video, caption) in enumerate(zip(frames, captions)):
        result = probe_video(video, caption, world, condition_image=None if images is None else images[i], stride=1)
        out.append({name: (s.passed, s.detected) for name, s in result.scores.items()})
    return out


def _share(rows: list[dict], name: str) -> float:
    hits = [bool(r[name][0]) for r in rows if name in r]
    return 100.0 * float(np.mean(hits)) if hits else float("nan")


def mode_scores(pipe, samples: int = 12, clip_seed: int = 4321, modes: tuple[str, ...] = MODES,
                split: str = "seen", **generate: Any) -> dict[str, dict[str, float]]:
    """Probe pass rates (%) of each mode: colour, shape, motion against the caption; identity and first_frame against
    the conditioning image where there is one."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}: choose from {', '.join(MODES)}")
    world, videos, captions = canonical_clips(samples, clip_seed, *_clip_shape(generate), split=split)
    first, first_u8 = videos[:, :, 0], batch_to_uint8_frames(videos)[:, 0]
    out = {}
    for mode in modes:
        prompt = None if mode == "i2v" else captions
        image = None if mode == "t2v" else first
        frames = pipe(prompt, image, **generate).frames
        rows = _probe(frames, captions, world, None if image is None else first_u8)
        out[mode] = {k: _share(rows, k) for k in ("colour", "shape", "motion", "identity", "first_frame")
                     if any(k in r for r in rows)}
    return out


def _spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _crossover(weights: list[float], a: list[float], b: list[float]) -> float | None:
    """The weight where ``a`` - ``b`` first takes the sign opposite to its first nonzero sign (linearly interpolated
    between the last point on one side and the first on the other), or None when it never does."""
    d = [p - q for p, q in zip(a, b)]
    signs = [(i, math.copysign(1, v)) for i, v in enumerate(d) if v != 0 and math.isfinite(v)]
    if not signs:
        return None
    last_i, first = signs[0]
    for i, sign in signs[1:]:
        if sign != first:
            return weights[last_i] + (weights[i] - weights[last_i]) * d[last_i] / (d[last_i] - d[i])
        last_i = i
    return None


@dataclass
class SweepResult:
    stream: str  # "image": λ_v swept at λ_t = 1; "text": λ_t swept at λ_v = 1
    weights: list[float]
    rows: list[dict[str, float]] = field(default_factory=list)
    samples: int = 0
    seed: int = 0

    def curve(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]

    @property
    def summary(self) -> dict[str, Any]:
        own = "colour_is_image" if self.stream == "image" else "colour_is_text"
        return {"spearman_colour_follows_swept_stream": _spearman(self.weights, self.curve(own)),
                "crossover_colour": _crossover(self.weights, self.curve("colour_is_image"),
                                               self.curve("colour_is_text"))}


def conflict_pairs(samples: int, seed: int, num_frames: int = 16, size: int = 64):
    """Captions and first-frame images of canonical clips, the images re-paired so each shows another colour than its
    caption names (and often another shape)."""
    world, videos, captions = canonical_clips(samples, seed, num_frames, size)
    attrs = [parse_caption(c).primary for c in captions]
    partner = [next((j for j in range(1, len(attrs)) if attrs[(i + j) % len(attrs)].colour != a.colour), None)
               for i, a in enumerate(attrs)]
    rows = [i for i, j in enumerate(partner) if j is not None]
    if not rows:
        raise ValueError(f"no conflicting pair among {samples} clips: use more samples")
    other = [(i + partner[i]) % len(attrs) for i in rows]
    return (world, [captions[i] for i in rows], videos[other, :, 0], [attrs[i] for i in rows],
            [attrs[j] for j in other])


def lambda_sweep(pipe, weights: list[float], stream: str = "image", samples: int = 12, clip_seed: int = 4321,
                 **generate: Any) -> SweepResult:
    """Sweep one stream's weight on conflicting text/image pairs, the other at 1 (design doc U2). ``clip_seed`` seeds
    the world the pairs come from; ``generate`` goes to the pipeline (its ``seed`` is the sampling seed)."""
    if stream not in ("image", "text"):
        raise ValueError(f"the swept stream is 'image' or 'text', got {stream!r}")
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad or not weights:
        raise ValueError(f"sweep weights must be finite and >= 0, got {weights}")
    world, captions, images, text_attrs, image_attrs = conflict_pairs(samples, clip_seed, *_clip_shape(generate))
    result = SweepResult(stream, [float(w) for w in weights], samples=len(captions), seed=clip_seed)
    for w in result.weights:
        scales = {"image_scale": w, "text_scale": 1.0} if stream == "image" else {"text_scale": w, "image_scale": 1.0}
        if scales["image_scale"] == 0:  # the T2V corner: the pipeline refuses weights on an absent image, pass none
            frames = pipe(captions, None, **generate).frames
        elif scales["text_scale"] == 0:
            frames = pipe(None, images, **generate).frames
        else:
            frames = pipe(captions, images, **scales, **generate).frames
        rows = _probe(frames, captions, world, None)
        colours = [r["colour"][1] if "colour" in r else None for r in rows]
        shapes = [r["shape"][1] if "shape" in r else None for r in rows]
        result.rows.append({
            "weight": w,
            "colour_is_text": 100.0 * float(np.mean([c == t.colour for c, t in zip(colours, text_attrs)])),
            "colour_is_image": 100.0 * float(np.mean([c == v.colour for c, v in zip(colours, image_attrs)])),
            "shape_is_text": 100.0 * float(np.mean([s == t.shape for s, t in zip(shapes, text_attrs)])),
            "shape_is_image": 100.0 * float(np.mean([s == v.shape for s, v in zip(shapes, image_attrs)])),
            "motion_is_text": _share(rows, "motion"),
        })
    return result


def sweep_table(result: SweepResult) -> str:
    name = "λ_v (λ_t = 1)" if result.stream == "image" else "λ_t (λ_v = 1)"
    lines = [f"| {name} | colour = text % | colour = image % | shape = text % | shape = image % | motion = text % |",
             "|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['weight']:g} | {r['colour_is_text']:.1f} | {r['colour_is_image']:.1f} | "
                     f"{r['shape_is_text']:.1f} | {r['shape_is_image']:.1f} | {r['motion_is_text']:.1f} |")
    s = result.summary
    rho, cross = s["spearman_colour_follows_swept_stream"], s["crossover_colour"]
    lines += ["", f"Spearman ρ (colour follows the swept stream vs weight): {rho:.2f}; colour crossover: "
              + ("none in the range" if cross is None else f"at {cross:.2f}")]
    return "\n".join(lines) + "\n"


_CURVES = (("colour_is_text", (31, 119, 180), False), ("colour_is_image", (255, 127, 14), False),
           ("shape_is_text", (31, 119, 180), True), ("shape_is_image", (255, 127, 14), True),
           ("motion_is_text", (44, 160, 44), False))


def plot_sweep(result: SweepResult, path: Path) -> Path:
    """Share of clips (%) whose colour / shape follow the text or the image, against the swept weight (Pillow PNG:
    solid colour, dotted shape; blue text, orange image, green motion = text)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, left, right, top, bottom = 760, 420, 60, 190, 36, 44
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    axis = "λ_v (λ_t = 1)" if result.stream == "image" else "λ_t (λ_v = 1)"
    draw.text((left, 10), f"UniVid stream weights on {result.samples} conflicting text/image pairs", fill="black",
              font=font)
    x0, x1 = min(result.weights), max(result.weights)
    x1 = x1 if x1 > x0 else x0 + 1.0

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (W - left - right), top + (1 - y / 100.0) * (H - top - bottom))

    for k in range(5):
        _, py = to_px(x0, 25.0 * k)
        draw.line([(left, py), (W - right, py)], fill=(230, 230, 230))
        draw.text((left - 30, py - 6), f"{25 * k}%", fill="black", font=font)
    for w in result.weights:
        px, _ = to_px(w, 0.0)
        draw.text((px - 8, H - bottom + 6), f"{w:g}", fill="black", font=font)
    draw.text((left + (W - left - right) // 2 - 40, H - 18), axis.replace("λ", "lambda"), fill="black", font=font)
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for k, (key, colour, dotted) in enumerate(_CURVES):
        pts = [to_px(w, v) for w, v in zip(result.weights, result.curve(key)) if math.isfinite(v)]
        for a, b in zip(pts, pts[1:]):
            if dotted:  # dashes: every other tenth of the segment
                for i in range(0, 10, 2):
                    t0, t1 = i / 10, (i + 1) / 10
                    draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                               (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=colour, width=2)
            else:
                draw.line([a, b], fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 8 + 16 * k
        draw.line([(W - right + 12, ly + 6), (W - right + 36, ly + 6)], fill=colour, width=1 if dotted else 3)
        draw.text((W - right + 42, ly), key.replace("_", " ") + (" (dashed)" if dotted else ""), fill="black",
                  font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def write_sweep(out_dir: Path, sweeps: list[SweepResult], modes: dict[str, dict[str, dict[str, float]]] | None = None,
                meta: dict[str, Any] | None = None) -> list[Path]:
    """``lambda_sweep.json``, ``lambda_sweep.md`` and one plot per swept stream; ``modes`` is split -> mode -> probe
    pass rates. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**(meta or {}), "modes": modes or {},
              "sweeps": [{**asdict(s), "summary": s.summary} for s in sweeps]}
    paths = [out_dir / "lambda_sweep.json", out_dir / "lambda_sweep.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=2))
    md = []
    if modes:
        md += ["| split | mode | colour % | shape % | motion % | identity % | first frame % |",
               "|---|---|---|---|---|---|---|"]
        for split, by_mode in modes.items():
            for mode, s in by_mode.items():
                md.append(f"| {split} | {mode} | " + " | ".join(
                    f"{s.get(k, float('nan')):.1f}" for k in ("colour", "shape", "motion", "identity", "first_frame"))
                    + " |")
        md.append("")
    for s in sweeps:
        md.append(sweep_table(s))
        paths.append(plot_sweep(s, out_dir / f"lambda_sweep_{s.stream}.png"))
    atomic_write_text(paths[1], "\n".join(md))
    return paths
