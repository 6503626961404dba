"""`vidiff eval`: prompt suites, the --videos mode on ground-truth and corrupted clips, the --model mode with tiny
converted models (text-to-video and image-to-video), and argument errors.

The sub-command is exercised through ``cli_eval.add_parser`` / ``cli_eval.run`` on a local parser, so errors arrive as the
exceptions that ``vidiff.cli.main`` turns into "vidiff eval: error: ..." messages.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lvdm_fixtures import fixture_folders
from PIL import Image

from vidiff import cli_eval
from vidiff.data.shapes import HELDOUT_TRIPLES, TRAIN_TRIPLES, ShapesWorld, parse_caption
from vidiff.eval.probes import segment_frame
from vidiff.eval.report import EvalError
from vidiff.eval.suite import SuiteError, canonical_suite, read_prompt_file, suite_from_file, world_config_from_dict
from vidiff.utils.video import read_video, write_mp4

CANONICAL = re.compile(r"^an? (\w+) (\w+) (moving (left|right|up|down)|standing still)$")
STRIDE = 2
SEED = 5


def run_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vidiff")
    cli_eval.add_parser(parser.add_subparsers(dest="command"))
    return cli_eval.run(parser.parse_args(["eval", *argv]))


def strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def check_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """The runs pass --threads 1 (tiny models are fastest single-threaded on a busy machine); undo it afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------------------------
# suites


def test_canonical_suite_covers_each_split_with_stable_seeds():
    seen = canonical_suite("seen", per_triple=2, seed=1)
    both = canonical_suite("seen,heldout", per_triple=2, seed=1)
    assert len(seen) == 2 * len(TRAIN_TRIPLES) and len(both) == 2 * (len(TRAIN_TRIPLES) + len(HELDOUT_TRIPLES))
    assert seen.splits == ["seen"] and both.splits == ["seen", "heldout"]
    for item in both.items:
        m = CANONICAL.match(item.prompt)
        assert m, item.prompt
        attrs = parse_caption(item.prompt)
        assert (attrs.primary.colour, attrs.primary.shape, attrs.primary.motion) == item.triple
        assert (item.triple in HELDOUT_TRIPLES) == (item.split == "heldout")
    # Seeds depend on (suite seed, triple, repeat) only: not on which other splits or triples are in the suite.
    assert [i.seed for i in both.items[: len(seen)]] == [i.seed for i in seen.items]
    assert len({i.seed for i in both.items}) == len(both)
    subset = canonical_suite("heldout", per_triple=2, seed=1, max_triples=3)
    assert len(subset) == 6 and len({i.triple for i in subset.items}) == 3
    full = {(i.triple, i.key): i.seed for i in both.items}
    assert all(full[(i.triple, i.key)] == i.seed for i in subset.items)
    assert canonical_suite("heldout", seed=2).items[0].seed != canonical_suite("heldout", seed=1).items[0].seed
    # Ground truth: same prompt and key -> same clip; the floor stream is another placement of the same prompt.
    a, b = subset.ground_truth_videos(STRIDE), subset.ground_truth_videos(STRIDE)
    floor = subset.ground_truth_videos(STRIDE, stream=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], floor[0])
    with pytest.raises(SuiteError, match="unknown split"):
        canonical_suite("train")


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na red circle moving left\n\na blue square standing still\n")
    (tmp_path / "p.json").write_text(json.dumps([
        "a red circle moving left", {"prompt": "a cyan triangle moving up", "file": "x.mp4", "stride": 3}]))
    (tmp_path / "m.json").write_text(json.dumps({"a.mp4": "a red circle moving left"}))
    (tmp_path / "p.csv").write_text("file,prompt,split\na.mp4,a red circle moving left,mine\n")
    assert [e.prompt for e in read_prompt_file(tmp_path / "p.txt")] == [
        "a red circle moving left", "a blue square standing still"]
    entries = read_prompt_file(tmp_path / "p.json")
    assert entries[1].file == "x.mp4" and entries[1].stride == 3
    assert read_prompt_file(tmp_path / "m.json")[0].file == "a.mp4"
    suite = suite_from_file(tmp_path / "p.csv", require_files=True)
    assert suite.items[0].split == "mine" and suite.items[0].file == "a.mp4"
    # Without a split column the split follows the main triple (held out of training or not).
    heldout_prompt = f"a {HELDOUT_TRIPLES[0][0]} {HELDOUT_TRIPLES[0][1]} moving {HELDOUT_TRIPLES[0][2]}"
    if HELDOUT_TRIPLES[0][2] == "still":
        heldout_prompt = f"a {HELDOUT_TRIPLES[0][0]} {HELDOUT_TRIPLES[0][1]} standing still"
    (tmp_path / "h.txt").write_text(f"{heldout_prompt}\na red circle moving left\n")
    assert [i.split for i in suite_from_file(tmp_path / "h.txt", per_prompt=2).items] == ["heldout"] * 2 + ["seen"] * 2

    bad = {
        "w.txt": ("a red circle moving left\na purple dragon flying\n", r"line 2.*dragon"),
        "i.txt": ("a red circle\n", "states no motion"),
        "c.csv": ("file,caption\na.mp4,a red circle moving left\n", "'prompt' column"),
        "s.csv": ("file,prompt,stride\na.mp4,a red circle moving left,zero\n", "stride must be an int"),
        "e.txt": ("# nothing\n", "holds no prompts"),
        "x.yaml": ("- a red circle moving left\n", "must end in"),
    }
    for name, (text, match) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SuiteError, match=match):
            suite_from_file(tmp_path / name)
    with pytest.raises(SuiteError, match="no video file"):
        suite_from_file(tmp_path / "p.txt", require_files=True)
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        suite_from_file(tmp_path / "missing.txt")


