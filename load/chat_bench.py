#!/usr/bin/env python3
"""Chat benchmark: N concurrent GMS chats, each a customer on Chat API v2 over CometD websocket
and an agent on the agent API, exchanging messages with typing events.

Every chat sends ``--rate`` messages per second (default 0.5: one every 2 s), spread evenly
over the chats; the customer and the agent take turns, each sending a typing event first. The
run reports, per direction (customer to agent, agent to customer), the end-to-end latency from
send to the other side receiving the Message event (p50 / p90 / p99 / max), messages and typing
events per second, the server's CPU (and per 1,000 chats) and RSS, and with ``--redis`` Redis's
CPU, memory and commands per chat message. Only 127.0.0.1 is ever targeted.

    .venv/bin/python load/chat_bench.py --spawn-server --chats 1000
    .venv/bin/python load/chat_bench.py --spawn-server --redis --chats 1000
    .venv/bin/python load/chat_bench.py --spawn-server --chats 100 --duration 20

The process, phase and sampling machinery (spawned server pinned to core 0, worker processes,
warm-up / measured / drain phases, CPU and RSS sampling, Redis command counts) is
``bayeux_bench``'s; the chat parties are in ``chat_clients``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bayeux_bench import (
    REPO,
    Controller,
    RunResult,
    Sampler,
    Target,
    append_json,
    build_schedule,
    cpu_list,
    fmt,
    mb,
    node_cpu_lists,
    raise_nofile,
    rate_list,
    recv,
    run_loop,
    sleep_until,
    url_list,
)
from bayeux_client import Endpoint
from bench_redis import per_publish
from bench_stats import Histogram, Phase, PhaseCounters, Recorder
from chat_clients import ERRORS, AgentDesk, CustomerClient, Directions

DIRECTIONS = ("c2a", "a2c")
DIRECTION_NAMES = {"c2a": "customer -> agent", "a2c": "agent -> customer"}


# ---------------------------------------------------------------------------
# Plans and the shared schedule
# ---------------------------------------------------------------------------
@dataclass
class ChatPlan:
    """What one worker process simulates: some customers and some agents."""

    index: int
    url: str  # the customers' CometD endpoint (the agents' base URL is derived from it)
    service: str
    chats: int  # in the whole run: slot k of `chats` starts at k/chats of an interval
    slots: list[int]  # the local customers
    agents: list[str]  # the local agents' names
    password: str
    connect_concurrency: int
    setup_timeout: float
    max_backlog: float
    deadline: float
    cpus: list[int] | None


def agent_names(count: int) -> list[str]:
    return [f"bench{index + 1:04d}" for index in range(count)]


def build_plans(args: argparse.Namespace, url: str, seconds: float) -> list[ChatPlan]:
    names = agent_names(args.agents)
    setup_timeout = 60 + args.chats / 20
    return [
        ChatPlan(index=index, url=url, service=args.service, chats=args.chats,
                 slots=list(range(index, args.chats, args.workers)),
                 agents=names[index::args.workers], password=args.agent_password,
                 connect_concurrency=args.connect_concurrency, setup_timeout=setup_timeout,
                 max_backlog=args.max_backlog,
                 deadline=time.time() + setup_timeout + seconds + 120, cpus=args.client_cpus)
        for index in range(args.workers)]


def send_times(schedule: list[Phase], slot: int, chats: int, customer: bool) -> list[int]:
    """When the chat in ``slot`` sends (ns). In each phase with a rate, turn k falls at
    (slot / chats + k) intervals from the phase start; turns are numbered through the whole
    run, the customer taking the even ones and the agent the odd ones, so the two alternate
    across phase boundaries too. Both sides compute this alone (maybe in different
    processes) from the shared schedule."""
    times, turn = [], 0
    for phase in schedule:
        if phase.rate <= 0:
            continue
        interval_ns = 1e9 / phase.rate
        for k in range(int(phase.seconds * phase.rate) + 1):
            at = phase.start_ns + int((slot / chats + k) * interval_ns)
            if at >= phase.end_ns:
                break
            if (turn % 2 == 0) == customer:
                times.append(at)
            turn += 1
    return times


# ---------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------
def chat_worker_main(plan: ChatPlan, conn: Connection) -> None:
    raise_nofile()
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller decides when to stop
    run_loop(ChatWorker(plan, conn).run())


class ChatWorker:
    def __init__(self, plan: ChatPlan, conn: Connection) -> None:
        self.plan = plan
        self.conn = conn
        self.rec = Directions(Recorder(), Recorder(), Recorder())
        self.customers: list[CustomerClient | None] = []
        self.desks: list[AgentDesk] = []

    async def run(self) -> None:
        try:
            await asyncio.wait_for(self._run(), max(1.0, self.plan.deadline - time.time()))
        except TimeoutError:
            self.rec.control.error("worker deadline reached")
        finally:
            await self._close_all()

    async def _run(self) -> None:
        agents_ready = await self._open_agents()
        await self._open_customers()
        await self._accepts_settled()
        self.conn.send(("ready", {
            "customers": sum(c is not None for c in self.customers),
            "customers_failed": sum(c is None for c in self.customers),
            "agents": agents_ready, "accepted": sum(len(d.chats) for d in self.desks),
            **self._errors()}))
        kind, schedule = await asyncio.to_thread(recv, self.conn,
                                                 self.plan.deadline - time.time())
        if kind != "go":
            return
        for recorder in (self.rec.c2a, self.rec.a2c, self.rec.control):
            recorder.set_schedule(schedule)
        await self._send_on_schedule(schedule)
        await sleep_until(schedule[-1].end_ns / 1e9)
        self.conn.send(("result", {
            "counters": {name: [c.to_wire() for c in getattr(self.rec, name).counters]
                         for name in (*DIRECTIONS, "control")},
            "alive": sum(1 for c in self.customers if c is not None and c.alive),
            **self._errors()}))
        await asyncio.to_thread(recv, self.conn, self.plan.deadline - time.time())

    def _errors(self) -> dict[str, Any]:
        control = self.rec.control
        return {"errors": dict(control.errors), "samples": control.samples}

    async def _open_agents(self) -> int:
        base = self.plan.url.split("/genesys/", 1)[0]
        self.desks = [AgentDesk(base, name, self.plan.password, self.rec)
                      for name in self.plan.agents]
        results = await asyncio.gather(*(self._open_agent(desk) for desk in self.desks))
        return sum(results)

    async def _open_agent(self, desk: AgentDesk) -> bool:
        try:
            async with asyncio.timeout(self.plan.setup_timeout):
                await desk.log_in(self.plan.deadline)
            return True
        except ERRORS as exc:
            self.rec.control.error(f"agent setup {type(exc).__name__}", str(exc))
            return False

    async def _open_customers(self) -> None:
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        deadline = time.time() + self.plan.setup_timeout
        endpoint = Endpoint.parse(self.plan.url)
        self.customers = list(await asyncio.gather(
            *(self._open_customer(endpoint, slot, gate, deadline) for slot in self.plan.slots)))

    async def _open_customer(self, endpoint: Endpoint, slot: int, gate: asyncio.Semaphore,
                             deadline: float) -> CustomerClient | None:
        async with gate:
            customer = CustomerClient(endpoint, self.plan.service, slot, self.rec)
            try:
                await customer.open_chat(max(0.1, deadline - time.time()), self.plan.deadline)
                return customer
            except ERRORS as exc:
                self.rec.control.error(f"customer setup {type(exc).__name__}", str(exc))
                await customer.close(disconnect=False)
                return None

    async def _accepts_settled(self) -> None:
        """Local agents' Accept requests still in flight (the customer may see the join
        before the agent sees the answer)."""
        for _ in range(500):
            if not any(desk.accepting for desk in self.desks):
                return
            await asyncio.sleep(0.01)

    def _timeline(self, schedule: list[Phase]) -> list[tuple[int, CustomerClient | None,
                                                              AgentDesk | None, str]]:
        """Every local send of the run, in time order: (when, customer or agent, chat id)."""
        chats = self.plan.chats
        events: list[tuple[int, CustomerClient | None, AgentDesk | None, str]] = []
        for customer in self.customers:
            if customer is not None:
                events += [(at, customer, None, "")
                           for at in send_times(schedule, customer.slot, chats, True)]
        for desk in self.desks:
            for chat_id, slot in desk.chats.items():
                events += [(at, None, desk, chat_id)
                           for at in send_times(schedule, slot, chats, False)]
        events.sort(key=lambda event: event[0])
        return events

    async def _send_on_schedule(self, schedule: list[Phase]) -> None:
        """Open loop: each send at its time; a send more than ``max_backlog`` seconds late
        is skipped and counted instead."""
        backlog_ns = int(self.plan.max_backlog * 1e9)
        for at, customer, desk, chat_id in self._timeline(schedule):
            now = time.time_ns()
            if at > now:
                # libuv timers have 1 ms resolution: sends due within it leave together
                await asyncio.sleep(max(0.001, (at - now) / 1e9))
                now = time.time_ns()
            if customer is not None:
                if now - at > backlog_ns or not customer.alive:
                    self.rec.c2a.skipped(at)
                else:
                    customer.send(at)
            elif desk is not None:
                if now - at > backlog_ns:
                    self.rec.a2c.skipped(at)
                else:
                    desk.send(chat_id, at)

    async def _close_all(self) -> None:
        customers = [c for c in self.customers if c is not None]
        self.customers = []
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(
                *(c.close() for c in customers), *(d.close() for d in self.desks),
                return_exceptions=True), 15.0)
        with contextlib.suppress(OSError):
            self.conn.send(("closed", None))


# ---------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------
class ChatController(Controller):
    """bayeux_bench's controller (workers, phases, CPU/RSS sampling) with chat workers."""

    def __init__(self, args: argparse.Namespace, target: Target) -> None:
        seconds = args.warmup + args.duration * len(args.rates) + args.drain
        super().__init__(args, target, build_plans(args, target.urls[0], seconds),
                         chat_worker_main)

    def _run(self, rss_before: int | None) -> None:
        redis_before = self._redis_memory()
        ready = self._gather("ready", self.plans[0].setup_timeout + 60)
        self._note_errors(ready)
        chats = sum(r["customers"] for r in ready)
        totals = self.result.totals
        totals.update(chats=chats, chats_failed=sum(r["customers_failed"] for r in ready),
                      agents=sum(r["agents"] for r in ready),
                      accepted=sum(r["accepted"] for r in ready))
        if not chats:
            raise RuntimeError(f"no chat could be set up: {self.result.samples}")
        rss_after = self.target.rss_kb()
        if rss_before is not None and rss_after is not None:
            totals.update(rss_before_kb=rss_before, rss_after_setup_kb=rss_after,
                          rss_per_chat_kb=round((rss_after - rss_before) / chats, 2))
        redis_after = self._redis_memory()
        if redis_before is not None and redis_after is not None:
            totals.update(redis_used_memory_kb=redis_after // 1024,
                          redis_memory_per_chat_kb=round((redis_after - redis_before)
                                                         / 1024 / chats, 2))
        sampler = Sampler(self.target, [p.pid for p in self.procs])
        schedule = build_schedule(self.args, time.time() + 0.5)
        for pipe in self.pipes:
            pipe.send(("go", schedule))
        self._watch(sampler, schedule)
        results = self._gather("result", 30.0)
        self._aggregate_chat(schedule, results, chats)
        self.result.server.update(server_figures(self.target, sampler))

    def _redis_memory(self) -> int | None:
        redis = self.target.redis
        if redis is None:
            return None
        try:
            return int(redis.client.info("memory")["used_memory"])
        except Exception:
            return None

    def _aggregate_chat(self, schedule: list[Phase], results: list[dict[str, Any]],
                        chats: int) -> None:
        self._note_errors(results)
        merged = {name: merge_counters(results, name, len(schedule) + 2)
                  for name in (*DIRECTIONS, "control")}
        for index, (row, phase) in enumerate(zip(self.result.phases, schedule, strict=True)):
            for name in DIRECTIONS:
                row[name] = direction_figures(merged[name][index + 1], phase.seconds)
            sent = sum(merged[name][index + 1].published for name in DIRECTIONS)
            row["messages_sent_rate"] = round(sent / phase.seconds, 1)
            row["messages_received_rate"] = round(sum(row[n]["received_rate"]
                                                      for n in DIRECTIONS), 1)
            if row.get("server_cpu_pct") is not None:
                row["server_cpu_pct_per_1000_chats"] = round(
                    row["server_cpu_pct"] * 1000 / chats, 1)
            if "redis_commands" in row:
                row["redis_per_message"] = per_publish(row["redis_commands"], sent)
        totals = self.result.totals
        for name in DIRECTIONS:
            whole = PhaseCounters()
            measured = PhaseCounters()
            for index, counters in enumerate(merged[name]):
                whole.merge(counters)
                if 0 < index <= len(schedule) and schedule[index - 1].measured:
                    measured.merge(counters)
            totals[name] = {
                "sent": whole.published, "committed": whole.acked, "failed": whole.failed,
                "skipped": whole.skipped, "received": whole.delivered,
                "typing_received": whole.untimed,
                "missing": whole.published - whole.failed - whole.delivered,
                "measured_latency_ms": latency_ms(measured.hist)}
        control = PhaseCounters()
        for counters in merged["control"]:
            control.merge(counters)
        totals.update(bayeux_publish_failures=control.failed,
                      alive_at_end=sum(r["alive"] for r in results))
        p99s = [totals[n]["measured_latency_ms"]["p99"] for n in DIRECTIONS]
        totals["p99_under_target"] = (None if None in p99s
                                      else all(p < self.args.p99_target for p in p99s))


