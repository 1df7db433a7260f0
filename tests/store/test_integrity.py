"""The append-only triggers as the audit judges them (``store/integrity.py``), pure: the states
PostgreSQL reports are built here; ``tests/ops/test_tampering.py`` changes the real ones."""

from __future__ import annotations

import dataclasses

import pytest

from store.integrity import APPEND_ONLY_TRIGGERS, TriggerState, append_only_problems
from store.queries import sql_file

SOURCE = sql_file("schema.sql").split("refuse_event_change() RETURNS trigger")[1].split("$$")[1]
SHIPPED = [
    TriggerState(
        name=name,
        enabled="A",
        definition=f"CREATE TRIGGER {name} {definition}",
        function="i3lani.refuse_event_change()",
        source=SOURCE,
    )
    for name, definition in APPEND_ONLY_TRIGGERS.items()
]


def test_the_triggers_as_the_migrations_make_them_are_fine() -> None:
    assert append_only_problems(SHIPPED) == []
    # Whitespace in the function's source is not a change of what it does.
    folded = [dataclasses.replace(t, source="  " + " ".join(SOURCE.split())) for t in SHIPPED]
    assert append_only_problems(folded) == []


@pytest.mark.parametrize(
    ("enabled", "says"),
    [
        ("O", "enabled only in the default session_replication_role"),
        ("R", "enabled on replicas only"),
        ("D", "disabled"),
    ],
)
def test_a_trigger_not_enabled_always_is_a_problem(enabled: str, says: str) -> None:
    row, truncate = SHIPPED
    [problem] = append_only_problems([dataclasses.replace(row, enabled=enabled), truncate])
    assert problem.startswith(f"trigger events_append_only_row is {says}")
    assert problem.endswith(
        "ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER events_append_only_row restores it"
    )


def test_missing_redefined_or_emptied_triggers_are_problems() -> None:
    row, truncate = SHIPPED
    [missing] = append_only_problems([row])
    assert missing.startswith("trigger events_append_only_truncate on i3lani.events is missing")
    narrowed = dataclasses.replace(
        row, definition=row.definition.replace("DELETE OR UPDATE", "UPDATE")
    )
    [redefined] = append_only_problems([narrowed, truncate])
    assert redefined.startswith("trigger events_append_only_row was redefined")
    emptied = [dataclasses.replace(t, source="BEGIN RETURN OLD; END;") for t in SHIPPED]
    [replaced] = append_only_problems(emptied)
    assert "was replaced: it may no longer refuse anything" in replaced
