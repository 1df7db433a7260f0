"""The actor runtime (mailbox, ticks, event-sourced state) and i3lani's actors.

See :mod:`actors.runtime` for how an actor is written and run, :mod:`actors.clock` for the
injected clock, and ``supervisor.py`` for how actors are kept running.
"""

from actors.clock import Clock, ManualClock, SystemClock
from actors.runtime import (
    Actor,
    ActorRef,
    ActorRunner,
    AskTimeout,
    Emit,
    MailboxFull,
    TickSpec,
    next_tick_due,
)

__all__ = [
    "Actor",
    "ActorRef",
    "ActorRunner",
    "AskTimeout",
    "Clock",
    "Emit",
    "MailboxFull",
    "ManualClock",
    "SystemClock",
    "TickSpec",
    "next_tick_due",
]
