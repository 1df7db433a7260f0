"""Fault scenario 7, a node that hangs rather than dies (issue 7 in the README's history): a
worker frozen (SIGSTOP) or cut off from PostgreSQL (a proxy that stops forwarding and closes
nothing), at a random moment and at the worst one (a write transaction open, its COMMIT on the
way), for longer than the lease. The other node must run every actor within lease + 3 s; no
reader of the log may be held back longer than the idle-transaction bound + 1 s; once the
frozen node is back, nothing it writes may land under its old lease generation; every reward
is credited once, every payment confirmed once, and ``i3lani audit`` is clean. The scenario is
:mod:`tests.faults.hangs`; the figures are printed (``pytest -s``) and measured at the default
lease by ``python -m bench --suite hangs``.
"""

from __future__ import annotations

from typing import Final

import pytest

from store import EventStore
from tests.faults.hangs import Fault, run_hang
from tests.faults.harness import FAULTS, fault_seed

pytestmark = [*FAULTS]

LEASE_TTL: Final = 2.0  # the fault suite's lease (tests/faults/harness.py)
TAKEOVER_SLACK: Final = 3.0
STALL_SLACK: Final = 1.0


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("fault", "at_commit"),
    [("pause", False), ("pause", True), ("cut", False), ("cut", True)],
    ids=["paused", "paused-before-commit", "cut", "cut-before-commit"],
)
async def test_a_frozen_or_cut_off_node_never_stalls_the_others(
    dsn: str, clean_env: dict[str, str], store: EventStore, fault: Fault, at_commit: bool
) -> None:
    result = await run_hang(
        dsn,
        clean_env,
        store,
        fault=fault,
        at_commit=at_commit,
        lease_ttl=LEASE_TTL,
        seed=fault_seed(),
    )
    print(result.line())
    assert result.takeover <= LEASE_TTL + TAKEOVER_SLACK, result.line()
    assert result.reader_stall <= result.idle_bound + STALL_SLACK, result.line()
    assert not result.stale, result.stale[:10]
