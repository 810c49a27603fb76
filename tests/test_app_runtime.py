"""The server process's runtime settings (bayeux.app.run)."""

from __future__ import annotations

import json
import subprocess
import sys

from bayeux.app import GC_THRESHOLDS


def test_settle_gc_freezes_what_exists_and_collects_less_often() -> None:
    """In a fresh interpreter, as `run` does before serving: everything alive is frozen out of
    later collections, and the thresholds are the server's."""
    script = (
        "import gc, json; from bayeux.app import settle_gc; settle_gc(); "
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    thresholds, frozen = json.loads(out.stdout)
    assert tuple(thresholds) == GC_THRESHOLDS != (700, 10, 10)
    assert frozen > 10_000  # the modules, aiohttp and our own code
