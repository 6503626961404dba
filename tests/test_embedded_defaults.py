"""The shipped shapes-world models: `vidiff generate` / `vidiff animate` use them without --model, they are small,
documented, and they do what their model cards claim on a few fixed prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidiff.cli import main as cli_main
from vidiff.cli_common import EMBEDDED_MODELS
from vidiff.data.shapes import ShapesWorldConfig, vocabulary
from vidiff.eval.probes import probe_video
from vidiff.utils.video import read_video

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "vidiff" / "assets" / "examples"
WORLD = ShapesWorldConfig(height=64, width=64, num_frames=16)


@pytest.mark.parametrize("kind", ["t2i", "t2v", "i2v", "univid"])
def test_shipped_folder_is_complete_and_small(kind):
    folder = EMBEDDED_MODELS / f"shapes_{kind}"
    index = json.loads((folder / "model_index.json").read_text())
    classes = {"i2v": "ImageToVideoPipeline", "univid": "UnifiedVideoPipeline"}
    assert index["_class_name"] == classes.get(kind, "TextToVideoPipeline")
    assert index["vocabulary"] == sorted(vocabulary())
    assert index["defaults"]["num_frames"] == (1 if kind == "t2i" else 16) and index["defaults"]["height"] == 64
    for component in index["components"]:
        assert (folder / component).is_dir(), component
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 40e6, f"{folder} is {size / 1e6:.1f} MB"
    card = (folder / "MODEL_CARD.md").read_text()
    musts = ("configs/shapes_vae.yaml", f"configs/shapes_{kind}.yaml", "wall time", "binding")
    if kind != "t2i":
        musts += ("seen", "held-out")
    for must in musts:
        assert must in card, must


def test_generate_without_model_uses_the_embedded_default(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert cli_main(["generate", "a blue dragon moving up", "--steps", "4", "--threads", "1", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "dragon" in captured.err and "blue" not in captured.err.split("effect:")[-1]
    frames, _ = read_video(out)
    assert frames.shape == (16, 64, 64, 3) and frames.std() > 1.0


def test_animate_without_model_keeps_the_first_frame(tmp_path):
    image = EXAMPLES / "red_circle.png"
    out = tmp_path / "anim.mp4"
    assert cli_main(["animate", str(image), "a red circle moving right", "--seed", "0", "--threads", "1",
                     "--sheet", "-o", str(out)]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (16, 64, 64, 3)
    cond = np.asarray(Image.open(image).convert("RGB"))
    result = probe_video(frames, "a red circle moving right", WORLD, condition_image=cond)
    # H.264 costs a little; the model card's >= 30 dB is measured on the uint8 frames before encoding.
    assert result.scores["first_frame"].detected["psnr"] > 24.0, result.scores["first_frame"].reason
    assert result.scores["identity"].passed and result.scores["colour"].passed
    assert (tmp_path / "anim_sheet.png").is_file()


def test_generate_png_uses_the_image_default_and_says_what_the_probe_saw(tmp_path, capsys):
    out = tmp_path / "red.png"
    assert cli_main(["generate", "a large red circle", "--threads", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (64, 64, 3)
    result = probe_video(image[None], "a large red circle", WORLD)
    assert result.scores["colour"].passed, result.scores["colour"].reason
    assert "probe: red circle" in printed


def test_demo_prompt_prints_the_probe_verdict(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert cli_main(["generate", "a blue square moving up", "--threads", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("probe: "))
    assert line.startswith("probe: blue square, moving up ")
    assert not any(c in line for c in "{}[]'"), line  # readable values, not Python reprs
    frames, _ = read_video(out)
    result = probe_video(frames, "a blue square moving up", WORLD, stride=4)
    assert ("\u2713" in line) == result.passed  # the verdict is the probes' own
