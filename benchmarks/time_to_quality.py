"""Probe scores and FVD-shapes against sampling wall time, per sampler and step count, on an embedded default.

Every run generates the same canonical shapes-world suite (same prompts, same seeds) through ``vidiff eval``'s
``evaluate_model`` and times the generation (sampling + decoding) separately from the probes and metrics. The reference
is the official recipe, DDIM with 50 steps; each row prints its speed-up over it. Results go to OUT/results.json, a
table OUT/table.md and a plot OUT/time_to_quality.png.

    python benchmarks/time_to_quality.py -o outputs/ttq                      # embedded T2V default, default runs
    python benchmarks/time_to_quality.py --runs ddim:50,dpmpp_2m:10,unipc:10 --max-triples 8 -o outputs/ttq_quick
    python benchmarks/time_to_quality.py --model src/vidiff/assets/models/shapes_i2v -o outputs/ttq_i2v
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_RUNS = ("ddim:50,ddim:25,euler:10,dpmpp_2m:5,dpmpp_2m:10,dpmpp_2m:15,dpmpp_3m:10,unipc:5,unipc:10,unipc:15,"
                "heun:5,dpmpp_2m_sde:15:eta1,ddim:50:dc3,ddim:50:pab,ddim:25:dc2,dpmpp_2m:10:pab,unipc:10:dc2")
PROBES = ("colour", "shape", "motion", "consistency")
I2V_PROBES = ("first_frame", "identity")  # added when the model animates an image


def parse_runs(text: str) -> list[dict]:
    """``SAMPLER:STEPS[:dcN[/D]][:pab][:etaX]`` per run: dcN is DeepCache every N calls (depth D, default 1), pab the
    pyramid attention broadcast, etaX the noise of a stochastic sampler (default: the model's η)."""
    from vidiff.diffusion.samplers import sampler_names

    runs = []
    for part in text.split(","):
        name, steps, *extras = part.strip().split(":")
        run = {"label": part.strip(), "sampler": name, "steps": int(steps) if steps.isdigit() else 0,
               "deep_cache": None, "deep_cache_depth": 1, "attention_broadcast": False, "eta": None}
        for extra in extras:
            if extra == "pab":
                run["attention_broadcast"] = True
            elif extra.startswith("eta") and extra[3:].replace(".", "", 1).isdigit() and float(extra[3:]) <= 1:
                run["eta"] = float(extra[3:])
            elif extra.startswith("dc") and all(v.isdigit() for v in extra[2:].split("/")):
                interval, _, depth = extra[2:].partition("/")
                run["deep_cache"], run["deep_cache_depth"] = int(interval), int(depth or 1)
            else:
                run["steps"] = 0
        if name not in sampler_names() or run["steps"] < 1:
            raise SystemExit(f"time_to_quality: bad run {part!r}; expected SAMPLER:STEPS[:dcN[/D]][:pab][:etaX] with "
                             f"SAMPLER one of {', '.join(sampler_names())}")
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: the embedded shapes-world text-to-video model)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"SAMPLER:STEPS,... (default {DEFAULT_RUNS})")
    p.add_argument("--split", default="seen", help="canonical split (default seen)")
    p.add_argument("--max-triples", type=int, default=24, help="triples of the split, one video each (default 24)")
    p.add_argument("--spacing", help="timestep spacing for every run (default: the model's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("-o", "--output", required=True, help="output folder")
    args = p.parse_args(argv)
    runs = parse_runs(args.runs)

    import torch

    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.eval.report import GenerationSettings, MetricSettings, evaluate_model
    from vidiff.eval.suite import canonical_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else EMBEDDED_MODELS / "shapes_t2v"
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    suite = canonical_suite(args.split, per_triple=1, seed=0, max_triples=args.max_triples)
    rows = []
    for run in runs:
        name, steps = run["sampler"], run["steps"]
        settings = GenerationSettings(sampler=name, steps=steps, timestep_spacing=args.spacing,
                                      deep_cache=run["deep_cache"], deep_cache_depth=run["deep_cache_depth"],
                                      attention_broadcast=run["attention_broadcast"], eta=run["eta"])
        result = evaluate_model(model, suite, out / run["label"].replace(":", "_").replace("/", "-"),
                                generation=settings,
                                metrics=MetricSettings(fvd_shapes=True), save_videos=False, overwrite=True,
                                progress=False)
        generation = result.report["protocol"]["generation"]["wall_seconds"]
        split = result.report["splits"][args.split]
        fvd = result.report["metrics"][args.split].get("fvd_shapes", {}).get("value")
        probes = PROBES + tuple(k for k in I2V_PROBES if k in split["accuracy"])
        row = {"run": run["label"], "sampler": name, "steps": steps, "seconds": generation,
               "reuse": run["label"].split(":", 2)[2] if run["label"].count(":") > 1 else "",
               **{k: split["accuracy"].get(k) for k in probes}, "fvd_shapes": fvd}
        rows.append(row)
        print(f"{run['label']}: {generation:.1f} s, " + ", ".join(
            f"{k} {row[k]:.3f}" for k in probes if row[k] is not None) + f", FVD-shapes {fvd:.1f}", flush=True)

    ref = next((r for r in rows if r["run"] == "ddim:50"), rows[0])
    probes = PROBES + tuple(k for k in I2V_PROBES if k in rows[0])
    for r in rows:
        r["speedup_vs_reference"] = ref["seconds"] / r["seconds"]
    header = ["sampler", "steps", "reuse", "seconds", f"× vs {ref['run']}", *probes, "FVD-shapes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["sampler"], str(r["steps"]), r["reuse"] or "–", f"{r['seconds']:.1f}",
                 f"{r['speedup_vs_reference']:.2f}"]
        cells += ["–" if r[k] is None else f"{100 * r[k]:.1f}" for k in probes]
        cells.append("–" if r["fvd_shapes"] is None else f"{r['fvd_shapes']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    meta = {"model": str(model.resolve()), "split": args.split, "max_triples": args.max_triples,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "spacing": args.spacing}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "table.md").write_text(table + "\n")
    _plot(rows, out / "time_to_quality.png")
    for name in ("results.json", "table.md", "time_to_quality.png"):
        print(f"wrote {out / name}")
    return 0


COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34)]


