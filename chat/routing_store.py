"""Routing stores: where the agent side's routing state lives (agents' states and loads, the
queue of each service, offers).

The router (agents.py) keeps that state as small JSON-able records under names such as
`agent:<name>`, `chat:<chat_id>` and `queue:<service>`, and changes them only through
`update(names, change)`: the records are read, `change` edits them, and they are written
back all together only if no other node wrote one of them meanwhile (else it runs again on
fresh records). That one primitive is what makes an offer go to exactly one agent and keeps
an agent within its capacity across nodes. The memory store serves one process; the Redis
store (routing_redis.py) a cluster.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Record = dict[str, Any]
Records = dict[str, Record | None]
"""Record name -> record (None: there is none, or `change` deletes it)."""


class RoutingStore(ABC):
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def read(self, names: list[str]) -> Records:
        """The records as they are now (a snapshot: copies)."""

    @abstractmethod
    async def update(self, names: list[str], change: Callable[[Records], T]) -> T:
        """Let `change` edit the named records (in place, in the dict it is given: set a
        name to None to delete its record) and write them atomically; returns what `change`
        returns. `change` may run several times, so it must only compute; if it raises,
        nothing is written. Raises StoreUnavailable when the store cannot be reached."""


class MemoryRoutingStore(RoutingStore):
    """One process: nothing awaits between read and write, so updates never conflict."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    async def read(self, names: list[str]) -> Records:
        return {name: copy.deepcopy(self._records.get(name)) for name in names}

    async def update(self, names: list[str], change: Callable[[Records], T]) -> T:
        records = await self.read(names)
        result = change(records)
        for name in names:
            record = records[name]
            if record is None:
                self._records.pop(name, None)
            else:
                self._records[name] = record
        return result
