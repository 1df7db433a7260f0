"""i3lani's actors, over the actor runtime they run on.

:mod:`actors.runtime` is the runtime (how an actor is written and run, the injected clock,
child specs, the status read model); it sits below ``supervisor.py``, which keeps actors
running. Everything else in this package is a product actor, above the supervisor.

The product's actors, one module each (pure ``decide`` / ``evolve``, thin I/O):
:mod:`actors.payment_monitor`, :mod:`actors.reward_processor`,
:mod:`actors.channel_analytics`, :mod:`actors.cleanup`, :mod:`actors.health`,
:mod:`actors.sealer` (the log's tamper evidence); which of them
``i3lani run`` starts, and what each needs: :mod:`actors.catalog`; their settings:
:mod:`actors.config`; their task types: :mod:`actors.tasks`. The outside world is reached only
through :mod:`actors.tonapi` and :mod:`actors.telegram`; payment rules are the pure
:mod:`actors.payments`, TON addresses and amounts :mod:`actors.ton`.

This module imports nothing, so that importing the runtime never loads a product actor.
"""
