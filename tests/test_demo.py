"""The README's first command: the demo runs the whole system and comes out green."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_demo_runs_every_scenario_to_a_verified_green_summary():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "webhook_service.cli", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    for scenario in ("callback dropped", "fails upstream", "two outputs", "duplicate callback"):
        assert scenario in result.stdout
