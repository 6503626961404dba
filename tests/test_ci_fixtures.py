"""In CI (CI=true) the official fixtures cannot be skipped silently: a missing fixture fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _pytest(tmp_path: Path, ci: str, fixtures: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": ci, "VIDIFF_LVDM_FIXTURES": str(fixtures)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "inferred",
                           str(TESTS / "test_unet_fixtures.py")], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("where", ["empty", "absent"])
def test_missing_fixtures_fail_in_ci_and_skip_locally(tmp_path, where):
    fixtures = tmp_path / "fixtures"
    if where == "empty":
        fixtures.mkdir()
    ci = _pytest(tmp_path, "true", fixtures)
    assert ci.returncode != 0, ci.stdout
    assert "CI=true" in ci.stdout and "fixtures" in ci.stdout
    local = _pytest(tmp_path, "", fixtures)
    assert local.returncode == 0 and "skipped" in local.stdout, local.stdout
