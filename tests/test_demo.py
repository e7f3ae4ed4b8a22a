"""The README's first command: the demo runs the whole system and comes out green.

It runs from a directory outside the clone, as after a plain ``pip install``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webhook_service.demo import DEFAULT_PROCFILE, demo_procfile, read_procfile

REPO = Path(__file__).resolve().parent.parent


def run_demo(cwd: Path, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "webhook_service.cli", "demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(240)
def test_demo_runs_every_scenario_to_a_verified_green_summary_outside_the_clone(tmp_path):
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    for scenario in ("callback dropped", "fails upstream", "two outputs", "duplicate callback"):
        assert scenario in result.stdout


def test_the_packaged_procfile_is_the_repository_procfile():
    assert read_procfile(REPO / "Procfile") == DEFAULT_PROCFILE
    assert demo_procfile(REPO) == DEFAULT_PROCFILE


def test_someone_elses_procfile_is_not_run(tmp_path):
    (tmp_path / "Procfile").write_text("web: rails server\nworker: sidekiq\n")
    assert demo_procfile(tmp_path) == DEFAULT_PROCFILE


@pytest.mark.timeout(120)
def test_a_process_that_dies_is_reported_with_its_output(tmp_path):
    (tmp_path / "Procfile").write_text(
        "web: python -c 'import webhook_service; print(\"web could not bind\"); exit(3)'\n"
        "worker: webhook-service worker\n"
    )
    result = run_demo(tmp_path, timeout=100)
    assert result.returncode == 1
    assert "web exited with status 3" in result.stdout, result.stdout
    assert "web could not bind" in result.stdout


@pytest.mark.timeout(120)
def test_a_failing_release_step_is_reported_in_one_line(tmp_path):
    (tmp_path / ".env").write_text("WORKER_LEASE_SECONDS=0\n")
    result = run_demo(tmp_path, timeout=100)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if "demo FAILED" in line]
    assert len(failed) == 1 and "WORKER_LEASE_SECONDS" in failed[0], result.stdout


def test_the_printed_procfile_is_the_repository_procfile(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "webhook_service.cli", "demo", "--procfile"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "Procfile").write_text(printed)
    assert read_procfile(tmp_path / "Procfile") == read_procfile(REPO / "Procfile")
