"""Channel matching and the subscription index."""

from __future__ import annotations

from collections import Counter

import pytest

from bayeux import SubscriptionIndex, matches, matching_patterns


def test_matching_patterns_lists_the_channel_then_its_wildcard_ancestors() -> None:
    assert matching_patterns("/a/b/c") == ("/a/b/c", "/a/b/*", "/a/b/**", "/a/**", "/**")


def test_matching_patterns_of_a_top_level_channel() -> None:
    assert matching_patterns("/a") == ("/a", "/*", "/**")


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("/foo/*", "/foo/bar", True),
        ("/foo/*", "/foo", False),
        ("/foo/*", "/foo/bar/baz", False),
        ("/foo/**", "/foo/bar", True),
        ("/foo/**", "/foo/bar/baz", True),
        ("/foo/**", "/foo", False),
        ("/**", "/anything/at/all", True),
        ("/*", "/top", True),
        ("/*", "/top/level", False),
        ("/foo/bar", "/foo/bar", True),
        ("/foo/bar", "/foo/baz", False),
        ("/foo/*", "/foobar/x", False),
        ("/fo/**", "/foo/x", False),
    ],
)
def test_wildcard_semantics(pattern: str, channel: str, expected: bool) -> None:
    assert matches(pattern, channel) is expected


def test_first_add_and_last_remove_are_reported() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert index.add("/a", "s1") is True
    assert index.add("/a", "s2") is False
    assert index.add("/a", "s2") is False
    assert index.count("/a") == 2
    assert index.remove("/a", "s1") is False
    assert index.remove("/a", "s2") is True
    assert index.count("/a") == 0
    assert index.patterns() == []


def test_removing_an_unknown_pattern_or_subscriber_is_harmless() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert index.remove("/nothing", "s1") is False
    index.add("/a", "s1")
    assert index.remove("/a", "stranger") is False
    assert index.count("/a") == 1


def test_overlapping_patterns_deliver_each_subscriber_exactly_once() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for pattern in ("/a/b/c", "/a/b/*", "/a/b/**", "/a/**", "/**"):
        index.add(pattern, "everywhere")
    index.add("/a/b/*", "star")
    index.add("/a/b/c", "exact")
    index.add("/x/**", "elsewhere")
    received = Counter(index.subscribers("/a/b/c"))
    assert received == Counter({"everywhere": 1, "star": 1, "exact": 1})


def test_subscribers_of_a_channel_with_one_matching_pattern() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("/a/*", "s1")
    index.add("/a/*", "s2")
    assert sorted(index.subscribers("/a/b")) == ["s1", "s2"]
    assert list(index.subscribers("/a/b/c")) == []


def test_has_subscribers_follows_wildcards() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("/a/**", "s1")
    assert index.has_subscribers("/a/b/c")
    assert not index.has_subscribers("/a")
    assert not index.has_subscribers("/b/c")
