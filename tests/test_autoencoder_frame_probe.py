"""scripts/autoencoder_frame_probe.py: per-frame shape after an autoencoder round trip."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "autoencoder_frame_probe.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_shipped_autoencoder_keeps_most_shapes_and_a_bad_folder_is_one_line():
    res = _run("src/vidiff/assets/models/shapes_t2i", "--frames", "24")
    assert res.returncode == 0, res.stderr
    kept = float(re.search(r"shape kept ([\d.]+) %", res.stdout).group(1))
    n = int(re.search(r"(\d+) single-object frames", res.stdout).group(1))
    assert 10 <= n <= 24 and kept > 60.0  # chance is 33 %
    assert "triangle -> triangle" in res.stdout
    bad = _run(str(ROOT / "configs"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
