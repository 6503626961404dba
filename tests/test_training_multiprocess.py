"""Two-process data-parallel training on CPU (gloo, launched by torchrun) equals one process with the same global batch.

The batch order and each sample's random draws do not depend on the process layout, so the only differences are
float summation order in the gradient all-reduce. The launched children must also exit with code 0 (no abort at
interpreter teardown).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest
import yaml
from test_training import final_weights, run_config, tiny_config

from vidiff.training.checkpointing import list_checkpoints


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sections(batch: int, image_batch: int) -> dict:
    return {
        "data": {
            "images": {"type": "shapes", "height": 32, "width": 32, "length": 32, "seed": 2},
            "batch_size": batch,
            "image_batch_size": image_batch,
            "image_batches_per_video_batch": 0.5,
        },
        # Adam's eps is raised so that the conv biases in front of a GroupNorm (analytically zero gradient, numerically
        # noise of ~1e-9 that differs with the summation order) do not get noise amplified to full-size updates.
        "optim": {"lr": 1e-3, "warmup_steps": 1, "eps": 1e-4},
        "train": {"max_steps": 3, "ema_decay": 0.9, "threads": 1, "cond_dropout": {"text": 0.3}},
        "checkpoint": {"every": 3},
    }


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one = tiny_config(tmp_path / "one", **_sections(batch=4, image_batch=4))
    one["model"]["unet"]["config"]["temporal_conv_dropout"] = 0.0  # dropout masks come from each process's own RNG
    two = tiny_config(tmp_path / "two", **_sections(batch=2, image_batch=2))
    two["model"] = one["model"]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "vidiff.cli_train", str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "terminate called" not in done.stderr
    assert "2 process(es)" in done.stdout

    res = run_config(one)
    assert res.finished
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
    rows = [list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("one", "two")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == ["1", "2", "3"]
    for r1, r2 in zip(*rows):
        assert float(r1["loss"]) == pytest.approx(float(r2["loss"]), rel=1e-4, abs=1e-6)
    state = list_checkpoints(tmp_path / "two" / "checkpoints")[-1][1]
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
