"""The actor runtime (mailbox, ticks, event-sourced state) and i3lani's actors.

See :mod:`actors.runtime` for how an actor is written and run, :mod:`actors.clock` for the
injected clock, and ``supervisor.py`` for how actors are kept running.

The product's five actors, one module each (pure ``decide`` / ``evolve``, thin I/O):
:mod:`actors.payment_monitor`, :mod:`actors.reward_processor`,
:mod:`actors.channel_analytics`, :mod:`actors.cleanup`, :mod:`actors.health`; which of them
``i3lani run`` starts, and what each needs: :mod:`actors.catalog`; their settings:
:mod:`actors.config`; their task types: :mod:`actors.tasks`. The outside world is reached only
through :mod:`actors.tonapi` and :mod:`actors.telegram`; payment rules are the pure
:mod:`actors.payments`, TON addresses and amounts :mod:`actors.ton`.
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
