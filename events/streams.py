"""Stream names: one constant per category and one helper per kind of stream, the only place a
stream name is spelled.

A stream is named ``<category>-<id>``; subscriptions and the actors' state follow a category
(the part before the first hyphen), so a name spelled by hand in two places that drift apart
would silently split a category. Build every name here.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTOR",
    "TICK",
    "SNAPSHOT",
    "PAYMENT",
    "TASK",
    "USER",
    "MEMBER",
    "CHANNEL",
    "OPS",
    "OPS_COMMANDS",
    "OPS_ALERTS",
    "OPS_HEALTH",
    "OPS_CLEANUP",
    "SEAL",
    "SEAL_LOG",
    "actor_stream",
    "tick_stream",
    "snapshot_stream",
    "payment_stream",
    "payment_scan_stream",
    "payment_refund_stream",
    "task_stream",
    "user_stream",
    "member_stream",
    "channel_stream",
]

# -- categories ----------------------------------------------------------------------------------
ACTOR: Final = "actor"  # an actor's lifecycle, written by the supervisor; also its checkpoint
TICK: Final = "tick"  # an actor's recorded ticks
SNAPSHOT: Final = "snapshot"  # an actor's state snapshots
PAYMENT: Final = "payment"  # a payment's life; a wallet's transfers and cursor; refunds owed
TASK: Final = "task"  # one task of the queue
USER: Final = "user"  # a user's rewards and balance (the RewardProcessor's category)
MEMBER: Final = "member"  # a user's registration (not `user`: the RewardProcessor has no use)
CHANNEL: Final = "channel"  # a channel's statistics
OPS: Final = "ops"  # operations: commands, alerts, health, clean-ups
SEAL: Final = "seal"  # the log's seals (the Sealer's, store/sealing.py)

# -- the ops streams -----------------------------------------------------------------------------
OPS_COMMANDS: Final = f"{OPS}-commands"  # operator commands (restart, stop, start)
OPS_ALERTS: Final = f"{OPS}-alerts"  # alerts raised (parked actors, failed health checks)
OPS_HEALTH: Final = f"{OPS}-health"  # health check results
OPS_CLEANUP: Final = f"{OPS}-cleanup"  # clean-up runs

# -- the seal stream -----------------------------------------------------------------------------
SEAL_LOG: Final = f"{SEAL}-log"  # every LogSealed, version n = seal n


# -- one stream per thing ------------------------------------------------------------------------
def actor_stream(name: str) -> str:
    """``actor-<name>``: an actor's lifecycle events, and the name of its checkpoint."""
    return f"{ACTOR}-{name}"


def tick_stream(name: str) -> str:
    """``tick-<name>``: an actor's recorded ticks."""
    return f"{TICK}-{name}"


def snapshot_stream(name: str) -> str:
    """``snapshot-actor-<name>``: an actor's state snapshots."""
    return f"{SNAPSHOT}-{actor_stream(name)}"


def payment_stream(payment_id: int) -> str:
    """``payment-<id>``: one payment, from its request to its confirmation or expiry."""
    return f"{PAYMENT}-{payment_id}"


def payment_scan_stream(wallet: str) -> str:
    """``payment-scan-<wallet>``: what scanning a wallet found, each transfer once, and its
    cursor (``<workchain>_<hash hex>``)."""
    return f"{PAYMENT}-scan-{wallet}"


def payment_refund_stream(refund_id: str) -> str:
    """``payment-refund-<tx hash>``: the money one incoming transfer left owing, and its fate."""
    return f"{PAYMENT}-refund-{refund_id}"


def task_stream(task_id: int) -> str:
    """``task-<id>``: one task of the queue."""
    return f"{TASK}-{task_id}"


def user_stream(user_id: int) -> str:
    """``user-<telegram id>``: a user's rewards and balance."""
    return f"{USER}-{user_id}"


def member_stream(user_id: int) -> str:
    """``member-<telegram id>``: where a user's registration lives."""
    return f"{MEMBER}-{user_id}"


def channel_stream(channel: str) -> str:
    """``@name`` -> ``channel-name``; a numeric chat id keeps its digits (and sign)."""
    return f"{CHANNEL}-{channel.removeprefix('@').lower()}"
