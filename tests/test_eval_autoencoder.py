"""`vidiff eval --autoencoder`: the shapes-world scores of ground-truth clips round-tripped through an autoencoder.

A tiny randomly initialised LDMAutoencoderKL (factor 2) stands in for a trained one: its reconstructions are noise, so
the probes must fail on them while the very clips it was given pass, and the report's reconstruction PSNR / SSIM must
equal an independent round trip (diffusers' encode / decode called directly) of the floor-stream ground truth.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff import cli
from vidiff.data.shapes import render
from vidiff.eval.autoencoder_eval import evaluate_autoencoder
from vidiff.eval.probes import probe_batch
from vidiff.eval.report import EvalError
from vidiff.eval.suite import FLOOR_STREAM, canonical_suite
from vidiff.metrics.image_quality import ssim

SEED = 3
STRIDE = 2
WORLD = {"type": "shapes", "height": 32, "width": 32, "num_frames": 8, "strides": [1, 2], "length": 10, "seed": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks are fastest single-threaded on a busy machine; undo it afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ae_folder(tmp_path_factory) -> Path:
    """What `vidiff train` exports for an autoencoder: config.json + weights + training.json naming its world."""
    from vidiff.models.autoencoder import LDMAutoencoderKL

    torch.manual_seed(0)
    vae = LDMAutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                           sample_size=32, scaling_factor=0.5)
    folder = tmp_path_factory.mktemp("vae") / "model"
    vae.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"step": 7, "config": {"task": "autoencoder",
                                                                           "data": {"videos": WORLD}}}))
    return folder


@pytest.fixture(scope="module")
def suite():
    return canonical_suite("seen,heldout", seed=SEED, max_triples=4)


@pytest.fixture(scope="module")
def result(ae_folder, suite, tmp_path_factory):
    return evaluate_autoencoder(ae_folder, suite, tmp_path_factory.mktemp("ae_eval"), stride=STRIDE, batch_size=3,
                                progress=False)


def _independent_round_trip(folder: Path, suite, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 inputs, uint8 reconstructions) of the floor-stream ground truth, without vidiff's video helpers."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder).eval()
    inputs, recons = [], []
    with torch.no_grad():
        for item in suite.items:
            sample = render(suite.ground_truth_spec(item, stride, FLOOR_STREAM))
            frames = sample.video.permute(1, 0, 2, 3)  # (t, 3, h, w): each frame is an image
            decoded = vae.decode(vae.encode(frames).latent_dist.mode()).sample
            recons.append(((decoded.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
            inputs.append(sample.uint8_frames().numpy())
    return np.stack(inputs), np.stack(recons)


def _psnr_per_clip(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2).mean(axis=(2, 3, 4))  # (n, t)
    return (10 * np.log10(1.0 / mse)).mean(axis=1)


def test_reconstruction_psnr_matches_an_independent_round_trip(result, ae_folder, suite):
    report = result.report
    world = report["protocol"]["suite"]["world"]
    assert (world["num_frames"], world["height"], world["width"]) == (8, 32, 32)  # from training.json
    assert report["protocol"]["world_config_source"] == "the folder's training record"
    assert report["protocol"]["source"] == "autoencoder round trip"
    assert report["protocol"]["autoencoder"]["training_step"] == 7
    assert report["protocol"]["autoencoder"]["spatial_factor"] == 2
    assert "reconstructed" in report["protocol"]["probes"]["input"]
    assert report["protocol"]["reproduce"].startswith(f"vidiff eval --autoencoder {ae_folder.resolve()} ")

    world_suite = suite.with_world(_world_from(report))
    inputs, recons = _independent_round_trip(ae_folder, world_suite, STRIDE)
    assert not np.array_equal(inputs, np.stack(world_suite.ground_truth_videos(STRIDE)))  # stream 1, not stream 0
    for split in ("seen", "heldout"):
        idx = suite.by_split(split)
        per_clip = _psnr_per_clip(inputs[idx], recons[idx])
        got = report["metrics"][split]["reconstruction_psnr"]
        assert got["value"] == pytest.approx(per_clip.mean(), rel=1e-4)
        assert got["min"] == pytest.approx(per_clip.min(), rel=1e-4)
        assert got["protocol"]["num_videos"] == len(idx) == 4
        as_float = [torch.from_numpy(x[idx]).double().permute(0, 1, 4, 2, 3) / 255 for x in (inputs, recons)]
        per_clip_ssim = ssim(as_float[1], as_float[0], 1.0).mean(dim=1).numpy()
        got = report["metrics"][split]["reconstruction_ssim"]
        assert got["value"] == pytest.approx(per_clip_ssim.mean(), abs=1e-4)
        assert got["min"] == pytest.approx(per_clip_ssim.min(), abs=1e-4)


def _world_from(report: dict):
    from vidiff.eval.suite import world_config_from_dict

    return world_config_from_dict(report["protocol"]["suite"]["world"])


def test_probes_fail_on_a_random_autoencoder_but_pass_on_its_inputs(result, suite):
    report = result.report
    world = _world_from(report)
    truth = suite.with_world(world).ground_truth_videos(STRIDE, stream=FLOOR_STREAM)
    for split in ("seen", "heldout"):
        idx = suite.by_split(split)
        inputs = probe_batch([truth[i] for i in idx], [suite.items[i].prompt for i in idx], world,
                             strides=[STRIDE] * len(idx))
        assert inputs.accuracy["colour"] == pytest.approx(1.0) and inputs.pass_rate == pytest.approx(1.0)
        acc = report["splits"][split]["accuracy"]
        assert acc["colour"] <= 0.5 and acc["passed"] == 0.0
    assert not any(v["passed"] for v in report["videos"])


def test_model_folder_uses_its_vae(result, ae_folder, suite, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ae_folder, model / "vae", ignore=shutil.ignore_patterns("training.json"))
    training = json.loads((ae_folder / "training.json").read_text())
    (model / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoPipeline", "training": training}))
    report = evaluate_autoencoder(model, suite, tmp_path / "out", stride=STRIDE, batch_size=3, progress=False).report
    assert report["protocol"]["autoencoder"]["vae_folder"] == str((model / "vae").resolve())
    assert report["protocol"]["suite"]["world"] == result.report["protocol"]["suite"]["world"]
    for split in ("seen", "heldout"):
        for name in ("reconstruction_psnr", "reconstruction_ssim"):
            assert report["metrics"][split][name]["value"] == pytest.approx(
                result.report["metrics"][split][name]["value"], rel=1e-6)
    (model / "vae" / "config.json").unlink()
    with pytest.raises(EvalError, match="without a vae/ subfolder"):
        evaluate_autoencoder(model, suite, tmp_path / "out2", progress=False)
    with pytest.raises(EvalError, match="spatial factor 2"):
        from vidiff.data.shapes import ShapesWorldConfig

        evaluate_autoencoder(ae_folder, suite, tmp_path / "out3", world=ShapesWorldConfig(height=33, width=33),
                             progress=False)


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(["eval", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_errors(ae_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    ae = str(ae_folder)
    cases = [
        (["--model", "m", "--autoencoder", ae, "-o", "OUT"], "not both --model and --autoencoder"),
        (["--autoencoder", ae, "--steps", "3", "-o", "OUT"], "--steps only apply to --model"),
        (["--autoencoder", ae, "--frames", "4", "--height", "16", "-o", "OUT"], "--frames, --height only apply"),
        (["--autoencoder", ae, "--dtype", "bf16", "-o", "OUT"], "--dtype only applies to --model"),
        (["--autoencoder", ae, "--no-videos", "-o", "OUT"], "--no-videos only applies to --model"),
        (["--autoencoder", ae, "--per-prompt", "2", "-o", "OUT"], "use --per-triple"),
        (["--autoencoder", "empty", "-o", "OUT"], "empty is not an autoencoder folder"),
        (["--autoencoder", "unet", "-o", "OUT"], "describes a UNet3DConditionModel, not an autoencoder"),
        (["--autoencoder", "missing", "-o", "OUT"], "autoencoder folder not found"),
    ]
    for argv, message in cases:
        rc, out, err = _cli(argv, capsys)
        assert rc == 2, argv
        assert err.startswith("vidiff eval: error: ") and message in err, (argv, err)
    assert not (tmp_path / "OUT").exists()


def test_cli_end_to_end(ae_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    rc, printed, _ = _cli(["--autoencoder", str(ae_folder), "--max-triples", "2", "--seed", str(SEED), "--threads",
                           "1", "--quiet", "-o", str(out)], capsys)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert {s: d["num_videos"] for s, d in report["splits"].items()} == {"seen": 2, "heldout": 2}
    assert report["protocol"]["stride"] == 2  # the training world's largest stride
    assert "--max-triples 2" in report["protocol"]["reproduce"]
    assert report["files"] == {"report": "report.json", "accuracy": "accuracy.png", "failures": "failures.png"}
    for name in ("accuracy.png", "failures.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    psnr = report["metrics"]["seen"]["reconstruction_psnr"]
    assert "colour" in printed and "reconstruction_psnr" in printed and "reconstruction_ssim" in printed
    assert f"{psnr['value']:.4g} (min {psnr['min']:.4g})" in printed
    assert str(out / "report.json") in printed and "evaluated 4 videos" in printed
    # A second run refuses to replace the report unless asked.
    rc, _, err = _cli(["--autoencoder", str(ae_folder), "--max-triples", "2", "--quiet", "-o", str(out)], capsys)
    assert rc == 2 and "--overwrite" in err
