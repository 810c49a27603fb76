"""Channel matching and the subscription index.

Answers "who gets /a/b/c" by looking up the channel itself and its few wildcard ancestors
(``/a/b/*``, ``/a/b/**``, ``/a/**``, ``/**``), never by scanning every subscription.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Generic, TypeVar

T = TypeVar("T")


@lru_cache(maxsize=16384)
def matching_patterns(channel: str) -> tuple[str, ...]:
    """Every subscription pattern that matches a concrete channel, the channel first.

    ``/a/b/c`` -> ``/a/b/c``, ``/a/b/*``, ``/a/b/**``, ``/a/**``, ``/**``.
    """
    segments = channel[1:].split("/")
    patterns = [channel, "/" + "/".join([*segments[:-1], "*"])]
    for depth in range(len(segments) - 1, -1, -1):
        patterns.append("/" + "/".join([*segments[:depth], "**"]))
    return tuple(patterns)


def matches(pattern: str, channel: str) -> bool:
    """Does a subscription pattern match a concrete channel?"""
    return pattern in matching_patterns(channel)


class SubscriptionIndex(Generic[T]):
    """Pattern -> subscribers, with per-subscriber reverse sets for cheap removal."""

    def __init__(self) -> None:
        self._by_pattern: dict[str, set[T]] = {}

    def add(self, pattern: str, subscriber: T) -> bool:
        """Subscribe; True if this is the pattern's first subscriber."""
        subscribers = self._by_pattern.get(pattern)
        if subscribers is None:
            self._by_pattern[pattern] = {subscriber}
            return True
        subscribers.add(subscriber)
        return False

    def remove(self, pattern: str, subscriber: T) -> bool:
        """Unsubscribe; True if the pattern has no subscribers left."""
        subscribers = self._by_pattern.get(pattern)
        if subscribers is None:
            return False
        subscribers.discard(subscriber)
        if subscribers:
            return False
        del self._by_pattern[pattern]
        return True

    def subscribers(self, channel: str) -> Iterator[T]:
        """Each subscriber of a concrete channel exactly once, whatever patterns it used."""
        found = [s for p in matching_patterns(channel) if (s := self._by_pattern.get(p))]
        if len(found) == 1:
            yield from found[0]
            return
        seen: set[T] = set()
        for subscribers in found:
            for subscriber in subscribers:
                if subscriber not in seen:
                    seen.add(subscriber)
                    yield subscriber

    def has_subscribers(self, channel: str) -> bool:
        return any(p in self._by_pattern for p in matching_patterns(channel))

    def patterns(self) -> list[str]:
        return list(self._by_pattern)

    def count(self, pattern: str) -> int:
        return len(self._by_pattern.get(pattern, ()))
