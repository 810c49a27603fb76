#!/usr/bin/env python3
"""Bayeux/CometD load generator: fan-out, CometD's chat benchmark, idle sessions.

Speaks the Bayeux wire protocol directly (websocket or long-polling) from N
worker processes and reports delivered messages/s, end-to-end latency
percentiles, server CPU and RSS, and client CPU (so a reader can tell which
side saturated). Only 127.0.0.1 is ever targeted; every phase is time-bounded.

    .venv/bin/python load/bayeux_bench.py fanout --spawn-server --transport websocket
    .venv/bin/python load/bayeux_bench.py cometd-bench --spawn-server --transport long-polling
    .venv/bin/python load/bayeux_bench.py idle --spawn-server --clients 10000
    .venv/bin/python load/bayeux_bench.py fanout --url http://127.0.0.1:8080/cometd --rate 50,100

See ``--help`` of each subcommand. ``--json FILE`` appends one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import psutil
from bayeux_client import BayeuxClient, BayeuxError, Endpoint, ReplayClient
from bench_process import wait_until_up
from bench_redis import RedisServer, command_delta, per_publish
from bench_stats import Histogram, Phase, PhaseCounters, Recorder

REPO = Path(__file__).resolve().parent.parent
SETUP_ERRORS = (BayeuxError, OSError, asyncio.TimeoutError)


# ---------------------------------------------------------------------------
# Plans: what each worker process simulates
# ---------------------------------------------------------------------------
@dataclass
class WorkerPlan:
    index: int
    urls: list[str]  # one per server node
    transport: str
    subscriptions: list[list[str]]  # channels of each local client
    nodes: list[int]  # index in urls of the node each local client connects to
    publishers: list[int]  # local clients that publish
    channels: list[str]  # channels publishers pick from at random
    rate_share: float  # fraction of each phase's total publish rate
    message_size: int
    batch: int
    max_backlog: float  # seconds of unacknowledged publishes before skipping
    connect_concurrency: int
    setup_timeout: float
    deadline: float  # absolute time.time() by which the worker exits
    cpus: list[int] | None
    seed: int
    trace_file: str | None = None  # worker 0's first client writes its wire exchange here


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def scenario_clients(args: argparse.Namespace) -> tuple[list[list[str]], list[bool], list[str]]:
    """Subscriptions and publisher flag of every client, and the publish channels."""
    if args.scenario == "fanout":
        subs = [["/fanout/0"]] * args.clients + [[]]
        return subs, [False] * args.clients + [True], ["/fanout/0"]
    rooms = [f"/rooms/{r}" for r in range(args.rooms)]
    if args.scenario == "cometd-bench":
        rng = random.Random(args.seed)
        per_client = min(args.rooms_per_client, len(rooms))
        subs = [rng.sample(rooms, per_client) for _ in range(args.clients)]
        return subs, [True] * args.clients, rooms
    subs = [[rooms[i % len(rooms)]] if rooms else [] for i in range(args.clients)]
    return subs, [False] * args.clients, []


def client_nodes(args: argparse.Namespace, clients: int, nodes: int) -> list[int]:
    """The node of each client: round-robin, except a lone publisher (the fanout
    scenario's) goes to ``--publisher-node``."""
    placement = [index % nodes for index in range(clients)]
    if args.scenario == "fanout":
        placement[-1] = min(args.publisher_node, nodes) - 1
    return placement


def build_plans(args: argparse.Namespace, urls: list[str],
                run_seconds: float) -> list[WorkerPlan]:
    subs, is_pub, channels = scenario_clients(args)
    placement = client_nodes(args, len(subs), len(urls))
    order = list(range(len(subs)))
    if args.scenario == "fanout":  # the publisher goes alone to the last worker
        order = order[:-1]
    shares = split(order, args.workers)
    if args.scenario == "fanout":
        shares[-1].append(len(subs) - 1)
    total_pubs = max(1, sum(is_pub))
    setup_timeout = 60 + len(subs) / 100
    plans = []
    for index, share in enumerate(shares):
        local_pubs = [i for i, g in enumerate(share) if is_pub[g]]
        plans.append(WorkerPlan(
            index=index, urls=urls, transport=args.transport,
            subscriptions=[subs[g] for g in share], nodes=[placement[g] for g in share],
            publishers=local_pubs, channels=channels,
            rate_share=len(local_pubs) / total_pubs, message_size=args.message_size,
            batch=args.batch, max_backlog=args.max_backlog,
            connect_concurrency=args.connect_concurrency, setup_timeout=setup_timeout,
            deadline=time.time() + setup_timeout + run_seconds + 120,
            cpus=args.client_cpus, seed=args.seed * 1000 + index,
            trace_file=args.trace_file if index == 0 else None))
    return plans


def build_schedule(args: argparse.Namespace, start: float) -> list[Phase]:
    """Absolute phase windows shared by every worker."""
    phases: list[tuple[str, float, float, bool]] = []
    if args.scenario == "idle":
        phases.append(("hold", args.duration, 0.0, True))
    else:
        if args.warmup > 0:
            phases.append(("warmup", args.warmup, args.rates[0], False))
        phases += [(f"rate {r:g}", args.duration, r, True) for r in args.rates]
        phases.append(("drain", args.drain, 0.0, False))
    schedule, t = [], int(start * 1e9)
    for name, seconds, rate, measured in phases:
        end = t + int(seconds * 1e9)
        schedule.append(Phase(name, t, end, rate, measured))
        t = end
    return schedule


def run_seconds(args: argparse.Namespace) -> float:
    if args.scenario == "idle":
        return float(args.duration + args.settle)
    return float(args.warmup + args.duration * len(args.rates) + args.drain)


# ---------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------
def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    raise_nofile()
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller decides when to stop
    run_loop(Worker(plan, conn).run())


def recv(conn: Connection, timeout: float) -> tuple[str, Any]:
    if not conn.poll(max(0.0, timeout)):
        return ("timeout", None)
    message: tuple[str, Any] = conn.recv()
    return message


class Worker:
    def __init__(self, plan: WorkerPlan, conn: Connection) -> None:
        self.plan = plan
        self.conn = conn
        self.recorder = Recorder()
        self.endpoints = [Endpoint.parse(url) for url in plan.urls]
        self.clients: list[BayeuxClient | None] = []
        self._trace_out: TextIO | None = None  # --trace-file, closed by _close_all

    async def run(self) -> None:
        try:
            await asyncio.wait_for(self._run(), max(1.0, self.plan.deadline - time.time()))
        except TimeoutError:
            self.recorder.error("worker deadline reached")
        finally:
            await self._close_all()

    async def _run(self) -> None:
        await self._setup()
        self.conn.send(("ready", self._ready_report()))
        kind, go = await asyncio.to_thread(recv, self.conn, self.plan.deadline - time.time())
        if kind != "go":
            return
        schedule, expected = go
        self.recorder.set_schedule(schedule)
        if self.plan.publishers:
            await Publisher(self.plan, self._publisher_clients(), self.recorder, expected) \
                .run(schedule)
        await sleep_until(schedule[-1].end_ns / 1e9)
        self.conn.send(("result", self._result_report()))
        await asyncio.to_thread(recv, self.conn, self.plan.deadline - time.time())

    async def _setup(self) -> None:
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        deadline = time.time() + self.plan.setup_timeout
        self.clients = list(await asyncio.gather(
            *(self._open_client(self.endpoints[node], subs, gate, deadline,
                                trace=self._tracer() if i == 0 else None)
              for i, (subs, node) in enumerate(zip(self.plan.subscriptions, self.plan.nodes,
                                                   strict=True)))))

    def _tracer(self) -> Callable[[str, bytes], None] | None:
        if not self.plan.trace_file:
            return None
        out = self._trace_out = open(self.plan.trace_file, "a", buffering=1)  # noqa: SIM115
        start = time.time()

        def trace(direction: str, body: bytes) -> None:
            if not out.closed:
                text = body[:400].decode(errors="replace")
                out.write(f"{time.time():.6f} +{time.time() - start:9.3f}s {direction} {text}\n")

        return trace

    async def _open_client(self, endpoint: Endpoint, channels: list[str],
                           gate: asyncio.Semaphore, deadline: float,
                           trace: Callable[[str, bytes], None] | None) -> BayeuxClient | None:
        async with gate:
            for attempt in range(3):
                if time.time() >= deadline:
                    break
                client = BayeuxClient(endpoint, self.plan.transport, self.recorder,
                                      batch=self.plan.batch, trace=trace)
                try:
                    async with asyncio.timeout(min(30.0, max(0.1, deadline - time.time()))):
                        await client.handshake()
                        await client.subscribe(channels)
                        await client.start(self.plan.deadline)
                    return client
                except SETUP_ERRORS as exc:
                    self.recorder.error(f"setup {type(exc).__name__}", str(exc))
                    await client.close(disconnect=False)
                    await asyncio.sleep(0.2 * (attempt + 1))
        return None

    def _publisher_clients(self) -> list[BayeuxClient]:
        return [c for i in self.plan.publishers if (c := self.clients[i]) is not None]

    def _ready_report(self) -> dict[str, Any]:
        channel_subs: Counter[str] = Counter()
        for client, channels in zip(self.clients, self.plan.subscriptions, strict=True):
            if client is not None:
                channel_subs.update(channels)
        established = sum(c is not None for c in self.clients)
        return {"established": established, "failed": len(self.clients) - established,
                "channel_subs": dict(channel_subs), "errors": dict(self.recorder.errors),
                "samples": self.recorder.samples}

    def _result_report(self) -> dict[str, Any]:
        return {"counters": [c.to_wire() for c in self.recorder.counters],
                "alive": sum(1 for c in self.clients if c is not None and c.alive),
                "errors": dict(self.recorder.errors), "samples": self.recorder.samples}

    async def _close_all(self) -> None:
        clients = [c for c in self.clients if c is not None]
        self.clients = []
        gate = asyncio.Semaphore(self.plan.connect_concurrency)

        async def close(client: BayeuxClient) -> None:
            async with gate:
                await client.close()

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(close(c) for c in clients)), 15.0)
        if self._trace_out is not None:
            self._trace_out.close()
        with contextlib.suppress(OSError):
            self.conn.send(("closed", None))


