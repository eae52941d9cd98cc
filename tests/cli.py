"""Run the real ``carecli`` entry point in a subprocess, as a user or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_carecli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run ``python -m carecli ARGS`` with the test environment plus ``env``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "carecli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
