"""The load scripts still run end to end: a few seconds of load/chat_bench.py against a spawned
gms-server (customers on CometD websocket, agents on the agent API), checked through the JSON
line it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT

CHAT_BENCH = REPO_ROOT / "load" / "chat_bench.py"


def test_chat_bench_measures_both_directions_of_a_few_chats(tmp_path: Path) -> None:
    out = tmp_path / "chat.jsonl"
    settings = "--chats 5 --chats-per-agent 3 --rate 1 --warmup 1 --duration 3 --drain 1"
    command = [sys.executable, str(CHAT_BENCH), "--spawn-server", "--server-python"]
    command += [sys.executable, *settings.split(), "--json", str(out)]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "customer -> agent" in done.stdout and "agent -> customer" in done.stdout
    (line,) = out.read_text().splitlines()
    run = json.loads(line)
    totals = run["totals"]
    assert (totals["chats"], totals["agents"], totals["accepted"]) == (5, 2, 5), totals
    assert run["errors"] == {}, run["samples"]
    for direction in ("c2a", "a2c"):
        figures = totals[direction]
        # every message sent arrived on the other side, with its typing event before it
        assert figures["sent"] > 0 and figures["skipped"] == 0, figures
        assert figures["received"] == figures["committed"] == figures["sent"], figures
        assert figures["typing_received"] == figures["sent"], figures
        latency = figures["measured_latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 5000, latency
    (measured,) = [row for row in run["phases"] if row["measured"]]
    assert measured["server_cpu_pct"] is not None and measured["server_rss_max_kb"] > 0
    assert measured["c2a"]["latency_ms"]["p90"] is not None
