"""Measurement primitives for bayeux_bench: a log-linear latency histogram and
per-phase counters that worker processes fill in and the controller merges.

The histogram keeps 64 sub-buckets per power of two of microseconds (at most
~1.6% relative error), is a flat list of ints so recording is a few integer
operations, and travels between processes as a sparse ``{bucket: count}`` dict.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SUB_BITS = 6
SUB_COUNT = 1 << SUB_BITS
LINEAR_LIMIT = 2 * SUB_COUNT  # values below this (in us) are recorded exactly
BUCKETS = SUB_COUNT * 48  # covers far more than any latency we can see


def bucket_of(micros: int) -> int:
    """Bucket index of a latency in microseconds."""
    if micros < LINEAR_LIMIT:
        return micros if micros > 0 else 0
    shift = micros.bit_length() - SUB_BITS - 1
    return min((shift << SUB_BITS) + (micros >> shift), BUCKETS - 1)


def bucket_midpoint(index: int) -> float:
    """Representative value (us) of a bucket: its exact value or its midpoint."""
    if index < LINEAR_LIMIT:
        return float(index)
    shift = (index >> SUB_BITS) - 1
    low = (index - (shift << SUB_BITS)) << shift
    return low + ((1 << shift) - 1) / 2


class Histogram:
    """Latency histogram in microseconds."""

    __slots__ = ("counts", "max_us", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.max_us = 0

    def record_ns(self, latency_ns: int) -> None:
        micros = latency_ns // 1000
        self.max_us = max(self.max_us, micros)
        self.counts[bucket_of(micros)] += 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def percentile_ms(self, q: float) -> float | None:
        """Value (ms) at quantile ``q`` in [0, 1]; None when empty."""
        if not self.total:
            return None
        rank = max(1, int(q * self.total + 0.5))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_midpoint(index), float(self.max_us)) / 1000
        return self.max_us / 1000

    def to_sparse(self) -> dict[str, Any]:
        return {
            "buckets": {i: c for i, c in enumerate(self.counts) if c},
            "total": self.total,
            "max_us": self.max_us,
        }

    @classmethod
    def from_sparse(cls, data: dict[str, Any]) -> Histogram:
        hist = cls()
        for index, count in data["buckets"].items():
            hist.counts[int(index)] = count
        hist.total = data["total"]
        hist.max_us = data["max_us"]
        return hist


@dataclass
class Phase:
    """One window of the run schedule (absolute wall-clock times, ns)."""

    name: str
    start_ns: int
    end_ns: int
    rate: float  # total publish rate (messages/s) across all workers
    measured: bool = False

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass
class PhaseCounters:
    """What one worker saw during one phase (deliveries binned by arrival time)."""

    delivered: int = 0
    untimed: int = 0  # deliveries without our timestamp (foreign publishers)
    published: int = 0
    expected: int = 0  # deliveries the publishes of this phase should cause
    skipped: int = 0  # publishes not sent because too many were unacknowledged
    acked: int = 0
    acked_expected: int = 0  # deliveries the acknowledged publishes should cause
    failed: int = 0
    connects: int = 0
    frames: int = 0  # websocket frames / HTTP responses that carried deliveries
    hist: Histogram = field(default_factory=Histogram)

    def merge(self, other: PhaseCounters) -> None:
        for name in ("delivered", "untimed", "published", "expected", "skipped", "acked",
                     "acked_expected", "failed", "connects", "frames"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.hist.merge(other.hist)

    def to_wire(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "hist"}
        data["hist"] = self.hist.to_sparse()
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PhaseCounters:
        fields = {k: v for k, v in data.items() if k != "hist"}
        return cls(**fields, hist=Histogram.from_sparse(data["hist"]))


class Recorder:
    """Per-worker sink for client events, binned into the schedule's phases.

    Phase 0 is "setup" (before the schedule) and the last one is "tail" (after
    it), so every event lands somewhere and nothing is lost from the totals.
    """

    def __init__(self) -> None:
        self.phases: list[Phase] = [Phase("setup", 0, 2**63 - 1, 0.0)]
        self.counters: list[PhaseCounters] = [PhaseCounters()]
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, str] = {}  # first detail seen of each error kind
        self._index = 0
        self._end_ns = 2**63 - 1
        self._current = self.counters[0]
        self._sent = 0
        self._done = 0

    def set_schedule(self, schedule: list[Phase]) -> None:
        first, last = schedule[0].start_ns, schedule[-1].end_ns
        self.phases = [Phase("setup", 0, first, 0.0), *schedule,
                       Phase("tail", last, 2**63 - 1, 0.0)]
        self.counters += [PhaseCounters() for _ in range(len(self.phases) - 1)]
        self._index = 0
        self._current = self.counters[0]
        self._end_ns = first

    def current(self, now_ns: int) -> PhaseCounters:
        if now_ns >= self._end_ns:
            self._advance(now_ns)
        return self._current

    def _advance(self, now_ns: int) -> None:
        while now_ns >= self.phases[self._index].end_ns and self._index + 1 < len(self.phases):
            self._index += 1
        self._current = self.counters[self._index]
        self._end_ns = self.phases[self._index].end_ns

    # -- events reported by clients -------------------------------------------
    def delivered(self, now_ns: int, sent_ns: int) -> None:
        """Hot path (once per delivered message): Histogram.record_ns inlined."""
        counters = self.current(now_ns) if now_ns >= self._end_ns else self._current
        counters.delivered += 1
        hist = counters.hist
        micros = (now_ns - sent_ns) // 1000
        if micros > hist.max_us:
            hist.max_us = micros
        if micros < LINEAR_LIMIT:
            hist.counts[micros if micros > 0 else 0] += 1
        else:
            shift = micros.bit_length() - SUB_BITS - 1
            hist.counts[min((shift << SUB_BITS) + (micros >> shift), BUCKETS - 1)] += 1
        hist.total += 1

    def delivered_untimed(self, now_ns: int) -> None:
        self.current(now_ns).untimed += 1

    def published(self, now_ns: int, expected: int) -> None:
        counters = self.current(now_ns)
        counters.published += 1
        counters.expected += expected
        self._sent += 1

    def skipped(self, now_ns: int) -> None:
        self.current(now_ns).skipped += 1

    def acked(self, now_ns: int, successful: bool, expected: int) -> None:
        counters = self.current(now_ns)
        self._done += 1
        if successful:
            counters.acked += 1
            counters.acked_expected += expected
        else:
            counters.failed += 1

    def connected(self, now_ns: int) -> None:
        self.current(now_ns).connects += 1

    def frame(self, now_ns: int) -> None:
        self.current(now_ns).frames += 1

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if detail and kind not in self.samples:
            self.samples[kind] = detail[:500]

    def outstanding(self) -> int:
        """Publishes sent and not yet acknowledged, over the whole run."""
        return self._sent - self._done