# --------------------------------------------------------------------------------------------------------------------
# --videos


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A randomly initialised FVD-shapes classifier (the packaged weights are not needed to test the plumbing)."""
    from vidiff.eval.shapes_classifier import ShapesClassifier, ShapesClassifierConfig, save_shapes_classifier

    torch.manual_seed(0)
    return save_shapes_classifier(ShapesClassifier(ShapesClassifierConfig()), tmp_path_factory.mktemp("clf") / "clf")


@pytest.fixture(scope="module")
def video_folders(tmp_path_factory) -> dict[str, Path]:
    """A manifest of canonical prompts and two folders of clips for it: the world's ground truth (as MP4) and a
    corrupted copy (time reversed, colour channels rotated RGB -> GBR, which keeps only white and black)."""
    root = tmp_path_factory.mktemp("videos")
    suite = canonical_suite("seen,heldout", seed=SEED, max_triples=5)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prompt", "split"])
        for i, item in enumerate(suite.items):
            writer.writerow([f"{item.split}/clip_{i}.mp4", item.prompt, item.split])
    listed = suite_from_file(manifest, seed=SEED)
    truth, corrupt = root / "truth", root / "corrupt"
    for item, video in zip(listed.items, listed.ground_truth_videos(STRIDE)):
        for folder, clip in ((truth, video), (corrupt, np.ascontiguousarray(video[::-1][..., [1, 2, 0]]))):
            (folder / item.file).parent.mkdir(parents=True, exist_ok=True)
            write_mp4(clip, folder / item.file, fps=8)
    return {"manifest": manifest, "truth": truth, "corrupt": corrupt}


def _videos_args(folder: Path, manifest: Path, out: Path, classifier: Path) -> list[str]:
    return ["--videos", str(folder), "--prompts", str(manifest), "-o", str(out), "--seed", str(SEED),
            "--stride", str(STRIDE), "--fvd-shapes", "--shapes-classifier", str(classifier), "--threads", "1"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised Hugging Face CLIP folder (no tokenizer files: vidiff's bundled BPE is used)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def truth_report(video_folders, classifier_dir, clip_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("truth_report")
    args = _videos_args(video_folders["truth"], video_folders["manifest"], out, classifier_dir)
    assert run_eval([*args, "--clip", str(clip_dir)]) == 0
    return strict_json(out / "report.json"), out


def test_videos_mode_on_ground_truth(truth_report, capsys):
    report, out = truth_report
    assert set(report["splits"]) == {"seen", "heldout"}
    for split, data in report["splits"].items():
        assert data["num_videos"] == 5
        for probe in ("colour", "shape", "motion", "size", "background", "consistency", "flicker", "passed"):
            assert data["accuracy"][probe] == pytest.approx(1.0), (split, probe)
        fvd = report["metrics"][split]["fvd_shapes"]
        # The clips are the ground truth itself (through MP4): far below the real-vs-real floor.
        assert 0 <= fvd["value"] < 0.2 * fvd["floor"]
        assert fvd["protocol"]["num_real"] == fvd["protocol"]["num_fake"] == 5
        # Per-video metrics match their value on the world's own clips.
        for name in ("frame_consistency_pixel", "clipsim", "frame_consistency_clip"):
            res = report["metrics"][split][name]
            assert res["value"] == pytest.approx(res["reference"], rel=0.02), name
        assert report["metrics"][split]["clipsim"]["protocol"]["num_videos"] == 5
    proto = report["protocol"]
    assert proto["mode"] == "videos" and proto["stride"] == STRIDE and proto["suite"]["seed"] == SEED
    assert proto["suite"]["world"]["height"] == 64 and proto["suite"]["world"]["num_frames"] == 16
    assert proto["probes"]["thresholds"]["min_monotonicity"] == 0.5
    assert len(report["videos"]) == 10 and all(v["passed"] for v in report["videos"])
    assert report["videos"][0]["file"].endswith(".mp4")
    assert check_png(out / "accuracy.png")[0] >= 500
    assert check_png(out / "failures.png")[1] < 100  # nothing failed: a one-line sheet


def test_videos_mode_on_corrupted_clips(video_folders, classifier_dir, truth_report, tmp_path):
    out = tmp_path / "corrupt_report"
    assert run_eval(_videos_args(video_folders["corrupt"], video_folders["manifest"], out, classifier_dir)) == 0
    report, truth = strict_json(out / "report.json"), truth_report[0]
    for split in ("seen", "heldout"):
        acc = report["splits"][split]["accuracy"]
        assert acc["colour"] <= 0.4 and acc["motion"] <= 0.6 and acc["passed"] <= 0.2
        assert acc["shape"] == pytest.approx(1.0)  # neither corruption changes shapes
        assert report["metrics"][split]["fvd_shapes"]["value"] > 10 * truth["metrics"][split]["fvd_shapes"]["value"]
    failing = [v for v in report["videos"] if not v["passed"]]
    assert failing and all(set(v["failed_probes"]) & {"colour", "motion"} for v in failing)
    width, height = check_png(out / "failures.png")
    assert height > 100 * min(len(failing), 12)  # one labelled row of upscaled frames per failing clip


# --------------------------------------------------------------------------------------------------------------------
# --model


@pytest.fixture(scope="module")
def t2v_model(tmp_path_factory) -> Path:
    if not fixture_folders("vc_unet") or not fixture_folders("vae"):
        pytest.skip("vc_unet / vae fixtures not found")
    from tiny_checkpoint import TEXT_HEADS, UNET_HEAD_CHANNELS, save_tiny_checkpoint

    from vidiff.conversion.lvdm import HeadCounts, convert_checkpoint

    root = tmp_path_factory.mktemp("t2v")
    ckpt = save_tiny_checkpoint(root / "tiny.ckpt")
    convert_checkpoint(ckpt, root / "model", heads=HeadCounts(unet_head_channels=UNET_HEAD_CHANNELS,
                                                              text_heads=TEXT_HEADS))
    return root / "model"


SMALL = ["--steps", "2", "--frames", "4", "--height", "32", "--width", "32", "--threads", "1", "--quiet"]


def test_model_mode_tiny_t2v(t2v_model, tmp_path, capsys):
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    out = tmp_path / "eval"
    assert run_eval(["--model", str(t2v_model), "--max-triples", "2", "--seed", "3", "-o", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    report = strict_json(out / "report.json")
    assert str(out / "report.json") in printed and "colour" in printed
    gen = report["protocol"]["generation"]
    assert (gen["num_inference_steps"], gen["num_frames"], gen["height"], gen["width"]) == (2, 4, 32, 32)
    assert gen["guidance_scale"] == 12.0 and gen["eta"] == 1.0  # the model folder's defaults, resolved
    assert gen["fps_conditioning"] == 4  # base fps 16 / the world's largest stride 4
    world = report["protocol"]["suite"]["world"]
    assert (world["num_frames"], world["height"], world["width"]) == (4, 32, 32)
    assert report["protocol"]["model"]["pipeline"] == "TextToVideoPipeline"
    assert "--max-triples 2" in report["protocol"]["reproduce"]
    for split in ("seen", "heldout"):
        data = report["splits"][split]
        assert data["num_videos"] == 2
        assert {"colour", "shape", "motion", "consistency", "flicker", "passed"} <= set(data["accuracy"])
        assert all(0.0 <= a <= 1.0 for a in data["accuracy"].values())
        assert -1.0 <= report["metrics"][split]["frame_consistency_pixel"]["value"] <= 1.0
    assert len(report["videos"]) == 4
    assert all((out / v["file"]).is_file() and isinstance(v["seed"], int) for v in report["videos"])
    with open(out / "videos" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == [v["prompt"] for v in report["videos"]]
    check_png(out / "accuracy.png")
    check_png(out / "failures.png")
    # With --batch-size 1 each video is what the pipeline gives for its prompt and seed.
    first = report["videos"][0]
    pipe = TextToVideoPipeline.from_pretrained(t2v_model)
    frames = pipe(first["prompt"], num_frames=4, height=32, width=32, num_inference_steps=2, fps=4,
                  seed=first["seed"], progress=False).frames[0]
    write_mp4(frames, tmp_path / "direct.mp4", fps=4)
    assert np.array_equal(read_video(out / first["file"])[0], read_video(tmp_path / "direct.mp4")[0])
    # The saved folder evaluates again in --videos mode.
    again = tmp_path / "again"
    assert run_eval(["--videos", str(out / "videos"), "--prompts", str(out / "videos" / "manifest.csv"),
                     "-o", str(again)]) == 0
    assert strict_json(again / "report.json")["splits"]["seen"]["num_videos"] == 2


@pytest.fixture(scope="module")
def i2v_model(tmp_path_factory) -> Path:
    if not fixture_folders("dc_unet") or not fixture_folders("vae"):
        pytest.skip("dc_unet / vae fixtures not found")
    from tiny_i2v_checkpoint import FAMILY, TEXT_HEADS, UNET_HEAD_CHANNELS, save_tiny_i2v_checkpoint

    from vidiff.conversion.lvdm import HeadCounts, convert_checkpoint

    root = tmp_path_factory.mktemp("i2v")
    ckpt = save_tiny_i2v_checkpoint(root / "tiny.ckpt")
    convert_checkpoint(ckpt, root / "model", FAMILY, heads=HeadCounts(unet_head_channels=UNET_HEAD_CHANNELS,
                                                                      text_heads=TEXT_HEADS))
    return root / "model"


def test_model_mode_tiny_i2v(i2v_model, tmp_path):
    out = tmp_path / "eval"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square standing still\n")
    assert run_eval(["--model", str(i2v_model), "--prompts", str(prompts), "-o", str(out), *SMALL]) == 0
    report = strict_json(out / "report.json")
    assert report["protocol"]["model"]["pipeline"] == "ImageToVideoPipeline"
    assert report["protocol"]["generation"]["conditioning_image"] == "the ground truth's first frame"
    seen = report["splits"]["seen"]
    assert seen["counts"]["first_frame"] == seen["counts"]["identity"] == 2
    assert all(0.0 <= a <= 1.0 for a in seen["accuracy"].values())
    assert {"psnr_vs_ground_truth", "ssim_vs_ground_truth"} <= set(report["metrics"]["seen"])
    # first_frame_psnr is frame 0 against the conditioning image: the mean of what the per-video probes measured.
    per_video = [v["probes"]["first_frame"]["detected"]["psnr"] for v in report["videos"] if v["split"] == "seen"]
    first = report["metrics"]["seen"]["first_frame_psnr"]
    assert first["value"] == pytest.approx(np.mean(per_video), abs=1e-6)
    assert first["min"] == pytest.approx(min(per_video), abs=1e-6)
    assert report["metrics"]["seen"]["first_frame_ssim"]["protocol"]["num_frames"] == 1
    with open(out / "videos" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The conditioning image is the ground truth's first frame: it shows the prompt's object.
    image = np.asarray(Image.open(out / "videos" / rows[0]["image"]))
    world = ShapesWorld(world_config_from_dict(report["protocol"]["suite"]["world"]))
    assert [(o.colour, o.shape) for o in segment_frame(image, world)] == [("red", "circle")]


# --------------------------------------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    "argv,error,match",
    [
        (["-o", "OUT"], ValueError, "give --model FOLDER"),
        (["--model", "m", "--videos", "v", "-o", "OUT"], ValueError, "not both"),
        (["--videos", "v", "-o", "OUT"], ValueError, "needs --prompts"),
        (["--model", "m"], ValueError, "-o OUT_DIR"),
        (["--videos", "v", "--prompts", "p.csv", "--steps", "3", "-o", "OUT"], ValueError, "only apply to --model"),
        (["--model", "m", "--suite", "seen", "--prompts", "p.txt", "-o", "OUT"], ValueError, "--suite select"),
        (["--model", "m", "--per-prompt", "2", "-o", "OUT"], ValueError, "use --per-triple"),
        (["--model", "m", "--per-triple", "0", "-o", "OUT"], ValueError, "--per-triple must be >= 1"),
        (["--model", "MISSING", "-o", "OUT"], FileNotFoundError, "model folder not found"),
        (["--videos", "MISSING", "--prompts", "p.csv", "-o", "OUT"], FileNotFoundError, "videos folder not found"),
    ],
)
def test_bad_arguments(argv, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        run_eval(argv)
    assert not (tmp_path / "OUT").exists()


def test_bad_inputs(video_folders, truth_report, tmp_path):
    _, out = truth_report
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_eval(["--videos", str(video_folders["truth"]), "--prompts", str(video_folders["manifest"]), "-o", str(out)])
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,prompt\nnope.mp4,a red circle moving left\n")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        run_eval(["--videos", str(video_folders["truth"]), "--prompts", str(manifest), "-o", str(tmp_path / "o")])
    manifest.write_text("prompt\na red circle moving left\n")
    with pytest.raises(SuiteError, match="manifest that names each video"):
        run_eval(["--videos", str(video_folders["truth"]), "--prompts", str(manifest), "-o", str(tmp_path / "o")])
    first = next(iter(sorted(video_folders["truth"].rglob("*.mp4"))))
    manifest.write_text(f"file,prompt\n{first.relative_to(video_folders['truth'])},a red circle moving left\n")
    with pytest.raises(EvalError, match="largest stride"):
        run_eval(["--videos", str(video_folders["truth"]), "--prompts", str(manifest), "-o", str(tmp_path / "o"),
                  "--stride", "9"])


def test_fvd_shapes_size_mismatch_fails_before_generation(t2v_model, classifier_dir, tmp_path):
    with pytest.raises(EvalError, match="classifier takes 16x64x64"):
        run_eval(["--model", str(t2v_model), "--max-triples", "1", "--fvd-shapes", "--shapes-classifier",
                  str(classifier_dir), "-o", str(tmp_path / "o"), *SMALL])
    assert not (tmp_path / "o").exists()
