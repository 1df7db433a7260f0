"""``i3lani demo``: the whole system on one machine, with simulated users, told as it happens.

What runs, all in this process, all of it the product's real code except the two outside
services:

* PostgreSQL: the demo's **own database** (``i3lani_demo`` unless ``--database`` says
  otherwise), dropped and created afresh on every run, on the embedded server when
  ``DATABASE_URL`` is unset, else on ``DATABASE_URL``'s server. Never the database
  ``DATABASE_URL`` names: a deployment's data is not touched. It is kept after the run, for
  ``i3lani audit --database i3lani_demo`` and the other commands.
* TonAPI and the Bot API: the stand-ins of :mod:`ops.standins` (a simulated chain; a bot token
  made up for the run).
* The real supervisor with the five product actors, their intervals and the payment window
  divided by ``--speed`` (:func:`demo_settings`).
* The real gateway in webhook mode on 127.0.0.1, with a random webhook secret, serving the
  admin API and the dashboard behind a random admin token (printed to stdout only).
* Simulated users (:func:`plan_scenario`, pure and seeded by ``--seed``). They post real
  Telegram ``Update`` JSON to the webhook with the secret header: ``/start`` (some through a
  friend's referral link), ``/addchannel``, ``/subscribe``, ``/balance``; and they pay on the
  simulated chain with the wallet, amount and memo of the ``ton://transfer`` link in the bot's
  reply: most exactly, one too little, one after the payment expired, one twice, one not at all.

**The crash.** Outside services cannot crash an actor in this runtime: the actors turn TonAPI
and Bot API failures into data (a scan skipped with its cursor kept, a failing health check,
``ChannelStatsFailed``). What crashes an actor is an exception escaping its own code, a bug.
So the demo runs the PaymentMonitor as :class:`CrashOncePaymentMonitor`, the real actor whose
tick raises :class:`DemoFault` once, when the demo arms it midway; the real supervisor records
``ActorCrashed``, backs off (``ActorBackoffScheduled``), restarts it (``ActorRestarted``,
``ActorStarted``) and the actor catches up from the log.

The log is followed with a subscription and shown one line per event (:class:`StreamView`:
ticks, task steps, health samples and wallet scans are counted, not shown). At the end (after
``--duration``, or on SIGINT / SIGTERM) the simulation stops, then the gateway, then the actors,
gracefully; :func:`ops.audit.run_audit` replays the log and checks its invariants, and a short
summary is printed. Exit 0 when the audit is clean, 1 when it found discrepancies; a second
Ctrl-C during the wind-down stops at once, without the audit (exit 130).

The stand-ins, the worker and the gateway are started by :mod:`ops.local`, as ``i3lani dev``
starts them; log records go to ``$I3LANI_HOME/demo.log`` while the story is told on stdout.
The package, along those seams: :mod:`~ops.demo.scenario` the planned world and the crash,
:mod:`~ops.demo.narration` the log told line by line, :mod:`~ops.demo.simulation` the simulated
users at work, :mod:`~ops.demo.run` the run, its database and the command. Import from
``ops.demo``.
"""

from __future__ import annotations

from ops.demo.narration import StreamLine, StreamView
from ops.demo.run import DEMO_MARK, DemoOutcome, demo_command, prepare_database, run_demo
from ops.demo.scenario import (
    ADMIN_ID,
    CrashOncePaymentMonitor,
    DemoFault,
    FaultSwitch,
    Role,
    Scenario,
    SimUser,
    demo_child_specs,
    demo_settings,
    plan_scenario,
)
from ops.demo.simulation import DoublePayment
from ops.demo_options import DEMO_DATABASE, DemoOptions, add_arguments

__all__ = [
    "DEMO_DATABASE",
    "DEMO_MARK",
    "ADMIN_ID",
    "DemoOptions",
    "Role",
    "SimUser",
    "Scenario",
    "plan_scenario",
    "demo_settings",
    "DemoFault",
    "FaultSwitch",
    "CrashOncePaymentMonitor",
    "demo_child_specs",
    "StreamLine",
    "StreamView",
    "DoublePayment",
    "DemoOutcome",
    "prepare_database",
    "run_demo",
    "add_arguments",
    "demo_command",
]
