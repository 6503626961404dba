"""The command line under bad input: fast one-line errors, no tracebacks, nothing half-written.

Argument errors must not wait for torch (checked by the modules a fresh interpreter imported, not by timing); every
rough edge found by trying the CLI as a new user has a test here, and a seeded fuzz test feeds generated bad inputs to
every verb.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vidiff.cli import main as cli_main
from vidiff.cli_common import EMBEDDED_MODELS, describe_error

REPO = Path(__file__).resolve().parents[1]
T2V = EMBEDDED_MODELS / "shapes_t2v"
IMAGE = REPO / "src" / "vidiff" / "assets" / "examples" / "red_circle.png"


def _stderr_line(capsys) -> str:
    """The one line a failed command printed on stderr (asserts there is exactly one and it is no traceback)."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and lines[0].startswith("vidiff"), captured.err
    return lines[0]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- answers at once


NO_TORCH_CASES = [
    ["--help"],
    ["--version"],
    *([verb, "--help"] for verb in ("convert", "generate", "animate", "eval", "train", "serve")),
    ["serve", "--port", "70000"],
    ["serve", "--t2v-model", "/no/such/model"],
    ["generate", ""],
    ["generate", "a cat", "--seed", str(2**64)],
    ["generate", "a cat", "--guidance", "nan"],
    ["generate", "a cat", "--eta", "-0.5"],
    ["generate", "a cat", "--threads", "-1"],
    ["generate", "a cat", "--device", "foo"],
    ["generate", "a cat", "--frames", "0"],
    ["generate", "a cat", "-o", "clip.avi"],
    ["generate", "a cat", "--model", "/no/such/model"],
    ["generate", "a cat", "-o", "/proc/vidiff/clip.mp4"],
    ["animate", "/no/such/image.png"],
    ["animate", str(IMAGE), "--image-guidance", "inf"],
    ["convert", "/no/such.ckpt", "out"],
    ["train", "/no/such/config.yaml"],
    ["train", str(REPO / "configs" / "shapes_t2v_tiny.yaml"), "train.max_steps=-3"],
    ["eval", "-o", "out"],
    ["eval", "--model", "/no/such/model", "-o", "out"],
    ["nonsense"],
]


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    """Each case in a fresh interpreter: it exits with 0 (help) or 2 (one-line error) and torch was never imported."""
    script = (
        "import sys, json, contextlib, io\n"
        "from vidiff.cli import main\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err, std = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):\n"
        "        code = main(argv)\n"
        "    out.append([argv, code, err.getvalue(), 'torch' in sys.modules])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, json.dumps(NO_TORCH_CASES)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    for argv, code, err, torch_loaded in json.loads(done.stdout):
        assert not torch_loaded, f"{argv} imported torch"
        if argv[-1] in ("--help", "--version"):
            assert code == 0, (argv, err)
        else:
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("vidiff"), (argv, code, err)
    assert not any(tmp_path.iterdir())  # nothing written


def test_version_and_defaults_in_help(capsys):
    from vidiff import __version__

    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vidiff {__version__}"
    assert cli_main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("(default 123)", "number of frames (default: the model's)", "height in pixels (default: the "
                     "model's)", "width in pixels (default: the model's)", "--threads"):
        assert expected in text, expected


# ------------------------------------------------------------------------------------------------ value ranges


@pytest.mark.parametrize("seed,ok", [("0", True), (str(2**64 - 1), True), (str(2**64), False), ("-1", False),
                                     ("1180591620717411303424", False), ("1.5", False)])
def test_seed_range(seed, ok, capsys):
    from vidiff.cli import build_parser

    if ok:
        assert build_parser().parse_args(["generate", "x", "--seed", seed]).seed == int(seed)
        return
    assert cli_main(["generate", "x", "--seed", seed]) == 2
    line = _stderr_line(capsys)
    assert "--seed" in line and "[0, 2**64)" in line


def test_pipeline_refuses_out_of_range_values():
    """The Python API (and the web demo through it) refuses what the CLI refuses, before any sampling."""
    from vidiff.pipelines.base import PipelineError, check_sampling_values, seeded_generator

    for bad in ({"guidance_scale": float("nan")}, {"guidance_scale": -1.0}, {"eta": 1.5}, {"eta": float("inf")},
                {"guidance_rescale": 2.0}, {"image_guidance_scale": float("-inf")}):
        with pytest.raises(PipelineError, match=next(iter(bad))):
            check_sampling_values(**bad)
    check_sampling_values(guidance_scale=0.0, eta=1.0, guidance_rescale=0.0, image_guidance_scale=None)
    with pytest.raises(PipelineError, match=r"\[0, 2\*\*64\)"):
        seeded_generator(None, 2**64)
    assert seeded_generator(None, 2**64 - 1) is not None


@pytest.mark.parametrize("flag,value", [("--guidance", "nan"), ("--guidance", "-2"), ("--guidance", "inf"),
                                        ("--eta", "nan"), ("--eta", "-0.1"), ("--guidance-rescale", "1.5"),
                                        ("--steps", "0"), ("--threads", "0"), ("--threads", "-1")])
def test_bad_numbers_are_refused_with_their_flag(flag, value, capsys):
    assert cli_main(["generate", "a red circle", flag, value]) == 2
    assert flag in _stderr_line(capsys)


def test_unsupported_devices(tmp_path, capsys):
    assert cli_main(["generate", "a red circle", "--device", "foo"]) == 2
    assert "cpu, cuda" in _stderr_line(capsys)
    import torch

    if not torch.cuda.is_available():
        assert cli_main(["generate", "a red circle", "--device", "cuda", "-o", str(tmp_path / "v.mp4")]) == 2
        line = _stderr_line(capsys)
        assert "--device cuda" in line and "--device cpu" in line
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ paths and files


def test_os_errors_name_their_path(tmp_path, capsys):
    assert "/x/clip.mp4" in describe_error(PermissionError(13, "Permission denied", "/x/clip.mp4"))
    from vidiff.utils.io import atomic_write_with

    def failing(tmp: Path) -> None:
        raise OSError(28, "No space left on device")  # as PyAV reports it: no file name

    with pytest.raises(OSError) as err:
        atomic_write_with(tmp_path / "clip.mp4", failing)
    assert str(tmp_path / "clip.mp4") in describe_error(err.value)
    assert not any(tmp_path.iterdir())
    # Places no one can write, whoever runs the test (root included): a pseudo file system, a path below a file.
    (tmp_path / "file").write_text("x")
    for target in ("/proc/vidiff/clip.mp4", str(tmp_path / "file" / "clip.mp4")):
        assert cli_main(["generate", "a red circle", "-o", target]) == 2
        assert target in _stderr_line(capsys)


def test_unsafe_pickle_is_refused_without_advice(tmp_path, capsys):
    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": Payload()}}, evil)
    assert cli_main(["convert", str(evil), str(tmp_path / "out")]) == 2
    line = _stderr_line(capsys)
    assert "refused as unsafe" in line and str(evil) in line
    assert "weights_only" not in line and "will likely succeed" not in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_all_unreadable_dataset_says_so_at_any_batch_size(tmp_path, capsys):
    import yaml
    from test_training import tiny_config

    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,caption"]
    for i in range(6):
        (data / f"{i}.mp4").write_bytes(b"not a video at all")
        rows.append(f"{i}.mp4,a red circle moving left")
    (data / "videos.csv").write_text("\n".join(rows) + "\n")
    for batch in (8, 2):
        cfg = tiny_config(tmp_path / f"run{batch}", data={
            "videos": {"type": "csv", "csv_path": str(data / "videos.csv"), "num_frames": 4, "resolution": 32},
            "batch_size": batch})
        path = tmp_path / f"c{batch}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert cli_main(["train", str(path)]) == 2
        line = _stderr_line(capsys)
        assert "none of the 6" in line and "could be" in line, line


# ------------------------------------------------------------------------------------------ warnings, not silence


def test_long_prompt_is_warned_about():
    from vidiff.models.tokenizer import OpenCLIPTokenizer
    from vidiff.pipelines.base import VideoDiffusionPipeline

    pipe = SimpleNamespace(tokenizer=OpenCLIPTokenizer())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VideoDiffusionPipeline.warn_long_prompts(pipe, ["a red circle"])
        assert not caught
        VideoDiffusionPipeline.warn_long_prompts(pipe, ["red " * 2500])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2502 tokens" in message and "keeps the first 77" in message and "ignores the other 2425" in message


def test_frames_beyond_the_trained_length_are_generated_in_windows(tmp_path, capsys):
    """The default T2V model has absolute positions for 16 frames: a longer request is windowed, with a warning."""
    out = tmp_path / "v.mp4"
    assert cli_main(["generate", "a red circle moving left", "--frames", "20", "--steps", "1", "--threads", "1",
                     "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "20 frames requested from a model with frame positions for 16" in err and "windows of 16" in err
    assert out.is_file()
    import av

    with av.open(str(out)) as video:
        assert sum(1 for _ in video.decode(video=0)) == 20


def test_animated_gif_warns_that_only_its_first_frame_is_used(tmp_path):
    from vidiff.pipelines.image_io import open_image

    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.warns(UserWarning, match="3 frames; only its first frame is used"):
        image = open_image(gif)
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]


# ----------------------------------------------------------------------------------------------------- threads


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    from vidiff.utils import threads

    # /proc/stat readings 0.1 s apart: cpu0 fully busy, cpu1 idle.
    readings = iter([{"cpu0": (100, 200), "cpu1": (50, 200)}, {"cpu0": (110, 210), "cpu1": (50, 210)}])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.busy_cores(cores={0, 1}) == 1
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "busy_cores", lambda: 0)
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "busy_cores", lambda: 5)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "busy_cores", lambda: None)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    assert threads.default_threads() == 1


