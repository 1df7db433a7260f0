"""The task types a queue accepts: name, payload Struct (validated on the way in and out),
retry policy, handler timeout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import msgspec

from events.registry import unstorable_text
from store.tasks.errors import InvalidTaskPayload, UnknownTaskType, split_validation_error
from store.tasks.policy import RetryPolicy

__all__ = ["TaskType", "TaskTypes"]

P = TypeVar("P", bound=msgspec.Struct)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")


class TaskType(Generic[P]):
    """A registered task type: its name, payload Struct, retry policy and handler timeout.
    Pass it instead of the name to get typed handlers and payloads."""

    __slots__ = ("_decoder", "_encoder", "name", "payload_type", "retry", "timeout")

    def __init__(
        self, name: str, payload_type: type[P], retry: RetryPolicy, timeout: float | None
    ) -> None:
        self.name = name
        self.payload_type = payload_type
        self.retry = retry
        self.timeout = timeout
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[P] = msgspec.json.Decoder(payload_type)

    def __repr__(self) -> str:
        return f"TaskType({self.name!r}, {self.payload_type.__qualname__})"

    def encode(self, payload: P | Mapping[str, Any]) -> bytes:
        """Validate ``payload`` (the Struct, or a mapping of its fields) and return its JSON;
        InvalidTaskPayload names the field otherwise."""
        try:
            if isinstance(payload, self.payload_type):
                data = self._encoder.encode(payload)
                self._decoder.decode(data)  # enforce the Struct's constraints
            elif isinstance(payload, msgspec.Struct):
                raise InvalidTaskPayload(
                    self.name,
                    "(payload)",
                    f"expected {self.payload_type.__qualname__} or a mapping of its fields, "
                    f"got {type(payload).__qualname__}",
                )
            elif not isinstance(payload, Mapping):
                raise InvalidTaskPayload(
                    self.name, "(payload)", f"expected a mapping, got {type(payload).__name__}"
                )
            else:
                converted = msgspec.convert(payload, self.payload_type, strict=True)
                data = self._encoder.encode(converted)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field_name, reason = split_validation_error(exc)
            raise InvalidTaskPayload(self.name, field_name, reason) from exc
        except UnicodeEncodeError as exc:  # a lone surrogate: not UTF-8, so not JSON
            field_name, reason = unstorable_text(msgspec.to_builtins(payload)) or (
                "(payload)",
                str(exc),
            )
            raise InvalidTaskPayload(self.name, field_name, reason) from exc
        except (TypeError, OverflowError) as exc:  # a value msgspec cannot encode at all
            raise InvalidTaskPayload(self.name, "(payload)", str(exc)) from exc
        # jsonb refuses \u0000: refused here, before it fails the statement that enqueues it
        # (with every other task in that group commit).
        if b"\\u0000" in data:
            unstorable = unstorable_text(msgspec.json.decode(data))
            if unstorable is not None:
                raise InvalidTaskPayload(self.name, *unstorable)
        return data

    def decode(self, data: bytes) -> P:
        """The stored payload as the Struct; InvalidTaskPayload when it no longer fits."""
        try:
            return self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field_name, reason = split_validation_error(exc)
            raise InvalidTaskPayload(self.name, field_name, reason) from exc


class TaskTypes:
    """The task types a queue accepts: name -> payload Struct, retry policy, timeout."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType[Any]] = {}

    def register(
        self,
        name: str,
        payload_type: type[P],
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> TaskType[P]:
        """Register a task type; ``timeout`` (seconds) cancels a handler that runs longer."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"a task type name is a letter then up to 99 letters, digits, '_', '.' or '-', "
                f"got {name!r}"
            )
        if not (isinstance(payload_type, type) and issubclass(payload_type, msgspec.Struct)):
            raise TypeError(f"the payload of {name!r} must be a msgspec Struct class")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("a task type's timeout is a positive number of seconds")
        if name in self._types:
            raise ValueError(f"task type {name!r} is already registered")
        task_type = TaskType(name, payload_type, retry or RetryPolicy(), timeout)
        self._types[name] = task_type
        return task_type

    def get(self, name: str | TaskType[Any]) -> TaskType[Any]:
        """The registered type (UnknownTaskType if there is none of that name)."""
        key = name.name if isinstance(name, TaskType) else name
        found = self._types.get(key)
        if found is None or (isinstance(name, TaskType) and found is not name):
            raise UnknownTaskType(str(key), self._types)
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)
