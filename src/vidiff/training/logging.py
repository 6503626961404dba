"""Seeing a run: CSV + JSONL metric logs, a loss-curve PNG, and TensorBoard when it is installed.

Only the main process writes. On resume the logs are cut back to the checkpoint's step (the steps after it are run
again), so a log always describes one consistent history.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from vidiff.utils.io import atomic_write_text, atomic_write_with

__all__ = ["TrainLogger", "plot_loss_curve", "read_log", "running_mean"]

CSV_NAME = "log.csv"
JSONL_NAME = "log.jsonl"
PLOT_NAME = "loss.png"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``log.csv`` with numbers parsed (empty cells become None)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return rows


def running_mean(values: list[float], window: int) -> list[float]:
    """Centred moving average (the window shrinks at the ends), so the smoothed curve does not lag the raw one."""
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    half = max(window, 1) // 2
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def plot_loss_curve(steps: list[float], losses: list[float], path: str | Path, title: str = "training loss") -> Path:
    """PNG line plot (raw values light, running mean dark) drawn with Pillow, written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, left, right, top, bottom = 900, 420, 70, 20, 36, 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pairs = [(s, v) for s, v in zip(steps, losses) if v is not None and math.isfinite(v)]
    draw.text((left, 10), title, fill="black", font=font)
    if len(pairs) >= 1:
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        smooth = running_mean(ys, max(1, len(ys) // 20))
        lo = min(ys)
        ordered = sorted(ys)
        hi = ordered[min(len(ordered) - 1, int(0.98 * len(ordered)))]  # ignore the first spikes when scaling
        hi = max(hi, max(smooth))
        if hi <= lo:
            hi = lo + 1e-6
        x0, x1 = min(xs), max(xs)
        if x1 <= x0:
            x1 = x0 + 1

        def to_px(x: float, y: float) -> tuple[float, float]:
            px = left + (x - x0) / (x1 - x0) * (W - left - right)
            py = top + (1 - (min(max(y, lo), hi) - lo) / (hi - lo)) * (H - top - bottom)
            return px, py

        for k in range(5):
            y = lo + (hi - lo) * k / 4
            _, py = to_px(x0, y)
            draw.line([(left, py), (W - right, py)], fill=(230, 230, 230))
            draw.text((5, py - 6), f"{y:.4g}", fill="black", font=font)
        for k in range(5):
            x = x0 + (x1 - x0) * k / 4
            px, _ = to_px(x, lo)
            draw.text((px - 10, H - bottom + 6), f"{int(round(x))}", fill="black", font=font)
        draw.text((W // 2 - 15, H - 16), "step", fill="black", font=font)
        if len(pairs) > 1:
            draw.line([to_px(x, y) for x, y in zip(xs, ys)], fill=(170, 190, 230), width=1)
            draw.line([to_px(x, y) for x, y in zip(xs, smooth)], fill=(20, 60, 160), width=2)
        else:
            px, py = to_px(xs[0], ys[0])
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(20, 60, 160))
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    path = Path(path)
    return atomic_write_with(path, lambda tmp: img.save(tmp, format="PNG"))


class TrainLogger:
    """Append-only CSV/JSONL logs (flushed each row), an in-memory loss history for the plot, optional TensorBoard."""

    def __init__(
        self, out_dir: str | Path, columns: list[str], *, enabled: bool = True, resume_step: int = 0,
        tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.csv_path = self.out_dir / CSV_NAME
        self.jsonl_path = self.out_dir / JSONL_NAME
        self.plot_path = self.out_dir / PLOT_NAME
        self.columns = list(columns)
        self.history: list[tuple[float, float]] = []
        self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        new_file = not self.csv_path.exists()
        self._csv = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=self.columns, extrasaction="ignore")
        if new_file:
            self._writer.writeheader()
            self._csv.flush()
        self._jsonl = open(self.jsonl_path, "a")
        self.history = [(r["step"], r["loss"]) for r in read_log(self.csv_path) if r.get("loss") is not None]
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=resume_step + 1)

    def _truncate(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to a run that was interrupted before its next checkpoint)."""
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames or self.columns
                kept = [row for row in reader if row.get("step") and float(row["step"]) <= step]
            if list(header) != self.columns:
                self.columns = list(header)
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.csv_path, buf.getvalue())
        if self.jsonl_path.exists():
            lines = []
            for line in self.jsonl_path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        lines.append(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
            atomic_write_text(self.jsonl_path, "".join(line + "\n" for line in lines))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (round(v, 7) if isinstance(v, float) else v) for k, v in row.items()}
        self._writer.writerow(clean)
        self._csv.flush()
        self._jsonl.write(json.dumps(clean) + "\n")
        self._jsonl.flush()
        if row.get("loss") is not None:
            self.history.append((row["step"], row["loss"]))
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}", value, global_step=int(row["step"]))

    def plot(self, title: str = "training loss") -> Path | None:
        if not self.enabled or not self.history:
            return None
        steps, losses = zip(*self.history)
        return plot_loss_curve(list(steps), list(losses), self.plot_path, title)

    def close(self) -> None:
        if not self.enabled:
            return
        for fh in (self._csv, self._jsonl):
            if not fh.closed:
                fh.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
