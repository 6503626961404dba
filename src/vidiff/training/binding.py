"""Is the model learning its conditioning? The binding gap and implicit classification, measured during training.

A falling loss can hide a model that ignores its text: on the shapes world most of every frame is background, so a
model that learns the background word and "some object" lowers the loss a lot while never binding colour, shape or
motion words to the object. The probe here makes that visible within minutes.

On a fixed held-out batch (fixed clips, noise and timesteps) it computes the denoising loss under the true
conditioning and under conditionings that differ in one attribute (one caption word swapped: colour, shape, motion,
size, background; for image-to-video the conditioning image swapped with another clip's). Per attribute:

* ``gap`` = mean over clips and timesteps of (mean loss of the swapped versions / loss of the true version − 1), in
  percent: how much worse the model denoises when told one wrong word. 0 % means the word is ignored. Each timestep
  counts equally: the loss at high noise is several times that at mid noise, and averaging losses before the ratio would
  hide the mid-noise steps where an object's shape is decided.
* ``accuracy``: the fraction of clips whose true value gives the lowest loss among all values of the attribute
  (implicit classification, as in "your diffusion model is secretly a zero-shot classifier"), voting with each
  timestep's losses relative to their mean over the values. Chance is 1/#values.

Captions are the world's canonical phrasing, so a swap changes exactly one word. Clips without a parseable closed
vocabulary (CSV datasets) get the two attribute-free checks only: ``caption`` (another clip's caption) and ``empty``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from vidiff.training.config import BINDING_ATTRIBUTES
from vidiff.utils.io import atomic_write_text

__all__ = ["BINDING_ATTRIBUTES", "BindingBatch", "BindingProbe", "BindingResult", "plot_binding"]

CSV_NAME = "binding.csv"
PLOT_NAME = "binding.png"

# loss_fn(latents (n, c, t, h, w), noise, timesteps (n,), captions, fps (n,), images (n, 3, H, W) or None,
#         latent index of the conditioning frame per row) -> per-row losses (n,)
LossFn = Callable[..., torch.Tensor]


@dataclass
class BindingBatch:
    """The fixed held-out clips: scaled latents, their captions' attributes (or None) and conditioning."""

    latents: torch.Tensor  # (n, c, t, h, w)
    captions: list[str]
    attributes: list[Any] | None  # CaptionAttributes per clip (shapes world) or None
    fps: torch.Tensor  # (n,)
    images: torch.Tensor | None = None  # (n, 3, H, W) conditioning frames (image-to-video)


@dataclass
class BindingResult:
    step: int
    gap: dict[str, float]  # percent
    accuracy: dict[str, float | None]  # fraction; None where there is no classification (caption/empty/image)
    chance: dict[str, float | None]
    loss_true: float

    def describe(self) -> str:
        parts = []
        for name, gap in self.gap.items():
            acc = self.accuracy.get(name)
            parts.append(f"{name} {gap:+.1f}%" + (f" acc {acc:.2f}" if acc is not None else ""))
        return "; ".join(parts)

    def ignored(self, threshold: float = 1.0) -> list[str]:
        """Attributes whose swap changes the loss by less than ``threshold`` percent."""
        return [name for name, gap in self.gap.items() if name not in ("empty",) and gap < threshold]


def _swaps(attrs: Any, attribute: str) -> tuple[list[Any], int] | None:
    """Every value of one attribute as CaptionAttributes (the true one included) and the true one's position."""
    from vidiff.data.shapes_vocab import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES

    obj = attrs.primary
    if attribute == "background":
        values = list(BACKGROUNDS)
        return [replace(attrs, background=v) for v in values], values.index(attrs.background)
    if attribute == "motion":
        if obj.motion is None:
            return None
        values = list(MOTIONS)
        out = [replace(attrs, primary=replace(obj, motion=v, speed="normal" if v == "still" else obj.speed))
               for v in values]
        return out, values.index(obj.motion)
    options = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}[attribute]
    values = list(options)
    return [replace(attrs, primary=replace(obj, **{attribute: v})) for v in values], values.index(getattr(obj, attribute))


