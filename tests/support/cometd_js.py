"""The official CometD JavaScript client in Node (the npm project tests/interop/node), shared by
the interop and the multi-node suites."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import pytest

from .processes import REPO_ROOT, node_executable

NODE_PROJECT = REPO_ROOT / "tests" / "interop" / "node"
"""The scripts and their node_modules (`npm ci` there installs them)."""


def require_node_client(
    suite: str, packages: Sequence[str] = ("cometd", "cometd-nodejs-client")
) -> None:
    """Fails (never skips): CI installs Node and the npm packages through scripts/test."""
    if node_executable() is None:
        pytest.fail(f"node is not on PATH: {suite} need Node.js >= 20 (see scripts/test)")
    for package in packages:
        if not (NODE_PROJECT / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"npm package {package!r} is not installed in {NODE_PROJECT}/node_modules: "
                "run `cd tests/interop/node && npm ci`"
            )


def describe_sequence(received: Sequence[int], expected: Sequence[int]) -> str:
    """What is wrong with the numbers a client received, compared with those expected."""
    duplicates = sorted(value for value, n in Counter(received).items() if n > 1)
    missing = sorted(set(expected) - set(received))
    unexpected = sorted(set(received) - set(expected))
    first_disorder = next((i for i, (a, b) in enumerate(pairwise(received)) if b <= a), None)
    return (
        f"received {len(received)} of {len(expected)}; missing {missing[:20]} ({len(missing)}); "
        f"duplicated {duplicates[:20]} ({len(duplicates)}); unexpected {unexpected[:20]}; "
        f"first out-of-order index {first_disorder}"
    )
