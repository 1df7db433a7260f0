"""Whether PostgreSQL still enforces the log's append-only rule (``i3lani audit`` asks).

The rule is two triggers on ``i3lani.events`` (migrations 0001 and 0006): a row trigger that
refuses UPDATE and DELETE and a statement trigger that refuses TRUNCATE, both running
``i3lani.refuse_event_change()`` and both ``ENABLE ALWAYS``, so that even a superuser's session
in ``session_replication_role = replica`` meets them. Anyone who can take them away (the
table's owner, a superuser) can change the log: what they cannot do is take them away without
it showing here. :func:`append_only_problems` (pure) compares what PostgreSQL holds with what
the migrations made; the seals (:mod:`store.sealing`) show what was done meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final

from store.driver import driver_errors
from store.eventstore import EventStore
from store.queries import query, sql_file

__all__ = ["TriggerState", "APPEND_ONLY_TRIGGERS", "append_only_triggers", "append_only_problems"]

APPEND_ONLY_TRIGGERS: Final = {
    "events_append_only_row": "BEFORE DELETE OR UPDATE ON i3lani.events FOR EACH ROW "
    "EXECUTE FUNCTION i3lani.refuse_event_change()",
    "events_append_only_truncate": "BEFORE TRUNCATE ON i3lani.events FOR EACH STATEMENT "
    "EXECUTE FUNCTION i3lani.refuse_event_change()",
}
"""Each append-only trigger and its definition, as ``pg_get_triggerdef`` prints it after
``CREATE TRIGGER <name>``."""

_FUNCTION: Final = "i3lani.refuse_event_change()"
_ENABLED: Final = {
    "O": "enabled only in the default session_replication_role (ENABLE, not ENABLE ALWAYS): "
    "a session that sets session_replication_role = replica changes events unseen",
    "R": "enabled on replicas only (ENABLE REPLICA): ordinary sessions change events unseen",
    "D": "disabled: events can be changed and deleted",
}


@dataclass(frozen=True, slots=True)
class TriggerState:
    """One trigger on ``i3lani.events`` as PostgreSQL holds it."""

    name: str
    enabled: str  # pg_trigger.tgenabled: O, A, R or D
    definition: str  # pg_get_triggerdef
    function: str  # the function it runs, as regprocedure
    source: str  # that function's source


async def append_only_triggers(store: EventStore) -> list[TriggerState]:
    """The user triggers on ``i3lani.events``, by name."""
    with driver_errors(what="reading the append-only triggers"):
        rows = await store._pool.fetch(query("append_only_triggers"))
    return [TriggerState(**dict(row)) for row in rows]


@cache
def _shipped_source() -> str:
    """The body of ``refuse_event_change`` as ``schema.sql`` declares it, whitespace folded."""
    schema = sql_file("schema.sql")
    match = re.search(
        r"CREATE FUNCTION i3lani\.refuse_event_change\(\).*?\$\$(.*?)\$\$", schema, re.DOTALL
    )
    if match is None:
        raise RuntimeError("schema.sql no longer declares i3lani.refuse_event_change()")
    return _folded(match.group(1))


def _folded(text: str) -> str:
    return " ".join(text.split())


def append_only_problems(triggers: Sequence[TriggerState]) -> list[str]:
    """What is wrong with the append-only triggers (one line each; empty: nothing). Pure."""
    found = {trigger.name: trigger for trigger in triggers}
    problems: list[str] = []
    for name, definition in APPEND_ONLY_TRIGGERS.items():
        trigger = found.get(name)
        if trigger is None:
            problems.append(
                f"trigger {name} on i3lani.events is missing: events can be changed or deleted "
                "(`i3lani migrate` does not put it back; restore it from store/sql/schema.sql)"
            )
            continue
        if trigger.enabled != "A":
            why = _ENABLED.get(trigger.enabled, f"in state {trigger.enabled!r}")
            problems.append(
                f"trigger {name} is {why}; "
                f"ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER {name} restores it"
            )
        if trigger.definition != f"CREATE TRIGGER {name} {definition}":
            problems.append(
                f"trigger {name} was redefined: {trigger.definition!r}, "
                f"not CREATE TRIGGER {name} {definition}"
            )
    if any(
        t.function == _FUNCTION and _folded(t.source) != _shipped_source() for t in found.values()
    ):
        problems.append(
            f"function {_FUNCTION}, which the append-only triggers run, was replaced: it may "
            "no longer refuse anything"
        )
    return problems