async def sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


class Publisher:
    """Open-loop publisher: follows each phase's rate, batching when behind.

    Each publish carries ``{"t": time_ns, "p": padding}`` sized to
    ``message_size`` bytes of JSON; publishes more than ``max_backlog``
    seconds' worth behind the schedule, or beyond that many unacknowledged,
    are skipped and counted rather than queued without bound.
    """

    def __init__(self, plan: WorkerPlan, clients: list[BayeuxClient], recorder: Recorder,
                 expected: dict[str, int]) -> None:
        self.plan = plan
        self.clients = clients
        self.recorder = recorder
        self.expected = expected
        self.rng = random.Random(plan.seed)
        self.padding = "x" * max(0, plan.message_size - len('{"t":1700000000000000000,"p":""}'))

    async def run(self, schedule: list[Phase]) -> None:
        if not self.clients:
            self.recorder.error("no publisher connected")
            return
        for phase in schedule:
            rate = phase.rate * self.plan.rate_share
            if rate > 0:
                await self._run_phase(phase, rate)
            else:
                await sleep_until(phase.end_ns / 1e9)

    async def _run_phase(self, phase: Phase, rate: float) -> None:
        """Publish ``rate * seconds`` messages: at each wake, those due before the next one.

        Wakes come every ``batch / rate`` seconds (or sooner when behind), and each sends
        the next ``batch`` messages of the schedule at once.
        """
        await sleep_until(phase.start_ns / 1e9)
        batch, total, sent = self.plan.batch, int(rate * phase.seconds), 0
        max_burst = max(batch, int(rate * self.plan.max_backlog))
        # the time check ends the loop; the count bound (>= one wake per ms) is a safety net
        for _ in range(int(phase.seconds * (rate + 1000)) + 10):
            now = time.time_ns()
            if now >= phase.end_ns or sent >= total:
                break
            due = min(int(rate * (now - phase.start_ns) / 1e9) + batch, total) - sent
            if due > max_burst:  # we fell behind: drop the excess instead of bursting
                self._skip(due - max_burst, now)
                sent += due - max_burst
                due = max_burst
            self._publish(due, now, max_burst)
            sent += due
            wake = phase.start_ns + sent * 1e9 / rate
            # libuv timers have 1 ms resolution: shorter sleeps would spin
            await asyncio.sleep(max(0.001, (min(wake, phase.end_ns) - time.time_ns()) / 1e9))
        self._skip(total - sent, phase.end_ns - 1)  # stalled past the end of the phase
        await sleep_until(phase.end_ns / 1e9)

    def _skip(self, count: int, now: int) -> None:
        for _ in range(count):
            self.recorder.skipped(now)

    def _publish(self, count: int, now: int, max_outstanding: int) -> None:
        recorder, clients, channels = self.recorder, self.clients, self.plan.channels
        for _ in range(count):
            if recorder.outstanding() >= max_outstanding:
                recorder.skipped(now)
                continue
            client = clients[self.rng.randrange(len(clients))] if len(clients) > 1 else clients[0]
            channel = channels[self.rng.randrange(len(channels))]
            expected = self.expected.get(channel, 0)
            client.publish(channel, {"t": time.time_ns(), "p": self.padding}, expected)
            recorder.published(now, expected)


# ---------------------------------------------------------------------------
# Server handle and sampling (controller side)
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_listener(port: int) -> int | None:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                pid: int | None = conn.pid
                return pid
    except psutil.AccessDenied:
        return None
    return None


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of ``pid`` (kB) from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return None


def precise_cpu_seconds(proc: psutil.Process | None) -> float | None:
    """CPU time of every thread of ``proc`` from /proc/PID/task/*/schedstat (nanoseconds,
    where cpu_times() counts 10 ms clock ticks): for windows of a few tens of ms. Threads
    that exited are not counted, so only compare close readings."""
    if proc is None:
        return None
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just exited
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return proc_cpu_seconds(proc)
    return total / 1e9


