"""Three worker processes sharing nothing but PostgreSQL send 500 notices through the Bot API
stand-in: no one-second window of the stand-in's own request log holds more than Telegram's
30, the stand-in (holding Telegram's limits itself) never answers 429, and every notice is
delivered exactly once.

Each worker (``python -m bench.broadcast worker``, the benchmark's) has its own connections,
its own :class:`store.flow.RateLimiter` on ``i3lani.rate_limits`` and a task processor running
ten notices at a time from the queue they share. The grants here are spread a quarter of a
second more than the window (the product's default is 20 ms, :data:`store.flow.DEFAULT_MARGIN`):
this suite runs on four pytest workers at once on a 2-core machine, where a request can take
that much longer than another to reach the stand-in after its grant (the stand-in itself runs
in this test's event loop, in asyncio's debug mode). The benchmark (``python -m bench --suite
broadcast``) measures the default, with 1,000 notices, on a machine doing nothing else. The
same three nodes on the simulated loop, exact to the millisecond, are
``tests/ops/test_flow_simulated.py``.

Printed with ``pytest -s``: the time it took and the tightest 31 requests.
"""

from __future__ import annotations

import pytest

from bench.broadcast import RATE, broadcast

# Three worker processes for about 25 s: in a lane of its own with the fault scenarios.
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(180)]

NOTICES = 500
MARGIN = 0.25


async def test_three_nodes_never_exceed_the_rate_and_send_every_notice_once(dsn: str) -> None:
    outcome = await broadcast(dsn, NOTICES, mode="shared", margin=MARGIN)
    print(
        f"\nbroadcast: {NOTICES} notices from 3 processes in {outcome.elapsed:.1f} s "
        f"(ideal {NOTICES / RATE.rate:.1f} s), {outcome.throttled} 429s, at most "
        f"{outcome.most_per_second} requests in a second, tightest 31 in "
        f"{outcome.tightest_31:.3f} s; workers: {outcome.workers}"
    )
    assert outcome.most_per_second <= RATE.count
    assert outcome.throttled == 0
    assert (outcome.lost, outcome.doubled) == (0, 0)
    assert sum(worker["sent"] for worker in outcome.workers) == NOTICES
    assert all(worker["local_grants"] == 0 for worker in outcome.workers)  # all shared
    assert len({worker["node"] for worker in outcome.workers if worker["sent"]}) == 3
