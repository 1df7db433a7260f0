"""When each request reached a stand-in: its request log, with arrival times.

The stand-ins keep what they received in plain lists (``TonApiStandIn.requests``,
``BotApiStandIn.calls``) and append to them as each request arrives. :func:`stamped` puts a
:class:`Stamped` list in place of one, so a scenario can tell how far apart the requests came
(was a ``Retry-After`` waited out? how long until a timed-out request was retried?) without
touching the stand-ins themselves::

    requests = stamped(tonapi, "requests")
    ...
    for at, request in requests.since(mark): ...
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import pairwise
from typing import Any, TypeVar, cast

__all__ = ["Stamped", "stamped", "gaps"]

T = TypeVar("T")


class Stamped(list[T]):
    """A list that notes the monotonic time at which each item was appended."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        super().__init__(items)
        now = time.monotonic()
        self.stamps: list[float] = [now] * len(self)

    def append(self, item: T) -> None:
        self.stamps.append(time.monotonic())
        super().append(item)

    def mark(self) -> int:
        """Where the log stands now: pass it to :meth:`since` later."""
        return len(self)

    def since(self, mark: int) -> list[tuple[float, T]]:
        """``(arrival time, item)`` of everything appended after ``mark``, in order."""
        return list(zip(self.stamps[mark:], self[mark:], strict=True))


def stamped(standin: object, attribute: str) -> Stamped[Any]:
    """Replace ``standin.<attribute>`` (a request log the stand-in appends to) by a
    :class:`Stamped` copy of it, and return that."""
    log: Stamped[Any] = Stamped(cast(list[Any], getattr(standin, attribute)))
    setattr(standin, attribute, log)
    return log


def gaps(times: Iterable[float]) -> list[float]:
    """Seconds between consecutive times."""
    return [later - earlier for earlier, later in pairwise(times)]