class BindingProbe:
    """Computes :class:`BindingResult` for a model at a step and keeps the history in ``binding.csv``."""

    def __init__(self, batch: BindingBatch, timesteps: Sequence[int], attributes: Sequence[str], seed: int = 0,
                 chunk: int = 16) -> None:
        self.batch = batch
        self.timesteps = [int(t) for t in timesteps]
        gen = torch.Generator().manual_seed(seed)
        self.noise = [torch.randn(batch.latents.shape, generator=gen) for _ in self.timesteps]
        self.chunk = chunk
        wanted = list(attributes)
        if batch.attributes is None:
            wanted = [a for a in wanted if a in ("caption", "empty", "image")]
        if batch.images is None:
            wanted = [a for a in wanted if a != "image"]
        if batch.attributes is not None and batch.attributes[0].is_image:
            wanted = [a for a in wanted if a != "motion"]
        if len(batch.captions) < 2:
            wanted = [a for a in wanted if a not in ("caption", "image")]
        self.attributes = wanted

    def _losses(self, loss_fn: LossFn, captions: list[str], images: torch.Tensor | None, rows: list[int]) -> torch.Tensor:
        """Loss of each listed row at each fixed timestep, (rows, timesteps), under the given captions/images."""
        b = self.batch
        out = torch.zeros(len(rows), len(self.timesteps))
        for start in range(0, len(rows), self.chunk):
            sel = rows[start:start + self.chunk]
            idx = torch.tensor(sel)
            caps = captions[start:start + self.chunk]
            imgs = images[start:start + self.chunk] if images is not None else None
            for k, (t, noise) in enumerate(zip(self.timesteps, self.noise)):
                ts = torch.full((len(sel),), t, dtype=torch.long)
                out[start:start + len(sel), k] = loss_fn(b.latents[idx], noise[idx], ts, caps, b.fps[idx],
                                                         imgs).float().cpu()
        return out

    @torch.no_grad()
    def run(self, loss_fn: LossFn, step: int) -> BindingResult:
        from vidiff.data.shapes_vocab import caption_text

        b = self.batch
        n = len(b.captions)
        rows = list(range(n))
        true = self._losses(loss_fn, b.captions, b.images, rows)
        gap: dict[str, float] = {}
        acc: dict[str, float | None] = {}
        chance: dict[str, float | None] = {}
        for name in self.attributes:
            if name in ("caption", "empty", "image"):
                if name == "caption":
                    other = self._losses(loss_fn, [b.captions[(i + 1) % n] for i in rows], b.images, rows)
                elif name == "empty":
                    other = self._losses(loss_fn, [""] * n, b.images, rows)
                else:
                    other = self._losses(loss_fn, b.captions, b.images.roll(1, dims=0), rows)
                gap[name] = float(((other / true) - 1).mean() * 100)
                acc[name], chance[name] = float(((other / true).mean(1) > 1).float().mean()), 0.5
                continue
            phrasing = "image_canonical" if b.attributes[0].is_image else "canonical"
            caps, owner, true_pos = [], [], []
            for i, attrs in enumerate(b.attributes):
                variants, pos = _swaps(attrs, name)
                true_pos.append(pos)
                for j, v in enumerate(variants):
                    if j != pos:
                        caps.append(caption_text(v, phrasing))
                        owner.append(i)
            imgs = b.images[torch.tensor(owner)] if b.images is not None else None
            swapped = self._losses(loss_fn, caps, imgs, owner)
            values = len(_swaps(b.attributes[0], name)[0])
            table = torch.full((n, values, len(self.timesteps)), float("nan"))
            k = 0
            for i, pos in enumerate(true_pos):
                for j in range(values):
                    if j == pos:
                        table[i, j] = true[i]
                    else:
                        table[i, j] = swapped[k]
                        k += 1
            others = (table.sum(1) - true) / (values - 1)
            gap[name] = float(((others / true) - 1).mean() * 100)
            # each timestep's losses relative to their mean over the values, so no timestep dominates the vote
            score = (table / table.mean(1, keepdim=True)).sum(2)
            acc[name] = float((score.argmin(1) == torch.tensor(true_pos)).float().mean())
            chance[name] = 1.0 / values
        return BindingResult(step, gap, acc, chance, float(true.mean()))


