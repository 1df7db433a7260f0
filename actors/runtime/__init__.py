"""The actor runtime: everything an actor needs to run, below the supervisor and the product.

* :mod:`actors.runtime.core`: :class:`Actor` and :class:`ActorRunner` (mailbox, ticks,
  event-sourced state), and how an actor is written;
* :mod:`actors.runtime.clock`: the injected clock;
* :mod:`actors.runtime.children`: :class:`ChildSpec` and :class:`RestartType`, how the
  supervisor builds and restarts a child;
* :mod:`actors.runtime.status`: :class:`ActorStatus`, an actor's status read from the log.

Layers (``tests/test_layering.py`` holds them): events <- store <- actors.runtime <- supervisor
<- product actors (the rest of ``actors/``) <- bot_gateway <- ops. Nothing here imports the
supervisor or a product actor.
"""

from actors.runtime.children import ChildSpec, RestartType
from actors.runtime.clock import Clock, ManualClock, SystemClock
from actors.runtime.core import (
    Actor,
    ActorNotRunning,
    ActorRef,
    ActorRunner,
    AskTimeout,
    Emit,
    MailboxFull,
    Message,
    TickSpec,
    next_tick_due,
)

__all__ = [
    "Actor",
    "ActorNotRunning",
    "ActorRef",
    "ActorRunner",
    "AskTimeout",
    "Emit",
    "MailboxFull",
    "Message",
    "TickSpec",
    "next_tick_due",
    "Clock",
    "ManualClock",
    "SystemClock",
    "ChildSpec",
    "RestartType",
]