def merge_counters(results: list[dict[str, Any]], name: str, size: int) -> list[PhaseCounters]:
    merged = [PhaseCounters() for _ in range(size)]
    for report in results:
        for index, wire in enumerate(report["counters"][name]):
            merged[index].merge(PhaseCounters.from_wire(wire))
    return merged


def latency_ms(hist: Histogram) -> dict[str, float | None]:
    figures = {f"p{q * 100:g}": hist.percentile_ms(q) for q in (0.5, 0.9, 0.99, 0.999)}
    figures["max"] = hist.max_us / 1000 if hist.total else None
    return figures


def direction_figures(counters: PhaseCounters, seconds: float) -> dict[str, Any]:
    per_s = 1 / max(seconds, 1e-9)
    return {"sent": counters.published, "received": counters.delivered,
            "skipped": counters.skipped, "failed": counters.failed,
            "typing_received": counters.untimed,
            "sent_rate": round(counters.published * per_s, 1),
            "received_rate": round(counters.delivered * per_s, 1),
            "typing_rate": round(counters.untimed * per_s, 1),
            "latency_ms": latency_ms(counters.hist)}


def server_figures(target: Target, sampler: Sampler) -> dict[str, Any]:
    node = target.nodes[0]
    figures: dict[str, Any] = {"max_rss_kb": sampler.max_rss_kb.get("nodes") or None,
                               "vm_hwm_kb": node.peak_rss_kb()}
    if target.redis is not None:
        figures["redis_max_rss_kb"] = sampler.max_rss_kb.get("redis")
    return figures


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def render(result: RunResult) -> str:
    s, t = result.settings, result.totals
    redis = s.get("engine") == "redis"
    lines = [
        f"== chat: {t.get('chats')} chats (failed {fmt(t.get('chats_failed'))}), "
        f"{t.get('agents')} agents x max {s.get('chats_per_agent')} chats, engine="
        f"{s.get('engine')}, rate {s.get('rates')} msg/s per chat, workers {s.get('workers')} "
        f"on cpus {s.get('client_cpus')}, server {s.get('url')} on cpus {s.get('server_cpus')}",
        f"{'phase':<10}{'direction':<19}{'sent/s':>8}{'recv/s':>8}{'typing/s':>9}"
        f"{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}{'srv cpu%':>9}"
        f"{'/1k chats':>10}{'cli cpu%':>9}{'other%':>8}{'srv rss MB':>11}"
        + (f"{'redis%':>8}{'cmd/msg':>9}" if redis else "")]
    for row in result.phases:
        mark = "" if row["measured"] else "*"
        for position, name in enumerate(DIRECTIONS):
            d = row.get(name, {})
            lat = d.get("latency_ms", {})
            head = f"{row['phase'] + mark if position == 0 else '':<10}{DIRECTION_NAMES[name]:<19}"
            cells = (f"{fmt(d.get('sent_rate'), 0):>8}{fmt(d.get('received_rate'), 0):>8}"
                     f"{fmt(d.get('typing_rate'), 0):>9}{fmt(lat.get('p50'), 2):>10}"
                     f"{fmt(lat.get('p90'), 2):>10}{fmt(lat.get('p99'), 2):>10}"
                     f"{fmt(lat.get('max'), 1):>10}")
            if position == 0:
                per_message = row.get("redis_per_message", {}).get("total")
                cells += (f"{fmt(row.get('server_cpu_pct')):>9}"
                          f"{fmt(row.get('server_cpu_pct_per_1000_chats')):>10}"
                          f"{fmt(row.get('client_cpu_pct')):>9}{fmt(row.get('other_cpu_pct')):>8}"
                          f"{mb(row.get('server_rss_max_kb')):>11}"
                          + (f"{fmt(row.get('redis_cpu_pct')):>8}{fmt(per_message, 2):>9}"
                             if redis else ""))
            lines.append(head + cells)
    lines.append("(* = not measured: warmup/drain. cpu% is of one core; /1k chats = srv cpu% "
                 "scaled to 1,000 chats; other% = other processes (high: a shared machine); "
                 "cmd/msg = Redis commands per chat message sent)")
    for name in DIRECTIONS:
        d = t.get(name, {})
        lat = d.get("measured_latency_ms", {})
        lines.append(
            f"{DIRECTION_NAMES[name]}: sent {fmt(d.get('sent'))}, committed "
            f"{fmt(d.get('committed'))}, failed {fmt(d.get('failed'))}, skipped "
            f"{fmt(d.get('skipped'))}, received {fmt(d.get('received'))} (missing "
            f"{fmt(d.get('missing'))}), typing events received {fmt(d.get('typing_received'))}; "
            f"measured p50 {fmt(lat.get('p50'), 2)} / p90 {fmt(lat.get('p90'), 2)} / p99 "
            f"{fmt(lat.get('p99'), 2)} / max {fmt(lat.get('max'), 1)} ms")
    verdict = {True: "yes", False: "NO", None: "-"}[t.get("p99_under_target")]
    lines.append(f"p99 under {fmt(s.get('p99_target'))} ms both ways: {verdict}; server RSS "
                 f"{mb(t.get('rss_before_kb'))} -> {mb(t.get('rss_after_setup_kb'))} MB after "
                 f"set-up ({fmt(t.get('rss_per_chat_kb'), 1)} KB/chat), max sampled "
                 f"{mb(result.server.get('max_rss_kb'))} MB"
                 + (f"; Redis used_memory {fmt(t.get('redis_used_memory_kb'))} KB "
                    f"({fmt(t.get('redis_memory_per_chat_kb'), 2)} KB/chat)" if redis else ""))
    for row in result.phases:
        if row["measured"] and "redis_per_message" in row:
            figures = row["redis_per_message"]
            commands = ", ".join(f"{c} {v:.2f}" for c, v in figures["commands"].items())
            lines.append(f"redis commands per chat message, {row['phase']}: "
                         f"{figures['total']:.2f} ({commands})")
    for kind, count in sorted(result.errors.items()):
        sample = result.samples.get(kind, "")
        lines.append(f"error: {kind} x{count}" + (f"  e.g. {sample[:200]}" if sample else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Server configuration and command line
# ---------------------------------------------------------------------------
def hash_password(args: argparse.Namespace) -> str:
    """A hash of the agents' password, by the server's own `--hash-password`."""
    done = subprocess.run([args.server_python, "-m", "chat", "--hash-password"], cwd=REPO,
                          input=args.agent_password + "\n", capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def server_config(args: argparse.Namespace) -> str:
    """The INI a benchmark server needs: the agents and their capacity."""
    hashed = hash_password(args)
    agents = "\n".join(f"{name} = {hashed}" for name in agent_names(args.agents))
    return f"[agents]\n{agents}\n\n[routing]\nmax_chats = {args.chats_per_agent}\n"


def parser() -> argparse.ArgumentParser:
    default_python = REPO / ".venv" / "bin" / "python"
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("target")
    g.add_argument("--url", dest="urls", type=url_list,
                   default=["http://127.0.0.1:8080/genesys/cometd"],
                   help="the customers' CometD endpoint (127.0.0.1 only; agents use the same "
                   "host's /api/v2); with --spawn-server only its path")
    g.add_argument("--server-pid", type=int, help="pid to sample (default: who listens on port)")
    g.add_argument("--spawn-server", action="store_true",
                   help="start gms-server with the benchmark's agents, pinned to --server-cpus")
    g.add_argument("--redis", action="store_true",
                   help="with --spawn-server: a redis-server too, and the server on Redis")
    g.add_argument("--redis-url", help="without --spawn-server: the server's Redis, read for "
                   "CPU, memory and commands")
    g.add_argument("--server-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed as --option KEY=VALUE to the spawned server (repeatable)")
    g.add_argument("--server-cpus", type=node_cpu_lists, default=[[0]],
                   help="cores of the spawned server (default 0)")
    g.add_argument("--redis-cpus", type=cpu_list,
                   help="cores of the spawned redis-server (default: the client cores)")
    g.add_argument("--server-python", default=str(default_python if default_python.exists()
                                                  else sys.executable))
    g.add_argument("--write-config", metavar="FILE",
                   help="write the INI (agents, [routing] max_chats) a server needs for these "
                   "settings, to run it yourself, and exit")
    g = p.add_argument_group("chats")
    g.add_argument("--chats", type=int, default=1000, help="concurrent chats (default 1000)")
    g.add_argument("--chats-per-agent", type=int, default=20,
                   help="each agent's max_chats (default 20)")
    g.add_argument("--agents", type=int,
                   help="agents bench0001.. (default: enough for --chats at --chats-per-agent)")
    g.add_argument("--agent-password", default="bench-agent-pw")
    g.add_argument("--service", default="customer-support")
    g.add_argument("--rate", dest="rates", type=rate_list, default=[0.5],
                   help="messages per chat per second, customer and agent taking turns "
                   "(default 0.5: one every 2 s); a comma list runs one measured phase each")
    g.add_argument("--duration", type=float, default=20.0, help="seconds per measured phase")
    g.add_argument("--warmup", type=float, default=5.0,
                   help="seconds at the first rate once every chat is set up, unmeasured")
    g.add_argument("--drain", type=float, default=2.0, help="seconds after sending stops")
    g.add_argument("--max-backlog", type=float, default=1.0,
                   help="a send this many seconds late is skipped (and counted)")
    g = p.add_argument_group("load generator")
    g.add_argument("--workers", type=int, help="client processes (default: one per client cpu)")
    g.add_argument("--client-cpus", type=cpu_list,
                   help="pin client processes (default with --spawn-server: the other cores)")
    g.add_argument("--connect-concurrency", type=int, default=50,
                   help="simultaneous chat set-ups per worker")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="FILE",
                   help="append one JSON line per run (default: load/results/chat-<engine>"
                   ".jsonl)")
    g.add_argument("--no-json", action="store_true", help="write no JSON line")
    g.add_argument("--label", help="free text stored with the JSON record")
    g.add_argument("--p99-target", type=float, default=50.0, help="ms (default 50)")
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.chats < 1 or args.chats_per_agent < 1:
        raise SystemExit("--chats and --chats-per-agent must be >= 1")
    if args.agents is None:
        args.agents = math.ceil(args.chats / args.chats_per_agent)
    if args.agents * args.chats_per_agent < args.chats:
        raise SystemExit("--agents x --chats-per-agent must hold --chats")
    if args.redis and not args.spawn_server:
        raise SystemExit("--redis spawns a Redis: use it with --spawn-server (or --redis-url)")
    # what bayeux_bench's Target, Server and settings() read
    args.scenario, args.nodes, args.server_module, args.publisher_node = "chat", 1, "chat", 1
    args.clients = args.chats
    if args.client_cpus is None and args.spawn_server:
        others = sorted(os.sched_getaffinity(0) - set(args.server_cpus[0]))
        args.client_cpus = others or None
    if args.redis_cpus is None and args.redis:
        args.redis_cpus = args.client_cpus
    if args.workers is None:
        args.workers = len(args.client_cpus) if args.client_cpus else 1
    args.workers = max(1, min(args.workers, args.chats))
    if args.json is None and not args.no_json:
        args.json = str(REPO / "load" / "results" / f"chat-{'redis' if args.redis else 'memory'}"
                        ".jsonl")
    return args


def main(argv: list[str] | None = None) -> int:
    args = finish_args(parser().parse_args(argv))
    if args.write_config:
        Path(args.write_config).write_text(server_config(args))
        print(f"wrote {args.write_config}: run gms-server --config {args.write_config}")
        return 0
    raise_nofile()
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    with tempfile.TemporaryDirectory(prefix="chat_bench_") as tmp:
        if args.spawn_server:
            config = Path(tmp) / "gms.ini"
            config.write_text(server_config(args))
            args.server_args = ["--config", str(config), "--log-level", "WARNING"]
        target = Target.spawn(args) if args.spawn_server else Target.attach(args)
        try:
            controller = ChatController(args, target)
            controller.result.settings.update(
                chats=args.chats, agents=args.agents, chats_per_agent=args.chats_per_agent,
                service=args.service, drain=args.drain, max_backlog=args.max_backlog)
            result = controller.run()
        finally:
            target.stop()
    print(render(result))
    if args.json:
        append_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