def proc_rss_kb(proc: psutil.Process | None) -> int | None:
    if proc is None:
        return None
    try:
        return int(proc.memory_info().rss // 1024)
    except psutil.Error:
        return None


def taskset(cpus: list[int] | None, command: list[str]) -> list[str]:
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", ",".join(map(str, cpus)), *command]
    return command


class Server:
    """One server node under test: spawned (pinned with taskset) or attached by pid."""

    def __init__(self, url: str, pid: int | None, proc: subprocess.Popen[bytes] | None = None,
                 command: list[str] | None = None, log: Path | None = None,
                 name: str = "n1", cpus: list[int] | None = None) -> None:
        self.url = url
        self.pid = pid
        self.proc = proc
        self.command = command or []
        self.log = log
        self.name = name
        self.cpus = cpus
        self.process = psutil.Process(pid) if pid else None

    @classmethod
    def spawn(cls, args: argparse.Namespace, name: str, cpus: list[int],
              redis_url: str | None = None) -> Server:
        """``python -m MODULE`` on a free port; on the Redis engine as node ``name``."""
        port = free_port()
        path = Endpoint.parse(args.urls[0]).path
        command = [args.server_python, "-m", args.server_module, "--host", "127.0.0.1",
                   "--port", str(port)]
        if redis_url:
            command += ["--redis", redis_url, "--node-id", name]
        for option in args.server_option:
            command += ["--option", option]
        command += getattr(args, "server_args", [])  # e.g. chat_bench's --config
        command = taskset(cpus, command)
        log = Path(f"/tmp/bayeux_bench_server_{port}.log")
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = cls(f"http://127.0.0.1:{port}{path}", proc.pid, proc, command, log, name, cpus)
        try:
            server.wait_healthy(port, 30.0)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def attach(cls, url: str, pid: int | None, name: str) -> Server:
        pid = pid or find_listener(Endpoint.parse(url).port)
        if pid is None:
            print(f"warning: pid of {url} unknown (use --server-pid): no server CPU/RSS figures",
                  file=sys.stderr)
        return cls(url, pid, name=name)

    def wait_healthy(self, port: int, timeout: float) -> None:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as rsp:
                    return bool(rsp.status == 200)
            except OSError:
                return False

        wait_until_up("server", self.proc, self.log, healthy, timeout)

    def rss_kb(self) -> int | None:
        return proc_rss_kb(self.process)

    def peak_rss_kb(self) -> int | None:
        return vm_hwm_kb(self.pid) if self.pid else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class Target:
    """The server side of a run: one or more nodes, and the Redis they share (if any)."""

    def __init__(self, nodes: list[Server], redis: RedisServer | None = None) -> None:
        self.nodes = nodes
        self.redis = redis

    @classmethod
    def spawn(cls, args: argparse.Namespace) -> Target:
        """``--nodes`` nodes, each pinned to its ``--server-cpus``; with ``--redis`` first a
        redis-server pinned to ``--redis-cpus``, and every node on the Redis engine."""
        target = cls([])
        try:
            if args.redis:
                target.redis = RedisServer.spawn(free_port(), args.redis_cpus)
            for index in range(args.nodes):
                target.nodes.append(Server.spawn(
                    args, f"n{index + 1}", node_cpus(args, index),
                    target.redis.url if target.redis else None))
        except BaseException:
            target.stop()
            raise
        return target

    @classmethod
    def attach(cls, args: argparse.Namespace) -> Target:
        single = len(args.urls) == 1
        nodes = [Server.attach(url, args.server_pid if single else None, f"n{index + 1}")
                 for index, url in enumerate(args.urls)]
        return cls(nodes, RedisServer.attach(args.redis_url) if args.redis_url else None)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def processes(self) -> dict[str, psutil.Process | None]:
        """Every sampled server-side process by name: the nodes (n1, n2, ...) and redis."""
        procs = {node.name: node.process for node in self.nodes}
        if self.redis is not None:
            pid = self.redis.pid
            try:
                procs["redis"] = psutil.Process(pid) if pid else None
            except psutil.Error:
                procs["redis"] = None
        return procs

    def rss_kb(self) -> int | None:
        """RSS of all nodes together (None if any is unknown)."""
        values = [node.rss_kb() for node in self.nodes]
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    def describe(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "nodes": [{"name": n.name, "url": n.url, "pid": n.pid, "cpus": n.cpus,
                       "command": n.command or None, "log": str(n.log) if n.log else None}
                      for n in self.nodes]}
        if self.redis is not None:
            data["redis"] = {"url": self.redis.url, "pid": self.redis.pid,
                             "command": self.redis.command or None}
        return data

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()


@dataclass
class Snapshot:
    wall: float
    proc_cpu: dict[str, float | None]  # CPU seconds of each server-side process (nodes, redis)
    client_cpu: float
    core_busy: list[float]  # user + nice + system + irq + softirq, per core
    core_irq: list[float]  # irq + softirq (loopback TCP work lands here, charged to no process)
    core_total: list[float]
    redis_commands: dict[str, int] | None = None  # INFO commandstats calls, cumulative


class Sampler:
    """CPU (and Redis command) snapshots at phase boundaries and RSS samples in between."""

    def __init__(self, target: Target, workers: list[int], precise: bool = False) -> None:
        self.target = target
        self.cpu_seconds = precise_cpu_seconds if precise else proc_cpu_seconds
        self.nodes = [node.name for node in target.nodes]
        self.watched = target.processes()
        self.workers = [psutil.Process(pid) for pid in workers]
        self.workers.append(psutil.Process())  # the controller itself
        self.max_rss_kb: dict[str, int] = {}  # per process, and "nodes" for their sum

    def snapshot(self) -> Snapshot:
        client = sum(self.cpu_seconds(proc) or 0.0 for proc in self.workers)
        cores = psutil.cpu_times(percpu=True)
        irq = [c.irq + c.softirq for c in cores]
        busy = [c.user + c.nice + c.system + i for c, i in zip(cores, irq, strict=True)]
        total = [b + c.idle + c.iowait for b, c in zip(busy, cores, strict=True)]
        redis = self.target.redis
        return Snapshot(time.time(),
                        {name: self.cpu_seconds(proc) for name, proc in self.watched.items()},
                        client, busy, irq, total,
                        redis.command_counts() if redis is not None else None)

    def sample_rss(self) -> dict[str, int]:
        sample = {name: rss for name, proc in self.watched.items()
                  if (rss := proc_rss_kb(proc)) is not None}
        sample["nodes"] = sum(sample.get(name, 0) for name in self.nodes)
        for name, rss in sample.items():
            self.max_rss_kb[name] = max(self.max_rss_kb.get(name, 0), rss)
        return sample

    def watch_until(self, when: float, every: float = 0.25) -> dict[str, int]:
        """Sample RSS until ``when``; return the max seen in that window (kB) by process."""
        peak: dict[str, int] = {}
        for _ in range(int(max(0.0, when - time.time()) / every) + 2):
            for name, rss in self.sample_rss().items():
                peak[name] = max(peak.get(name, 0), rss)
            left = when - time.time()
            if left <= 0:
                break
            time.sleep(min(every, left))
        return peak

    def rss_figures(self, peak: dict[str, int]) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "server_rss_max_kb": peak.get("nodes") or None,
            "node_rss_max_kb": [peak.get(name) for name in self.nodes]}
        if "redis" in self.watched:
            figures["redis_rss_max_kb"] = peak.get("redis")
        return figures

    def cpu_figures(self, before: Snapshot, after: Snapshot) -> dict[str, Any]:
        """CPU of each side in % of one core between two snapshots, and the Redis commands
        run meanwhile."""
        wall = max(1e-9, after.wall - before.wall)

        def pct(b: float | None, a: float | None) -> float | None:
            return None if a is None or b is None else round((a - b) / wall * 100, 1)

        per_proc = {name: pct(before.proc_cpu.get(name), after.proc_cpu.get(name))
                    for name in self.watched}
        figures: dict[str, Any] = {"client_cpu_pct": pct(before.client_cpu, after.client_cpu)}
        nodes = [per_proc[name] for name in self.nodes]
        if nodes and all(v is not None for v in nodes):
            figures["server_cpu_pct"] = round(sum(v or 0.0 for v in nodes), 1)
        figures["node_cpu_pct"] = nodes
        if "redis" in per_proc:
            figures["redis_cpu_pct"] = per_proc["redis"]
        figures["core_busy_pct"] = [
            round((b1 - b0) / max(1e-9, t1 - t0) * 100, 1)
            for b0, b1, t0, t1 in zip(before.core_busy, after.core_busy, before.core_total,
                                      after.core_total, strict=True)]
        figures["softirq_pct"] = round(sum(
            (i1 - i0) / max(1e-9, t1 - t0) * 100
            for i0, i1, t0, t1 in zip(before.core_irq, after.core_irq, before.core_total,
                                      after.core_total, strict=True)), 1)
        # CPU used by other processes on the machine: a noisy neighbour skews the figures
        ours = sum(v or 0.0 for v in per_proc.values()) + (figures["client_cpu_pct"] or 0.0)
        figures["other_cpu_pct"] = round(max(0.0, sum(figures["core_busy_pct"])
                                             - figures["softirq_pct"] - ours), 1)
        commands = command_delta(before.redis_commands, after.redis_commands)
        if commands is not None:
            figures["redis_commands"] = commands
        return figures

    def cpu_ms(self, before: Snapshot, after: Snapshot) -> dict[str, float | None]:
        """CPU time (ms) each process used between two snapshots, and "client"."""
        used: dict[str, float | None] = {
            name: None if (a := after.proc_cpu.get(name)) is None
            or (b := before.proc_cpu.get(name)) is None else round((a - b) * 1000, 1)
            for name in self.watched}
        used["client"] = round((after.client_cpu - before.client_cpu) * 1000, 1)
        return used


