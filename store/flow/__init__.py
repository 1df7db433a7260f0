"""Flow control shared by every node: rate limits kept in PostgreSQL (or beside the in-memory
log), which every Telegram and TonAPI call of every node waits for.

    limiter = RateLimiter.of(store)
    await limiter.acquire([Scope("telegram", Limit(30, 1.0))])   # waits its turn, never fails
    ...
    await limiter.pause([Scope("telegram", Limit(30, 1.0))], retry_after)   # after a 429

**What is shared.** A *scope* (``telegram``, ``telegram-chat:<id>``, ``telegram-group:<id>``,
``tonapi``) allows at most ``count`` grants in any window of ``per`` seconds (a
:class:`Limit`, configured as ``30/s`` or ``20/min``). Its row in ``i3lani.rate_limits``
(migration 0008) keeps the times of its latest grants, by the database's clock, the time
until which a 429 paused it, and a schedule that spaces the grants of a busy scope evenly
(migration 0009: about ``per / count`` apart, never ``count`` at once); a grant is one short
statement (``i3lani.rate_take``) that takes from every scope of a call at once or from none,
and answers how long to wait when it cannot.
No lock outlives that statement: nothing is held while a node talks to Telegram, so a node
frozen after its grant holds nothing but the grant itself. The reasoning (a window log rather
than a token bucket, the unlocked first look, the margin, the schedule) is beside the SQL.

**Not history.** Like leases and tick schedules, these rows are operational state: no event
records a grant, a row may be deleted at any time, and per-chat rows unused for a day are
(Cleanup).

**Task concurrency** is the task queue's (:mod:`store.tasks`): at most N tasks of a type
running at once on every node together, enforced inside the claim itself.

**Layout.** :mod:`~store.flow.table` (the port, the values, the rule), with
:mod:`~store.flow.postgres` and :mod:`~store.flow.memory` (beside a MemoryLog, for the
deterministic simulation and the contract tests); :mod:`~store.flow.limiter` (waiting, one
asker per process, the fallback when PostgreSQL cannot be reached). Import from ``store.flow``.
"""

from __future__ import annotations

from store.flow.limiter import (
    DEFAULT_MARGIN,
    DEFAULT_SMOOTH,
    FALLBACK_SHARE,
    GRANT_TIMEOUT,
    RETRY_SHARED,
    LimiterStatistics,
    RateLimiter,
    flow_table,
)
from store.flow.table import (
    MAX_SCOPES,
    SCHEDULE_TOLERANCE,
    FlowTable,
    FlowUsage,
    Grant,
    Limit,
    Scope,
    ScopeUse,
    next_schedule,
    parse_limit,
    schedule_wait,
    spacing_interval,
    window_wait,
)

__all__ = [
    "RateLimiter",
    "LimiterStatistics",
    "flow_table",
    "FlowTable",
    "FlowUsage",
    "Grant",
    "Limit",
    "Scope",
    "ScopeUse",
    "parse_limit",
    "window_wait",
    "schedule_wait",
    "next_schedule",
    "spacing_interval",
    "MAX_SCOPES",
    "SCHEDULE_TOLERANCE",
    "DEFAULT_MARGIN",
    "DEFAULT_SMOOTH",
    "FALLBACK_SHARE",
    "GRANT_TIMEOUT",
    "RETRY_SHARED",
]
