"""The product's task types: payloads, retry policies, and the registry the actors share.

=======================  ==============================  ======================================
task type                payload                         handled by
=======================  ==============================  ======================================
``payment_verification``  ``{"payment_id"}``             PaymentMonitor: checks the wallet now;
                                                         retried while TonAPI is unavailable
``reward_distribution``  ``{"reward_id", "user_id",      RewardProcessor: credits the reward
                         "amount_nanotons"}``            exactly once; RewardFailed at the end
``admin_alert``          ``{"alert_id", "text"}``        HealthChecker: sends it to ADMIN_IDS
=======================  ==============================  ======================================

Every type retries 3 times by default with exponential backoff and jitter; the first delay is
``I3LANI_TASK_RETRY_DELAY`` seconds (default 30), doubling each time.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

import anyio
import msgspec

from actors.config import Settings
from actors.runtime import ActorRunner
from store.tasks import Handler, RetryPolicy, TaskProcessor, TaskQueue, TaskTypes

__all__ = [
    "PAYMENT_VERIFICATION",
    "REWARD_DISTRIBUTION",
    "ADMIN_ALERT",
    "PaymentVerification",
    "RewardDistribution",
    "AdminAlert",
    "task_types",
    "serve_tasks",
    "PROCESSOR_STOP_TIMEOUT",
]

PROCESSOR_STOP_TIMEOUT: Final = 2.5
"""Seconds an actor's task processor gets to finish the tasks in hand on a graceful stop (within
the runtime's grace): what is not finished by then is taken back by another node after its lock
expires."""

PAYMENT_VERIFICATION: Final = "payment_verification"
REWARD_DISTRIBUTION: Final = "reward_distribution"
ADMIN_ALERT: Final = "admin_alert"

_Positive = Annotated[int, msgspec.Meta(ge=1)]


class PaymentVerification(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    payment_id: _Positive


class RewardDistribution(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reward_id: uuid.UUID
    user_id: _Positive
    amount_nanotons: _Positive


class AdminAlert(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    alert_id: uuid.UUID
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


def task_types(settings: Settings | None = None) -> TaskTypes:
    """The registry of the product's task types, with retry delays from ``settings``."""
    delay = (settings or Settings()).task_retry_delay
    retry = RetryPolicy(max_attempts=3, min_delay=delay, max_delay=max(delay * 16, delay))
    types = TaskTypes()
    types.register(PAYMENT_VERIFICATION, PaymentVerification, retry=retry, timeout=120)
    types.register(REWARD_DISTRIBUTION, RewardDistribution, retry=retry, timeout=60)
    types.register(ADMIN_ALERT, AdminAlert, retry=retry, timeout=120)
    return types


async def serve_tasks(
    runner: ActorRunner[Any],
    settings: Settings,
    task_type: str,
    handler: Handler[Any],
    *,
    concurrency: int = 1,
) -> None:
    """An actor's background work: a processor running ``task_type`` tasks with ``handler``,
    until the actor stops gracefully (the tasks in hand are then finished and recorded, for up
    to :data:`PROCESSOR_STOP_TIMEOUT` seconds) or is cancelled (its tasks are taken back once
    their locks expire). Every write the processor makes (claims, heartbeats, outcomes) is
    fenced by the actor's lease generation. The type's concurrency limit across nodes
    (``I3LANI_TASK_CONCURRENCY``) is set as the processor starts, or removed when none is
    configured."""
    queue = TaskQueue(runner.store, task_types(settings), node=runner.node)
    processor = TaskProcessor(
        queue,
        node=runner.node,
        types=[task_type],
        concurrency=concurrency,
        lock_timeout=settings.task_lock_timeout,
        stop_timeout=PROCESSOR_STOP_TIMEOUT,
        fence=runner.fence,
        limits={task_type: settings.concurrency_limit(task_type)},
    )
    processor.register_handler(task_type, handler)
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        await runner.stopping.wait()
        processor.stop()