# ---------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------
@dataclass
class RunResult:
    scenario: str
    settings: dict[str, Any]
    phases: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)


class Controller:
    def __init__(self, args: argparse.Namespace, target: Target, plans: list[Any] | None = None,
                 worker: Callable[[Any, Connection], None] = worker_main) -> None:
        """``plans`` and ``worker`` let another benchmark (chat_bench) run its own workers
        under the same process, phase and sampling machinery."""
        self.args = args
        self.target = target
        ctx = mp.get_context("spawn")
        self.plans = (plans if plans is not None
                      else build_plans(args, target.urls, run_seconds(args)))
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for plan in self.plans:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(plan, child_end), daemon=True)
            self.pipes.append(parent_end)
            self.procs.append(proc)
        self.result = RunResult(args.scenario, settings(args, target))

    def run(self) -> RunResult:
        if self.args.scenario == "idle":  # so lazy first-request allocations are not counted
            for url in self.target.urls:
                run_loop(warm_up(url, self.args.transport))
            time.sleep(0.5)
        rss_before = self.target.rss_kb()
        for proc in self.procs:
            proc.start()
        try:
            self._run(rss_before)
        finally:
            self._shutdown()
        return self.result

    def _run(self, rss_before: int | None) -> None:
        ready = self._gather("ready", self.plans[0].setup_timeout + 30)
        established = sum(r["established"] for r in ready)
        self._note_errors(ready)  # replaced by the final (cumulative) counts below
        self.result.totals.update(sessions=established,
                                  setup_failed=sum(r["failed"] for r in ready))
        if not established:
            raise RuntimeError(f"no session could be set up: {self.result.samples}")
        expected: Counter[str] = Counter()
        for report in ready:
            expected.update(report["channel_subs"])
        if self.args.scenario == "idle":
            time.sleep(self.args.settle)
            self._record_idle_rss(rss_before, established)
        sampler = Sampler(self.target, [p.pid for p in self.procs])
        schedule = build_schedule(self.args, time.time() + 0.5)
        for pipe in self.pipes:
            pipe.send(("go", (schedule, dict(expected))))
        self._watch(sampler, schedule)
        results = self._gather("result", 30.0)
        if self.args.scenario == "idle":
            self.result.totals["rss_end_kb"] = self.target.rss_kb()
        self._aggregate(schedule, results)
        self.result.server.update(server_figures(self.target, sampler))

    def _record_idle_rss(self, before: int | None, sessions: int) -> None:
        after = self.target.rss_kb()
        totals = self.result.totals
        totals.update(rss_before_kb=before, rss_after_kb=after)
        if before is not None and after is not None and sessions:
            totals["rss_per_session_kb"] = round((after - before) / sessions, 2)

    def _watch(self, sampler: Sampler, schedule: list[Phase]) -> None:
        sleep_until_sync(schedule[0].start_ns / 1e9)
        previous = sampler.snapshot()
        for phase in schedule:
            peak = sampler.watch_until(phase.end_ns / 1e9)
            current = sampler.snapshot()
            self.result.phases.append({"phase": phase.name, "measured": phase.measured,
                                       "seconds": phase.seconds, "target_pub_rate": phase.rate,
                                       **sampler.cpu_figures(previous, current),
                                       **sampler.rss_figures(peak)})
            previous = current

    def _aggregate(self, schedule: list[Phase], results: list[dict[str, Any]]) -> None:
        merged = [PhaseCounters() for _ in range(len(schedule) + 2)]
        for report in results:
            for index, wire in enumerate(report["counters"]):
                merged[index].merge(PhaseCounters.from_wire(wire))
        self._note_errors(results)
        for row, counters, phase in zip(self.result.phases, merged[1:-1], schedule, strict=True):
            row.update(phase_figures(counters, phase.seconds))
            if "redis_commands" in row:
                row["redis_per_publish"] = per_publish(row["redis_commands"], counters.published)
        total = PhaseCounters()
        for counters in merged:
            total.merge(counters)
        measured = PhaseCounters()
        for counters, phase in zip(merged[1:-1], schedule, strict=True):
            if phase.measured:
                measured.merge(counters)
        # deliveries missing for publishes the server acknowledged: lost, or still in
        # flight when the drain phase ended (a longer --drain tells the two apart)
        missing = (1 - total.delivered / total.acked_expected) if total.acked_expected else None
        self.result.totals.update(
            published=total.published, acked=total.acked, publish_failed=total.failed,
            unacked=total.published - total.acked - total.failed, skipped=total.skipped,
            expected=total.acked_expected, delivered=total.delivered,
            untimed=total.untimed,
            missing_pct=None if missing is None else round(missing * 100, 3),
            connects=total.connects,
            alive_at_end=sum(r["alive"] for r in results),
            measured_latency_ms=latency_figures(measured.hist),
            best_under_p99=best_rate(self.result.phases, self.args.p99_target))

    def _note_errors(self, reports: list[dict[str, Any]]) -> None:
        errors: Counter[str] = Counter()
        for report in reports:
            errors.update(report["errors"])
        self.result.errors = dict(errors)
        for report in reports:
            for kind, sample in report["samples"].items():
                self.result.samples.setdefault(kind, sample)

    def _gather(self, kind: str, timeout: float) -> list[Any]:
        deadline = time.time() + timeout
        replies = []
        for index, pipe in enumerate(self.pipes):
            got, payload = self._recv(pipe, deadline)
            if got != kind:
                raise RuntimeError(f"worker {index}: expected {kind!r}, got {got!r}")
            replies.append(payload)
        return replies

    def _recv(self, pipe: Connection, deadline: float) -> tuple[str, Any]:
        try:
            return recv(pipe, deadline - time.time())
        except (EOFError, OSError):
            return ("dead", None)

    def _shutdown(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        deadline = time.time() + 20.0
        for pipe in self.pipes:
            self._recv(pipe, deadline)
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.time()))
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)