def test_busy_cores_reads_this_machine():
    from vidiff.utils.threads import busy_cores, usable_cores

    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat on this OS: default_threads falls back to cores - 1")
    assert 0 <= busy_cores(0.05) <= usable_cores()


# ----------------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_generate_is_one_line_and_leaves_no_file(tmp_path):
    out = tmp_path / "out" / "clip.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "vidiff.cli", "generate", "a red circle moving left", "--steps",
                             "400", "--threads", "1", "-o", str(out), "--gif", "--sheet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline and "DDIM" not in seen:  # the progress bar: sampling has started
        seen += proc.stderr.read(1)
    assert "DDIM" in seen, seen
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in (seen + err).replace("\r", "\n").splitlines() if line.strip()
             and not line.startswith(("DDIM", "vidiff: warning"))]
    assert lines == ["vidiff generate: interrupted; nothing half-written was left behind"], err
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------------------------------- fuzz

BAD_NUMBERS = ["nan", "-nan", "inf", "-inf", "1e400", "-1", "-0.5", "abc", "", "0x1g", "1,5", "2**64", "None"]
BAD_INTS = ["0", "-1", "-7", "1.5", "abc", "", "nan", "1e3", "99999999999999999999999999999999x"]
BAD_SEEDS = [str(2**64), str(-(2**70)), "-1", "1.0", "seed", "", str(10**40)]
# Options and values no valid run accepts, per verb (a valid value would start a real, slow run).
FUZZ_OPTIONS = {
    "generate": {"--guidance": BAD_NUMBERS, "--eta": [*BAD_NUMBERS, "1.01", "7"],
                 "--guidance-rescale": [*BAD_NUMBERS, "1.5"], "--seed": BAD_SEEDS, "--steps": BAD_INTS,
                 "--frames": BAD_INTS, "--height": BAD_INTS, "--width": BAD_INTS, "--threads": BAD_INTS,
                 "--fps": BAD_INTS, "--device": ["foo", "gpu", "cuda:x", "", "cpu:0:1"], "--dtype": ["fp8", ""],
                 "--sampler": ["euler??", ""]},
    "animate": {"--guidance": BAD_NUMBERS, "--image-guidance": BAD_NUMBERS, "--seed": BAD_SEEDS,
                "--steps": BAD_INTS, "--threads": BAD_INTS, "--playback-fps": ["0", "-3", "nan", "inf", "x"],
                "--device": ["foo", "cuda:"]},
    "eval": {"--guidance": BAD_NUMBERS, "--eta": BAD_NUMBERS, "--seed": BAD_SEEDS, "--threads": BAD_INTS,
             "--per-triple": BAD_INTS, "--device": ["tpu"]},
}