# ---------------------------------------------------------------------------------------------------------- logging


def append_binding_csv(folder: Path, result: BindingResult) -> Path:
    """Add one evaluation to ``binding.csv`` (rows step, attribute, gap_percent, accuracy, chance, loss_true)."""
    path = Path(folder) / CSV_NAME
    rows = read_binding_csv(path)
    rows = [r for r in rows if int(r["step"]) < result.step]
    for name in result.gap:
        rows.append({"step": result.step, "attribute": name, "gap_percent": round(result.gap[name], 4),
                     "accuracy": "" if result.accuracy[name] is None else round(result.accuracy[name], 4),
                     "chance": "" if result.chance[name] is None else round(result.chance[name], 4),
                     "loss_true": round(result.loss_true, 6)})
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "attribute", "gap_percent", "accuracy", "chance", "loss_true"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def read_binding_csv(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def truncate_binding_csv(folder: Path, step: int) -> None:
    """Drop evaluations after ``step`` (a resumed run measures them again)."""
    path = Path(folder) / CSV_NAME
    rows = read_binding_csv(path)
    if not rows:
        return
    kept = [r for r in rows if int(r["step"]) <= step]
    if len(kept) != len(rows):
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, buf.getvalue())


_COLOURS = {"colour": (214, 39, 40), "shape": (31, 119, 180), "motion": (44, 160, 44), "size": (148, 103, 189),
            "background": (140, 86, 75), "image": (255, 127, 14), "caption": (127, 127, 127), "empty": (188, 189, 34)}


def plot_binding(folder: Path, title: str = "binding") -> Path | None:
    """``binding.png``: the gap (left panel) and the implicit-classification accuracy (right) per attribute vs step."""
    from PIL import Image, ImageDraw, ImageFont

    from vidiff.utils.io import atomic_write_with

    rows = read_binding_csv(Path(folder) / CSV_NAME)
    if not rows:
        return None
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    for r in rows:
        acc = float(r["accuracy"]) if r["accuracy"] not in ("", None) else None
        series.setdefault(r["attribute"], []).append((float(r["step"]), float(r["gap_percent"]), acc))
    W, H, pad = 1000, 420, 56
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((pad, 8), f"{title}: loss gap when one word is swapped (left), implicit classification (right)",
              fill="black", font=font)
    steps = [p[0] for pts in series.values() for p in pts]
    s_lo, s_hi = min(steps), max(steps)
    s_hi = s_hi if s_hi > s_lo else s_lo + 1
    gaps = [p[1] for pts in series.values() for p in pts]
    g_lo, g_hi = min(0.0, min(gaps)), max(1.0, max(gaps))
    panels = [(pad, 40, W // 2 - 20, H - 40, g_lo, g_hi, 1, "gap %"), (W // 2 + pad, 40, W - 20, H - 40, 0.0, 1.0, 2,
                                                                         "accuracy")]
    for x0, y0, x1, y1, lo, hi, col, label in panels:
        draw.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
        for frac in (0.0, 0.5, 1.0):
            v = lo + frac * (hi - lo)
            y = y1 - frac * (y1 - y0)
            draw.text((x0 - 50, y - 6), f"{v:.3g}", fill="black", font=font)
        draw.text((x0, y1 + 6), f"step {s_lo:.0f} .. {s_hi:.0f}   ({label})", fill="black", font=font)
        for k, (name, pts) in enumerate(series.items()):
            colour = _COLOURS.get(name, (0, 0, 0))
            xy = [(x0 + (p[0] - s_lo) / (s_hi - s_lo) * (x1 - x0), y1 - (p[col] - lo) / (hi - lo) * (y1 - y0))
                  for p in pts if p[col] is not None and math.isfinite(p[col])]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            if col == 1:
                draw.text((x0 + 6 + 70 * (k % 6), y0 + 4 + 12 * (k // 6)), name, fill=colour, font=font)
    path = Path(folder) / PLOT_NAME
    atomic_write_with(path, lambda tmp: img.save(tmp, format="PNG"))
    return path