def sleep_until_sync(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


def latency_figures(hist: Histogram) -> dict[str, float | None]:
    return {"p50": hist.percentile_ms(0.50), "p99": hist.percentile_ms(0.99),
            "p99.9": hist.percentile_ms(0.999),
            "max": hist.max_us / 1000 if hist.total else None}


def phase_figures(counters: PhaseCounters, seconds: float) -> dict[str, Any]:
    per_s = 1 / max(seconds, 1e-9)
    return {"pub_rate": round(counters.published * per_s, 1),
            "delivered_rate": round(counters.delivered * per_s, 1),
            "expected_rate": round(counters.expected * per_s, 1),
            "delivered": counters.delivered, "published": counters.published,
            "skipped": counters.skipped, "connects": counters.connects,
            "connect_rate": round(counters.connects * per_s, 1),
            "deliveries_per_frame": round((counters.delivered + counters.untimed)
                                          / counters.frames, 2) if counters.frames else None,
            "latency_ms": latency_figures(counters.hist)}


def best_rate(phases: list[dict[str, Any]], p99_target_ms: float) -> dict[str, Any] | None:
    """The highest-rate measured phase that kept up (>= 95% of its target publish rate and
    of its expected deliveries) with p99 under the target; None if no phase did."""
    best: dict[str, Any] | None = None
    for row in phases:
        p99 = row.get("latency_ms", {}).get("p99")
        kept_up = (row.get("pub_rate", 0) >= 0.95 * row["target_pub_rate"]
                   and row.get("delivered_rate", 0) >= 0.95 * row.get("expected_rate", 0))
        if row["measured"] and p99 is not None and p99 < p99_target_ms and kept_up \
                and (best is None or row["target_pub_rate"] > best["target_pub_rate"]):
            best = row
    if best is None:
        return None
    return {"p99_target_ms": p99_target_ms, "phase": best["phase"],
            "target_pub_rate": best["target_pub_rate"], "pub_rate": best.get("pub_rate"),
            "delivered_rate": best.get("delivered_rate"), "latency_ms": best.get("latency_ms")}


def server_figures(target: Target, sampler: Sampler) -> dict[str, Any]:
    """Run-wide memory figures: all nodes together (as one server's were), each node, Redis."""
    nodes = [{"name": node.name, "max_rss_kb": sampler.max_rss_kb.get(node.name),
              "vm_hwm_kb": node.peak_rss_kb()} for node in target.nodes]
    peaks = [node["vm_hwm_kb"] for node in nodes]
    figures: dict[str, Any] = {
        "max_rss_kb": sampler.max_rss_kb.get("nodes") or None,
        "vm_hwm_kb": None if None in peaks else sum(p or 0 for p in peaks),
        "nodes": nodes}
    if target.redis is not None:
        figures["redis_max_rss_kb"] = sampler.max_rss_kb.get("redis")
    return figures


def settings(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    keys = ["transport", "clients", "rooms", "rooms_per_client", "rates", "message_size",
            "batch", "duration", "warmup", "workers", "client_cpus", "label", "events",
            "channel", "replay_from", "repeat", "window", "p99_target"]
    data = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    data["uvloop"] = importlib.util.find_spec("uvloop") is not None
    first = target.nodes[0]
    data.update(url=first.url, server_pid=first.pid, server_command=first.command or None,
                server_cpus=first.cpus, engine="redis" if target.redis else "memory",
                node_count=len(target.nodes), publisher_node=args.publisher_node,
                redis_cpus=args.redis_cpus if args.spawn_server and args.redis else None,
                **target.describe())
    return data


async def warm_up(url: str, transport: str, sessions: int = 20) -> None:
    """A few complete sessions (handshake .. disconnect) to exercise the server's code paths."""
    recorder = Recorder()
    for index in range(sessions):
        client = BayeuxClient(Endpoint.parse(url), transport, recorder)
        try:
            async with asyncio.timeout(10):
                await client.handshake()
                await client.subscribe([f"/warmup/{index}"])
                await client.start(time.time() + 10)
                client.publish(f"/warmup/{index}", {"t": time.time_ns()})
        finally:
            await client.close()


# ---------------------------------------------------------------------------
# Replay: publish durable events, then time their replay to new subscribers
# ---------------------------------------------------------------------------
def check_replay(events: list[tuple[int | None, Any, Any, int]], run: str, count: int,
                 after: int) -> dict[str, Any]:
    """Did every event arrive once, in replayId order? ``events`` as ReplayClient keeps
    them; ``count`` events of ``run`` (seq 0..count-1) were published."""
    ids = [e[0] for e in events]
    numbered = [i for i in ids if isinstance(i, int)]
    steps = list(itertools.pairwise(numbered))
    seqs = [e[2] for e in events if e[1] == run]
    problems: list[str] = []
    figures: dict[str, Any] = {
        "received": len(events), "of_this_run": len(seqs),
        "first_id": numbered[0] if numbered else None,
        "last_id": numbered[-1] if numbered else None,
        "without_id": len(ids) - len(numbered),
        "duplicates": len(numbered) - len(set(numbered)),
        "out_of_order": sum(1 for a, b in steps if b <= a),
        "gaps": sum(b - a - 1 for a, b in steps if b > a + 1),
        "missing_of_run": count - len(set(seqs)),
    }
    for key in ("without_id", "duplicates", "out_of_order", "gaps", "missing_of_run"):
        if figures[key]:
            problems.append(f"{key} {figures[key]}")
    if seqs != list(range(count)):
        problems.append("this run's events not in publish order")
    if after >= 0 and numbered and numbered[0] != after + 1:
        problems.append(f"first replayId {numbered[0]}, expected {after + 1}")
    figures.update(ok=not problems, problems=problems)
    return figures


class ReplayBench:
    """The replay scenario, in the controller process: one client publishes ``--events``
    durable events (at most ``--window`` unacknowledged), then ``--repeat`` fresh clients in
    turn handshake with ``ext.replay`` and subscribe asking for every event after
    ``--replay-from``; each is timed from the subscribe request to the arrival of the last
    event, and checked (every event once, in replayId order)."""

    def __init__(self, args: argparse.Namespace, target: Target) -> None:
        self.args = args
        self.target = target
        self.endpoints = [Endpoint.parse(url) for url in target.urls]
        self.run_id = f"{os.getpid()}-{time.time_ns()}"
        self.deadline = time.time() + args.timeout * (args.repeat + 2)
        self.result = RunResult("replay", settings(args, target))

    def run(self) -> RunResult:
        sampler = Sampler(self.target, [], precise=True)
        start = sampler.snapshot()
        run_loop(self._run(sampler))
        whole = sampler.cpu_figures(start, sampler.snapshot())
        self.result.totals["whole_run"] = {
            k: whole.get(k) for k in ("server_cpu_pct", "node_cpu_pct", "redis_cpu_pct",
                                      "client_cpu_pct", "softirq_pct", "other_cpu_pct")}
        self.result.server.update(server_figures(self.target, sampler))
        replays = [p for p in self.result.phases if p["phase"] != "publish"]
        times = sorted(p["subscribe_to_last_ms"] for p in replays
                       if p.get("subscribe_to_last_ms") is not None)
        if times:
            self.result.totals["replay_ms"] = {
                "runs": len(times), "min": times[0], "median": times[len(times) // 2],
                "max": times[-1]}
        self.result.totals["all_ok"] = bool(replays) and all(
            p.get("check", {}).get("ok") for p in replays)
        return self.result

    async def _run(self, sampler: Sampler) -> None:
        if not await self._publish(sampler):
            return
        for index in range(self.args.repeat):
            await self._replay(index, sampler)

    def _error(self, kind: str, exc: BaseException) -> None:
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1
        self.result.samples.setdefault(kind, f"{type(exc).__name__}: {exc}"[:500])

    async def _publish(self, sampler: Sampler) -> bool:
        args = self.args
        node = min(args.publisher_node, len(self.endpoints)) - 1
        recorder = Recorder()
        client = BayeuxClient(self.endpoints[node], args.transport, recorder, batch=args.batch)
        padding = "x" * max(0, args.message_size - len('{"t":1700000000000000000,"p":""}'))
        try:
            async with asyncio.timeout(args.timeout):
                await client.handshake()
                await client.start(self.deadline)
                sampler.sample_rss()
                before = sampler.snapshot()
                for first in range(0, args.events, args.window):
                    for seq in range(first, min(first + args.window, args.events)):
                        client.publish(args.channel, {"t": time.time_ns(), "p": padding,
                                                      "run": self.run_id, "seq": seq})
                        recorder.published(time.time_ns(), 0)
                    await wait_until(lambda: recorder.outstanding() == 0)
                after = sampler.snapshot()
        except (BayeuxError, OSError, TimeoutError) as exc:
            self._error("publish", exc)
            return False
        finally:
            await client.close()
        counters = recorder.counters[0]
        row: dict[str, Any] = {
            "phase": "publish", "measured": True, "node": node + 1,
            "seconds": round(after.wall - before.wall, 3), "published": counters.published,
            "acked": counters.acked, "failed": counters.failed,
            "pub_rate": round(counters.published / max(1e-9, after.wall - before.wall), 1),
            "cpu_ms": sampler.cpu_ms(before, after), **sampler.cpu_figures(before, after)}
        if "redis_commands" in row:
            row["redis_per_publish"] = per_publish(row["redis_commands"], counters.published)
        self.result.phases.append(row)
        if counters.acked != args.events:
            self.result.errors["publish not acked"] = args.events - counters.acked
            return False
        return True

    async def _replay(self, index: int, sampler: Sampler) -> None:
        args = self.args
        node = index % len(self.endpoints)
        client = ReplayClient(self.endpoints[node], args.transport, Recorder(), args.channel)
        row: dict[str, Any] = {"phase": f"replay {index + 1}", "measured": True,
                               "node": node + 1}
        try:
            async with asyncio.timeout(args.timeout):
                await client.handshake()
                await client.start(self.deadline)
                last = client.wait_for(self.run_id, args.events - 1)
                before = sampler.snapshot()
                start = time.time_ns()
                await client.replay(args.replay_from)
                replied = time.time_ns()
                arrived = await last
                after = sampler.snapshot()
                await asyncio.sleep(args.drain)  # anything after the last event is a duplicate
        except (BayeuxError, OSError, TimeoutError) as exc:
            self._error("replay", exc)
            row["check"] = check_replay(client.events, self.run_id, args.events,
                                        args.replay_from)
            self.result.phases.append(row)
            return
        finally:
            await client.close()
        received = len([e for e in client.events if e[3] <= arrived])
        row.update(
            subscribe_to_last_ms=round((arrived - start) / 1e6, 2),
            subscribe_reply_ms=round((replied - start) / 1e6, 2),
            first_event_ms=round((client.events[0][3] - start) / 1e6, 2),
            events_per_s=round(received / max(1e-9, (arrived - start) / 1e9), 1),
            seconds=round(after.wall - before.wall, 3),
            check=check_replay(client.events, self.run_id, args.events, args.replay_from),
            cpu_ms=sampler.cpu_ms(before, after), **sampler.cpu_figures(before, after))
        self.result.phases.append(row)


async def wait_until(condition: Callable[[], bool], every: float = 0.001,
                     timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``timeout`` seconds."""
    for _ in range(int(timeout / every) + 1):
        if condition():
            return
        await asyncio.sleep(every)
    raise TimeoutError(f"condition not met in {timeout:.0f}s")


# ---------------------------------------------------------------------------
# Probe: one client, every frame printed
# ---------------------------------------------------------------------------
async def probe(url: str, transport: str, seconds: float) -> None:
    """Handshake, subscribe, connect, publish once, wait, disconnect; print the wire."""
    start = time.time()

    def trace(direction: str, body: bytes) -> None:
        print(f"{time.time() - start:8.3f}s {direction} {body.decode(errors='replace')}")

    recorder = Recorder()
    client = BayeuxClient(Endpoint.parse(url), transport, recorder, trace=trace)
    try:
        await client.handshake()
        print(f"cookies: {client.jar.header or '(none)'}")
        await client.subscribe(["/probe/a"])
        await client.start(time.time() + seconds + 10)
        client.publish("/probe/a", {"t": time.time_ns(), "p": "probe"}, 1)
        await asyncio.sleep(seconds)
    finally:
        await client.close()
    await asyncio.sleep(0.2)
    counters = recorder.counters[0]
    print(f"delivered {counters.delivered}, acked {counters.acked}, connect replies "
          f"{counters.connects}, errors {dict(recorder.errors)} {recorder.samples}")


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.1f}"


def render(result: RunResult) -> str:
    s = result.settings
    placement = " ".join(f"{n['name']}:{n.get('cpus')}" for n in s.get("nodes", []))
    lines = [f"== {result.scenario}: transport={s.get('transport')} clients={s.get('clients')} "
             f"workers={s.get('workers')} client_cpus={s.get('client_cpus')} "
             f"engine={s.get('engine')} nodes={s.get('node_count')} ({placement}) "
             f"redis_cpus={s.get('redis_cpus')} server_pid={s.get('server_pid')} "
             f"uvloop={s.get('uvloop')} url={s.get('url')}"]
    if result.scenario == "idle":
        lines += render_idle(result)
    elif result.scenario == "replay":
        lines += render_replay(result)
    else:
        lines += render_phases(result)
    t = result.totals
    if result.scenario not in ("idle", "replay"):
        lines.append(
            f"totals: sessions {fmt(t.get('sessions'))} (setup failed {fmt(t.get('setup_failed'))})"
            f", published {fmt(t.get('published'))}, acked {fmt(t.get('acked'))}, failed "
            f"{fmt(t.get('publish_failed'))}, unacked {fmt(t.get('unacked'))}, skipped "
            f"{fmt(t.get('skipped'))}; delivered {fmt(t.get('delivered'))} of "
            f"{fmt(t.get('expected'))} expected for acked publishes "
            f"(missing {fmt(t.get('missing_pct'), 3)}%: lost or still in flight after the drain;"
            f" below 0: publishes delivered before their ack came)"
            f", untimed {fmt(t.get('untimed'))}, "
            f"alive at end {fmt(t.get('alive_at_end'))}")
        best = t.get("best_under_p99")
        lines.append(
            f"highest rate with p99 < {fmt(s.get('p99_target'))} ms: "
            + ("none" if best is None else
               f"{best['phase']} (pub/s {fmt(best['pub_rate'], 0)}, delivered/s "
               f"{fmt(best['delivered_rate'], 0)}, p50 {fmt(best['latency_ms']['p50'], 2)} / "
               f"p99 {fmt(best['latency_ms']['p99'], 2)} ms)"))
    server = result.server
    per_node = ", ".join(f"{n['name']} {mb(n.get('max_rss_kb'))}/{mb(n.get('vm_hwm_kb'))}"
                         for n in server.get("nodes", []))
    lines.append(f"server RSS: max sampled {mb(server.get('max_rss_kb'))} MB, "
                 f"VmHWM (peak) {mb(server.get('vm_hwm_kb'))} MB"
                 + (f" (per node, sampled/peak MB: {per_node})" if len(s.get("nodes", [])) > 1
                    else "")
                 + (f"; redis {mb(server.get('redis_max_rss_kb'))} MB"
                    if "redis_max_rss_kb" in server else ""))
    for kind, count in sorted(result.errors.items()):
        sample = result.samples.get(kind, "")
        lines.append(f"error: {kind} x{count}" + (f"  e.g. {sample[:200]}" if sample else ""))
    return "\n".join(lines)


def cluster_run(result: RunResult) -> bool:
    """Whether to show per-node and Redis columns."""
    return result.settings.get("engine") == "redis" or result.settings.get("node_count", 1) > 1


def node_cpus_text(row: dict[str, Any]) -> str:
    return "/".join("-" if v is None else f"{v:.0f}" for v in row.get("node_cpu_pct", []))


def render_phases(result: RunResult) -> list[str]:
    cluster = cluster_run(result)
    head = (f"{'phase':<12}{'pub/s tgt':>10}{'pub/s':>10}{'deliv/s':>11}{'expect/s':>11}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}{'srv cpu%':>9}"
            + (f"{'node cpu%':>12}{'redis%':>8}" if cluster else "")
            + f"{'cli cpu%':>9}{'sirq%':>7}{'other%':>8}{'cores busy%':>13}{'srv rss MB':>11}"
            f"{'conn/s':>9}{'dlv/frm':>9}" + (f"{'cmd/pub':>9}" if cluster else ""))
    lines = [head]
    for p in result.phases:
        lat = p.get("latency_ms", {})
        cores = "/".join(f"{c:.0f}" for c in p.get("core_busy_pct", []))
        mark = "" if p["measured"] else "*"
        cluster_cols = (f"{node_cpus_text(p):>12}{fmt(p.get('redis_cpu_pct')):>8}"
                        if cluster else "")
        per_pub = p.get("redis_per_publish", {}).get("total") if p.get("published") else None
        lines.append(
            f"{p['phase'] + mark:<12}{fmt(p['target_pub_rate'], 0):>10}"
            f"{fmt(p.get('pub_rate'), 0):>10}{fmt(p.get('delivered_rate'), 0):>11}"
            f"{fmt(p.get('expected_rate'), 0):>11}{fmt(lat.get('p50'), 2):>9}"
            f"{fmt(lat.get('p99'), 2):>9}{fmt(lat.get('p99.9'), 2):>10}{fmt(lat.get('max'), 1):>9}"
            f"{fmt(p.get('server_cpu_pct')):>9}{cluster_cols}{fmt(p.get('client_cpu_pct')):>9}"
            f"{fmt(p.get('softirq_pct')):>7}{fmt(p.get('other_cpu_pct')):>8}{cores:>13}"
            f"{mb(p.get('server_rss_max_kb')):>11}{fmt(p.get('connect_rate'), 0):>9}"
            f"{fmt(p.get('deliveries_per_frame'), 2):>9}"
            + (f"{fmt(per_pub, 2):>9}" if cluster else ""))
    lines.append("(* = not measured: warmup/drain. cpu% is of one core; srv cpu% = all nodes"
                 " together. sirq% = kernel softirq time (loopback TCP), charged to no process."
                 " other% = other processes: when high, the machine was shared and the figures"
                 " are skewed)")
    for p in result.phases:
        if p["measured"] and "redis_per_publish" in p:
            lines.append(f"redis commands per publish, {p['phase']}: "
                         + render_per_publish(p["redis_per_publish"]))
    return lines


def render_per_publish(figures: dict[str, Any]) -> str:
    groups = ", ".join(f"{g} {v:.3f}" for g, v in figures["groups"].items())
    commands = ", ".join(f"{c} {v:.3f}" for c, v in figures["commands"].items())
    return (f"{figures['total']:.3f} over {fmt(figures['publishes'])} publishes ({groups}; "
            f"{commands})")


def render_replay(result: RunResult) -> list[str]:
    lines = []
    for p in result.phases:
        used = p.get("cpu_ms", {})
        common = "cpu ms: " + ", ".join(f"{name} {fmt(ms)}" for name, ms in used.items())
        if p["phase"] == "publish":
            lines.append(
                f"publish: {fmt(p.get('acked'))} of {fmt(p.get('published'))} durable publishes "
                f"acked (failed {fmt(p.get('failed'))}) in {fmt(p.get('seconds'), 2)} s = "
                f"{fmt(p.get('pub_rate'), 0)}/s via node {p.get('node')}; {common}")
            if "redis_per_publish" in p:
                lines.append("  redis commands per publish (script-internal ones counted too): "
                             + render_per_publish(p["redis_per_publish"]))
            continue
        check = p.get("check", {})
        verdict = "OK" if check.get("ok") else f"FAILED: {check.get('problems')}"
        lines.append(
            f"{p['phase']} via node {p.get('node')}: {fmt(check.get('received'))} events "
            f"(ids {fmt(check.get('first_id'))}..{fmt(check.get('last_id'))}) in "
            f"{fmt(p.get('subscribe_to_last_ms'), 1)} ms = {fmt(p.get('events_per_s'), 0)} "
            f"events/s; subscribe reply at {fmt(p.get('subscribe_reply_ms'), 1)} ms, first event "
            f"at {fmt(p.get('first_event_ms'), 1)} ms; {common}; check {verdict}")
        if p.get("redis_commands"):
            lines.append(f"  redis commands: {p['redis_commands']}")
    whole = result.totals.get("whole_run")
    if whole:
        lines.append(
            f"whole run (publish, replays, pauses): server cpu {fmt(whole['server_cpu_pct'])}% "
            f"({node_cpus_text(whole)}), redis {fmt(whole.get('redis_cpu_pct'))}%, client "
            f"{fmt(whole['client_cpu_pct'])}%, sirq {fmt(whole['softirq_pct'])}%, other "
            f"{fmt(whole['other_cpu_pct'])}% (other processes: high means a shared machine)")
    summary = result.totals.get("replay_ms")
    if summary:
        lines.append(f"subscribe -> last event: min {fmt(summary['min'], 1)} / median "
                     f"{fmt(summary['median'], 1)} / max {fmt(summary['max'], 1)} ms over "
                     f"{summary['runs']} replays; all checks "
                     f"{'OK' if result.totals.get('all_ok') else 'NOT OK'}")
    return lines


def render_idle(result: RunResult) -> list[str]:
    t = result.totals
    hold = result.phases[0] if result.phases else {}
    return [
        f"sessions established {fmt(t.get('sessions'))} (failed {fmt(t.get('setup_failed'))}), "
        f"alive after hold {fmt(t.get('alive_at_end'))}, connect replies during hold "
        f"{fmt(hold.get('connects'))}",
        f"server RSS before {mb(t.get('rss_before_kb'))} MB, after {mb(t.get('rss_after_kb'))} MB"
        f", end of hold {mb(t.get('rss_end_kb'))} MB -> {fmt(t.get('rss_per_session_kb'), 2)} "
        f"KB/session",
        f"hold phase: server cpu {fmt(hold.get('server_cpu_pct'))}%, client cpu "
        f"{fmt(hold.get('client_cpu_pct'))}%",
    ]


def append_json(path: str, result: RunResult) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
              "git": git_revision(), **asdict(result)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def node_cpu_lists(text: str) -> list[list[int]]:
    """``0`` (every node on core 0) or ``0/1/0-1`` (node k on the k-th, cycling)."""
    return [cpu_list(part) for part in text.split("/")]


def node_cpus(args: argparse.Namespace, index: int) -> list[int]:
    lists: list[list[int]] = args.server_cpus
    return lists[index % len(lists)]


def url_list(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    for url in urls:
        Endpoint.parse(url)  # refuses anything but a local host
    if not urls:
        raise argparse.ArgumentTypeError("at least one URL")
    return urls


def rate_list(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",") if r]
    if not rates or any(r < 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be a comma list of numbers >= 0")
    return rates


def parser() -> argparse.ArgumentParser:
    default_python = REPO / ".venv" / "bin" / "python"
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("target")
    g.add_argument("--url", dest="urls", type=url_list,
                   default=["http://127.0.0.1:8080/cometd"],
                   help="Bayeux endpoint (127.0.0.1 only), or a comma list of one per node; "
                   "with --spawn-server only its path")
    g.add_argument("--transport", choices=["websocket", "long-polling"], default="websocket")
    g.add_argument("--server-pid", type=int, help="pid to sample (default: who listens on port)")
    g.add_argument("--spawn-server", action="store_true",
                   help="start `python -m MODULE` pinned to --server-cpus, stop it afterwards")
    g.add_argument("--server-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed as --option KEY=VALUE to the spawned server (repeatable)")
    g.add_argument("--server-cpus", type=node_cpu_lists, default=[[0]],
                   help="cores for each spawned node, e.g. 0 or 0-1 (default 0); per node with "
                   "'/': 0/1/0")
    g.add_argument("--server-module", default="bayeux",
                   help="module run as `python -m MODULE --host --port [--option]`")
    g.add_argument("--server-python", default=str(default_python if default_python.exists()
                                                  else sys.executable),
                   help="interpreter for the spawned server (default: the repo's .venv)")
    g = common.add_argument_group("cluster (Redis engine)")
    g.add_argument("--redis", action="store_true",
                   help="with --spawn-server: spawn a redis-server (loopback, persistence off) "
                   "and run the nodes on the Redis engine")
    g.add_argument("--nodes", type=int, default=1,
                   help="with --spawn-server --redis: server nodes sharing the Redis; clients "
                   "connect to them round-robin (default 1)")
    g.add_argument("--redis-cpus", type=cpu_list,
                   help="cores for the spawned redis-server (default: the client cores)")
    g.add_argument("--redis-url", help="without --spawn-server: the cluster's Redis "
                   "(127.0.0.1), read for CPU and INFO commandstats")
    g.add_argument("--publisher-node", type=int, default=1,
                   help="node (1-based) of the fanout and replay publisher (default 1)")
    g = common.add_argument_group("load")
    g.add_argument("--clients", type=int,
                   help="simulated clients (default: fanout/cometd-bench 1000, idle 10000)")
    g.add_argument("--workers", type=int, help="client processes (default: one per client cpu)")
    g.add_argument("--client-cpus", type=cpu_list,
                   help="pin client processes (default with --spawn-server: the other cores)")
    g.add_argument("--duration", type=float,
                   help="seconds per measured phase (default 10; probe 2)")
    g.add_argument("--connect-concurrency", type=int, default=100,
                   help="simultaneous session set-ups per worker")
    g.add_argument("--seed", type=int, default=1)
    g = common.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="append one JSON line per run to FILE")
    g.add_argument("--label", default=None, help="free text stored with the JSON record")
    g.add_argument("--p99-target", type=float, default=50.0,
                   help="report the highest measured rate with p99 below this (ms, default 50)")
    g.add_argument("--trace-file", metavar="FILE",
                   help="append the wire exchange of one client (worker 0's first) to FILE")

    traffic = argparse.ArgumentParser(add_help=False)
    g = traffic.add_argument_group("traffic")
    g.add_argument("--rate", dest="rates", type=rate_list,
                   help="total publishes/s; a comma list runs one measured phase per rate (ramp);"
                   " default fanout 100 (x1000 subscribers = 100k deliveries/s), cometd-bench 900")
    g.add_argument("--warmup", type=float, default=3.0,
                   help="seconds at the first rate, unmeasured")
    g.add_argument("--drain", type=float, default=2.0, help="seconds after publishing stops")
    g.add_argument("--message-size", type=int, default=50, help="bytes of JSON in each data")
    g.add_argument("--batch", type=int, default=1,
                   help="publishes per frame/POST when on schedule (more when behind)")
    g.add_argument("--max-backlog", type=float, default=1.0,
                   help="seconds of unacknowledged publishes before new ones are skipped")

    top = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("fanout", parents=[common, traffic],
                       help="1 publisher, N subscribers on one channel")

    p = sub.add_parser("cometd-bench", parents=[common, traffic],
                       help="CometD's benchmark: clients in rooms, random publishers")
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--rooms-per-client", type=int, default=10)

    p = sub.add_parser("idle", parents=[common], help="N idle sessions: server RSS per session")
    p.add_argument("--rooms", type=int, default=100,
                   help="each session subscribes to one of this many channels (0: none)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the last set-up and the RSS reading")
    p.set_defaults(warmup=0.0, drain=0.0, message_size=50, batch=1, max_backlog=1.0)
    p = sub.add_parser("probe", parents=[common],
                       help="one client: handshake, subscribe, publish; prints every frame")

    p = sub.add_parser("replay", parents=[common],
                       help="publish durable events, then time their replay to new clients")
    p.add_argument("--events", type=int, default=10_000, help="durable events to publish")
    p.add_argument("--channel", default="/events/x",
                   help="durable channel (spawned servers get replay_channels=/events/** "
                   "unless --server-option sets replay_channels)")
    p.add_argument("--replay-from", type=int, default=0,
                   help="replay id in the subscribe's ext.replay (events after it come back)")
    p.add_argument("--repeat", type=int, default=3,
                   help="replays, each by a fresh client (round-robin over the nodes)")
    p.add_argument("--window", type=int, default=1000,
                   help="most unacknowledged publishes while publishing the events")
    p.add_argument("--batch", type=int, default=100, help="publishes per frame/POST")
    p.add_argument("--message-size", type=int, default=50, help="bytes of JSON in each data")
    p.add_argument("--drain", type=float, default=1.0,
                   help="seconds to keep listening after the last event (duplicates show)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="bound on the publishing and on each replay (seconds)")
    return top


# Per-scenario defaults, applied after parsing: set_defaults() on subparsers would
# leak between them through the shared parent actions.
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 1000, "rates": [100.0], "duration": 10.0},
    "cometd-bench": {"clients": 1000, "rates": [900.0], "duration": 10.0},
    "idle": {"clients": 10000, "rates": [0.0], "duration": 10.0},
    "probe": {"clients": 1, "rates": [0.0], "duration": 2.0},
    "replay": {"clients": 1, "rates": [0.0], "duration": 0.0},
}


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    for key, value in SCENARIO_DEFAULTS[args.scenario].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.clients < 1:
        raise SystemExit("--clients must be >= 1")
    if args.nodes < 1 or (args.nodes > 1 and not args.redis):
        raise SystemExit("--nodes N > 1 needs --redis (nodes share fan-out through Redis)")
    if args.redis and not args.spawn_server:
        raise SystemExit("--redis spawns a Redis with the nodes: use it with --spawn-server "
                         "(or --redis-url to read an existing cluster's Redis)")
    if not args.spawn_server:
        args.nodes = len(args.urls)
    if args.scenario == "replay" and args.spawn_server and not any(
            o.partition("=")[0].strip() == "replay_channels" for o in args.server_option):
        args.server_option = [*args.server_option, "replay_channels=/events/**"]
    if args.client_cpus is None and args.spawn_server:
        used = {cpu for index in range(args.nodes) for cpu in node_cpus(args, index)}
        others = sorted(os.sched_getaffinity(0) - used)
        args.client_cpus = others or None
    if args.redis_cpus is None and args.redis:
        args.redis_cpus = args.client_cpus
    if args.workers is None:
        args.workers = len(args.client_cpus) if args.client_cpus else 1
    args.workers = max(1, min(args.workers, args.clients))
    return args


def main(argv: list[str] | None = None) -> int:
    args = finish_args(parser().parse_args(argv))
    raise_nofile()
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    target = Target.spawn(args) if args.spawn_server else Target.attach(args)
    try:
        if args.scenario == "probe":
            run_loop(probe(target.urls[0], args.transport, args.duration))
            return 0
        if args.scenario == "replay":
            result = ReplayBench(args, target).run()
        else:
            result = Controller(args, target).run()
    finally:
        target.stop()
    print(render(result))
    if args.json:
        append_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
