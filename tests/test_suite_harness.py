"""The suite's own safety net: the PHI scan of everything logged must fail a run split across workers.

Under pytest-xdist each worker logs to its own files and scans them itself; the controller adds the
workers' findings up (tests/conftest.py). A real pytest run, in a process of its own, proves it: one test
logs an SSN in one worker, and the run must fail, naming it, though every test passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LEAKY_TESTS = '''
import logging

def test_logs_an_ssn():
    logging.getLogger("carecli.probe").warning("member 123-45-6789 called")

def test_quiet():
    pass
'''


def _run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No test here asks for a database: no server is started or needed.
    # Its own --basetemp: a pytest that starts with the default one takes group and other permissions off
    # /tmp/pytest-of-<user>, and an embedded server another worker starts meanwhile as root (initdb runs as
    # pgserver's own user, which needs to traverse that directory) then fails with "Permission denied".
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull, "--rootdir", str(directory),
         "--basetemp", str(directory / "basetemp"), "-p", "no:cacheprovider", "-q", *args, str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_phi_leak_in_any_worker_fails_the_run(tmp_path: Path, workers: str) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    run = _run(tmp_path, "-n", workers)
    assert "2 passed" in run.stdout, run.stdout + run.stderr
    assert run.returncode == 1, run.stdout + run.stderr
    assert "log PHI scan FAILED" in run.stdout and "SSN: 123-45-6789" in run.stdout
