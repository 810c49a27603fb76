"""Waiting for a process a benchmark spawned (a server node, redis-server) to answer."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_until_up(
    name: str,
    proc: subprocess.Popen[bytes] | None,
    log: Path | None,
    answers: Callable[[], bool],
    timeout: float,
) -> None:
    """Poll `answers()` (False or an OSError-like failure it swallows itself: not yet) until it
    is True; fail with the end of the process's log if it exits first or `timeout` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log else ""
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        if answers():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} not answering after {timeout:.0f}s")