def _bad_files(folder: Path) -> list[Path]:
    """Files no verb can use: empty, random bytes, a truncated PNG, a folder, text pretending to be a checkpoint."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    files = {"empty.png": b"", "noise.png": rng.bytes(300), "truncated.png": IMAGE.read_bytes()[:60],
             "text.ckpt": b"hello", "noise.ckpt": rng.bytes(500), "bad.yaml": b"model: [unclosed",
             "list.yaml": b"- 1\n- 2\n", "typo.yaml": b"taks: t2v\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "dir.png").mkdir()
    return sorted(folder.iterdir())


def test_fuzzed_bad_inputs_give_one_line_errors(tmp_path, capsys):
    rng = random.Random(1234)
    bad_files = _bad_files(tmp_path / "inputs")
    out = tmp_path / "out"
    cases = []
    for _ in range(48):
        verb = rng.choice(list(FUZZ_OPTIONS))
        flag = rng.choice(list(FUZZ_OPTIONS[verb]))
        value = rng.choice(FUZZ_OPTIONS[verb][flag])
        base = {"generate": ["generate", "a red circle moving left", "-o", str(out / "v.mp4")],
                "animate": ["animate", str(IMAGE), "a red circle", "-o", str(out / "a.mp4")],
                "eval": ["eval", "--model", str(T2V), "-o", str(out / "eval")]}[verb]
        cases.append([*base, f"{flag}={value}"])
    for path in bad_files:
        if path.suffix == ".png":
            cases.append(["animate", str(path), "-o", str(out / "a.mp4"), "--threads", "1"])
        elif path.suffix == ".ckpt":
            cases.append(["convert", str(path), str(out / "converted")])
        else:
            cases.append(["train", str(path)])
    cases += [["generate", " \t\n"], ["generate", "x", "-o", str(out)], ["animate"], ["eval"], ["train"],
              ["generate", "x", "--model", str(bad_files[0])], ["convert", str(tmp_path / "inputs"), str(out / "c")]]
    start = time.time()
    for argv in cases:
        code = cli_main(argv)
        assert code == 2, argv
        line = _stderr_line(capsys)
        assert "error" in line, (argv, line)
        assert not out.exists() or _files(out) == [], (argv, _files(out))
    assert time.time() - start < 120
