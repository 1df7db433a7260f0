"""``i3lani simulate``'s own parts that need no run: replay commands and leaving faults out."""

from __future__ import annotations

import dataclasses

import pytest

from ops.simulate.cli import FAULTS, replay_command
from ops.simulate.world import Scenario

pytestmark = pytest.mark.pure


def test_every_kind_of_fault_can_be_left_out() -> None:
    rates = {
        f.name for f in dataclasses.fields(Scenario) if f.name.endswith(("_rate", "_per_hour"))
    }
    assert set(FAULTS.values()) == rates


def test_the_replay_command_names_what_differs_from_the_default() -> None:
    assert replay_command(Scenario(), 7) == "i3lani simulate --seed 7"
    smaller = Scenario(users=10, hours=0.25, nodes=1, kills_per_hour=0, reorder_rate=0)
    assert replay_command(smaller, 7) == (
        "i3lani simulate --seed 7 --users 10 --hours 0.25 --nodes 1 --without kills "
        "--without reorders"
    )
