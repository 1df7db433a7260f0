"""The catalog: which actor each name makes, and what a worker imports to make it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from actors.catalog import ACTOR_NAMES, DEFAULT_ACTORS, UnknownActor, child_specs
from actors.config import Settings
from actors.runtime import RestartType

SETTINGS = Settings(wallet="EQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqB2N", bot_token="1:x")


def test_every_name_makes_a_fresh_actor_of_that_name_each_time() -> None:
    specs = child_specs(ACTOR_NAMES, SETTINGS)
    assert [spec.name for spec in specs] == list(ACTOR_NAMES)
    for spec in specs:
        first, second = spec.factory(), spec.factory()
        assert type(first).__name__ == spec.name
        assert first is not second
        assert spec.restart is RestartType.PERMANENT


def test_the_default_is_the_five_product_actors_in_order() -> None:
    assert [spec.name for spec in child_specs(None, SETTINGS)] == list(DEFAULT_ACTORS)


def test_an_unknown_name_is_refused_before_anything_is_made() -> None:
    with pytest.raises(UnknownActor):
        child_specs(["Heartbeat", "Nope"], SETTINGS)


@pytest.mark.process
def test_a_worker_of_actors_that_do_not_talk_to_telegram_does_not_import_aiogram() -> None:
    # aiogram's import builds the whole Bot API's models: seconds of CPU at every start.
    probe = (
        "import sys, supervisor, ops.cli\n"
        "from actors.catalog import child_specs\n"
        "from actors.config import Settings\n"
        f"settings = Settings(wallet={SETTINGS.wallet!r})\n"
        "names = ['Heartbeat', 'Flaky', 'PaymentMonitor', 'RewardProcessor', 'Cleanup']\n"
        "for spec in child_specs(names, settings):\n"
        "    spec.factory()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiogram'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
