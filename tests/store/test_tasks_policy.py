"""The task queue's pure parts: retry decisions, error lines, task types and payload checks.
No database, no clock."""

from __future__ import annotations

import random
from typing import Annotated

import msgspec
import pytest

from events.errors import I3laniError
from store.tasks import (
    DeadLetter,
    InvalidTaskPayload,
    Retry,
    RetryPolicy,
    TaskError,
    TaskTypes,
    UnknownTaskType,
    error_line,
)


class FixedRandom:
    """A RandomSource that always draws the same number."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Transfer(msgspec.Struct, frozen=True):
    payment_id: Annotated[int, msgspec.Meta(ge=1)]
    memo: str = ""


# -- RetryPolicy ------------------------------------------------------------------------------


def test_default_policy_is_three_attempts_with_exponential_backoff() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.decide(1, ValueError("x")) == Retry(1.0)
    assert policy.decide(2, ValueError("x")) == Retry(2.0)
    assert isinstance(policy.decide(3, ValueError("x")), DeadLetter)


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=100, min_delay=0.5, max_delay=10, factor=2, jitter=0)
    delays = [policy.delay(n) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(10_000) == 10.0  # no overflow for absurd attempt numbers


def test_jitter_adds_up_to_its_fraction_of_the_delay() -> None:
    policy = RetryPolicy(min_delay=4, max_delay=60, jitter=0.25)
    assert policy.delay(1, FixedRandom(0.0)) == 4.0
    assert policy.delay(1, FixedRandom(0.5)) == 4.5
    assert policy.delay(1, FixedRandom(0.999)) == pytest.approx(5.0, abs=0.01)
    assert policy.decide(2, RuntimeError(), FixedRandom(1.0)) == Retry(10.0)
    seeded = [policy.delay(1, random.Random(7)) for _ in range(3)]
    assert seeded == [seeded[0]] * 3  # the same seed, the same schedule
    assert all(4.0 <= d <= 5.0 for d in (policy.delay(1, random.Random(s)) for s in range(50)))


def test_last_attempt_is_dead_lettered_with_a_reason() -> None:
    policy = RetryPolicy(max_attempts=2)
    decision = policy.decide(2, ValueError("boom"))
    assert decision == DeadLetter("attempt 2 of 2 failed")


def test_a_task_keeps_the_attempt_limit_it_was_added_with() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert isinstance(policy.decide(2, ValueError(), max_attempts=2), DeadLetter)
    assert isinstance(policy.decide(2, ValueError(), max_attempts=9), Retry)


def test_errors_outside_retry_on_are_dead_lettered_at_once() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(TimeoutError, ConnectionError))
    assert isinstance(policy.decide(1, TimeoutError()), Retry)
    assert isinstance(policy.decide(1, ConnectionResetError()), Retry)  # a subclass
    assert policy.decide(1, KeyError("k")) == DeadLetter("KeyError is not retried")


def test_one_attempt_means_no_retry() -> None:
    assert isinstance(RetryPolicy(max_attempts=1).decide(1, ValueError()), DeadLetter)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"min_delay": -1},
        {"min_delay": 5, "max_delay": 1},
        {"max_delay": float("inf")},
        {"factor": 0.5},
        {"jitter": 1.5},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(**kwargs)


# -- error lines ------------------------------------------------------------------------------


def test_error_line_is_one_line_with_the_type() -> None:
    assert error_line(ValueError("bad\n  amount\tgiven")) == "ValueError: bad amount given"
    assert error_line(KeyError()) == "KeyError"


def test_error_line_is_truncated() -> None:
    line = error_line(RuntimeError("x" * 10_000))
    assert len(line) == 500
    assert line.startswith("RuntimeError: xxx")
    assert line.endswith("…")
    assert error_line(RuntimeError("abcdef"), limit=10) == "RuntimeEr…"


# -- task types and payloads ------------------------------------------------------------------


def test_payloads_are_validated_against_their_struct() -> None:
    types = TaskTypes()
    transfer = types.register("payment_verification", Transfer)
    assert msgspec.json.decode(transfer.encode({"payment_id": 7})) == {"payment_id": 7, "memo": ""}
    assert transfer.encode(Transfer(payment_id=7, memo="m")) == b'{"payment_id":7,"memo":"m"}'
    assert transfer.decode(b'{"payment_id":7}') == Transfer(payment_id=7)


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"payment_id": "7"}, "payment_id", "Expected `int`, got `str`"),
        ({"payment_id": 0}, "payment_id", "Expected `int` >= 1"),
        ({}, "(payload)", "Object missing required field `payment_id`"),
        ({"payment_id": 1, "memo": 5}, "memo", "Expected `str`, got `int`"),
        (Transfer(payment_id=-3), "payment_id", "Expected `int` >= 1"),
        ([1, 2], "(payload)", "expected a mapping, got list"),
    ],
)
def test_a_bad_payload_names_the_field(payload: object, field: str, reason: str) -> None:
    transfer = TaskTypes().register("payment_verification", Transfer)
    with pytest.raises(InvalidTaskPayload) as caught:
        transfer.encode(payload)
    assert (caught.value.task_type, caught.value.field, caught.value.reason) == (
        "payment_verification",
        field,
        reason,
    )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid payload for task type 'payment_verification'")
    assert isinstance(caught.value, TaskError)
    assert isinstance(caught.value, I3laniError)


def test_another_struct_is_not_a_payload() -> None:
    class Other(msgspec.Struct):
        payment_id: int

    transfer = TaskTypes().register("payment_verification", Transfer)
    with pytest.raises(InvalidTaskPayload, match="expected Transfer"):
        transfer.encode(Other(payment_id=1))


def test_unknown_task_types_list_the_known_ones() -> None:
    types = TaskTypes()
    types.register("b_task", Transfer)
    types.register("a_task", Transfer)
    with pytest.raises(UnknownTaskType) as caught:
        types.get("c_task")
    assert str(caught.value) == (
        "unknown task type 'c_task': register it with TaskTypes.register "
        "(registered: a_task, b_task)"
    )
    assert isinstance(caught.value, I3laniError)
    # A TaskType handle from another registry is not this registry's type.
    foreign = TaskTypes().register("a_task", Transfer)
    with pytest.raises(UnknownTaskType):
        types.get(foreign)


def test_registration_refuses_bad_names_duplicates_and_non_structs() -> None:
    types = TaskTypes()
    types.register("ok.name-1_x", Transfer, timeout=5)
    with pytest.raises(ValueError, match="already registered"):
        types.register("ok.name-1_x", Transfer)
    for bad in ("", "1abc", "has space", "x" * 101):
        with pytest.raises(ValueError, match="task type name"):
            types.register(bad, Transfer)
    with pytest.raises(TypeError, match="msgspec Struct"):
        types.register("dicty", dict)
    with pytest.raises(ValueError, match="timeout"):
        types.register("slow", Transfer, timeout=0)
    assert types.names() == ["ok.name-1_x"]
    assert "ok.name-1_x" in types