def _series(row: dict) -> str:
    return row["sampler"] + (f" {row['reuse']}" if row["reuse"] else "")


def _plot(rows: list[dict], path: Path) -> None:
    """Two panels drawn with Pillow: mean probe accuracy and FVD-shapes against wall time, one colour per sampler."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, pad = 1100, 460, 60
    img = Image.new("RGB", (W, H), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    samplers = list(dict.fromkeys(_series(r) for r in rows))
    xmax = max(r["seconds"] for r in rows) * 1.05
    panels = [("mean probe accuracy", lambda r: sum(r[k] or 0 for k in PROBES) / len(PROBES)),
              ("FVD-shapes (lower is better)", lambda r: r["fvd_shapes"] or 0.0)]
    for k, (title, value) in enumerate(panels):
        x0, x1, y0, y1 = pad + k * W // 2, (k + 1) * W // 2 - 20, 40, H - pad
        values = [value(r) for r in rows]
        lo, hi = min(0.0, min(values)), max(values) * 1.1 or 1.0
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 15), title, fill="black", font=font)
        draw.text(((x0 + x1) // 2 - 60, H - 25), "generation wall time (s)", fill="black", font=font)
        for j in range(5):
            y = y1 - (y1 - y0) * j / 4
            draw.text((x0 - 45, y - 6), f"{lo + (hi - lo) * j / 4:.3g}", fill="black", font=font)
            draw.text((x0 + (x1 - x0) * j / 4 - 8, y1 + 6), f"{xmax * j / 4:.0f}", fill="black", font=font)
        for c, name in enumerate(samplers):
            colour = COLOURS[c % len(COLOURS)]
            mine = sorted((r for r in rows if _series(r) == name), key=lambda r: r["seconds"])
            pts = [(x0 + r["seconds"] / xmax * (x1 - x0), y1 - (value(r) - lo) / (hi - lo) * (y1 - y0)) for r in mine]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for (px, py), r in zip(pts, mine):
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
                draw.text((px + 5, py - 12), str(r["steps"]), fill=colour, font=font)
            if k == 0:
                draw.text((x1 - 90, y0 + 8 + 12 * c), name, fill=colour, font=font)
    img.save(path)


if __name__ == "__main__":
    sys.exit(main())
