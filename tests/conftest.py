import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session):
    """In CI the official reference fixtures must be there: without them a green run would not have checked
    exactness against the official code."""
    from lvdm_fixtures import FIXTURES_ROOT

    if _in_ci() and not FIXTURES_ROOT.is_dir():
        pytest.exit(f"CI=true but the official fixtures are missing ({FIXTURES_ROOT}): the exactness tests would be "
                    "skipped", returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a test skipped for a missing fixture fails instead (locally it is skipped, with the reason)."""
    outcome = yield
    report = outcome.get_result()
    if not (_in_ci() and report.skipped and isinstance(report.longrepr, tuple)):
        return
    reason = str(report.longrepr[2])
    if ("fixture" in reason or "manifest" in reason) and "VIDIFF_SLOW" not in reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true: {reason} (the official fixtures must be present in CI)"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VIDIFF_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set VIDIFF_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
