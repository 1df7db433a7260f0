"""What an operator command will do, judged before it is recorded (pure)."""

from __future__ import annotations

import pytest

from actors.control import Action, command_outlook
from actors.runtime.status import ActorStatus

RUNNING = ActorStatus(actor="PaymentMonitor", state="running", node="vm:1", lease_live=True)
EXPIRED = ActorStatus(actor="PaymentMonitor", state="running", node="vm:1", lease_live=False)
NEVER = ActorStatus(actor="PaymentMonitor")
STOPPED = ActorStatus(
    actor="PaymentMonitor",
    state="stopped",
    node="vm:1",
    lease_live=False,
    desired="stopped",
    stop_reason="stopped by cli:ann@vm: rotation",
)


@pytest.mark.parametrize("action", ["restart", "stop"])
def test_a_node_holding_the_actor_acts_on_it_and_is_waited_for(action: Action) -> None:
    outlook = command_outlook(action, RUNNING)
    assert (outlook.record, outlook.wait, outlook.refused) == (True, True, False)


def test_a_restart_nothing_would_act_on_is_refused_and_says_what_starts_it() -> None:
    never = command_outlook("restart", NEVER)
    assert (never.record, never.refused) == (False, True)
    assert never.message == (
        "no node runs PaymentMonitor (never started): nothing to restart, nothing recorded; "
        "a worker started with it (`i3lani run`) starts it afresh"
    )
    stopped = command_outlook("restart", STOPPED)
    assert stopped.refused
    assert "(stopped: stopped by cli:ann@vm: rotation)" in stopped.message
    assert stopped.message.endswith("`i3lani start PaymentMonitor` starts it")
    assert "its lease on vm:1 has expired" in command_outlook("restart", EXPIRED).message


def test_a_stop_without_a_node_is_recorded_and_holds_until_a_start() -> None:
    outlook = command_outlook("stop", NEVER)
    assert (outlook.record, outlook.wait, outlook.refused) == (True, False, False)
    assert outlook.message.endswith("no worker starts it until `i3lani start PaymentMonitor`")


def test_a_start_records_only_what_changes_something() -> None:
    assert command_outlook("start", STOPPED).record
    assert command_outlook("start", STOPPED).wait  # a worker may stand by for it
    running = command_outlook("start", RUNNING)
    assert (running.record, running.refused) == (False, False)
    assert (
        running.message == "PaymentMonitor already runs on vm:1: nothing to start, nothing recorded"
    )
    idle = command_outlook("start", NEVER)
    assert (idle.record, idle.refused) == (False, False)
    assert "nothing to start, nothing recorded" in idle.message
