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


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_shipped_folder_is_complete_and_small(kind):
    folder = EMBEDDED_MODELS / f"shapes_{kind}"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("TextToVideoPipeline" if kind == "t2v" else "ImageToVideoPipeline")
    assert index["vocabulary"] == sorted(vocabulary())
    assert index["defaults"]["num_frames"] == 16 and index["defaults"]["height"] == 64
    for component in index["components"]:
        assert (folder / component).is_dir(), component
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 40e6, f"{folder} is {size / 1e6:.1f} MB"
    card = (folder / "MODEL_CARD.md").read_text()
    for must in ("configs/shapes_vae.yaml", f"configs/shapes_{kind}.yaml", "seen", "held-out", "wall time"):
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
