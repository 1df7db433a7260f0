"""The event registry: stored type tags <-> Structs, validation, and upcasting.

A registry maps each stored type tag to its Struct class and holds one typed JSON
decoder per class, built once. It is pure: no I/O.

Writing (:meth:`EventRegistry.encode`) validates the event by decoding what was just
encoded with the class's own decoder, so the constraints declared with ``msgspec.Meta``
(non-negative money, aware datetimes, ...) are enforced *before* anything reaches the
database, and a failure names the type and the field.

Reading (:meth:`EventRegistry.decode`) takes the current-version fast path when the
stored schema version is the class's own; an older version is decoded to plain JSON,
passed through the registered upcaster chain (v1 -> v2 -> ... -> current), then
converted with full validation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import msgspec

from events.base import Event
from events.errors import (
    EventRegistrationError,
    InvalidEvent,
    UnknownEventType,
    UpcastError,
    one_line,
)

__all__ = ["EventRegistry", "Upcaster", "unstorable_text", "untagged", "same_payload"]

E = TypeVar("E", bound=type[Event])

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the JSON object of version ``n`` of an event into that of version ``n + 1``."""


def _split_validation_error(
    error: msgspec.ValidationError | msgspec.DecodeError,
) -> tuple[str, str]:
    """('amount_nanotons', 'Expected `int` >= 1') from msgspec's message."""
    # msgspec ends a message with " - at `$.field`" when it knows where the problem is.
    text = str(error)
    reason, at, where = text.rpartition(" - at `$")
    if not at or not where.endswith("`") or "`" in where[:-1]:
        return "(payload)", text
    return where[:-1].removeprefix(".") or "(payload)", reason


def unstorable_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field, reason) of the first text in ``value`` (JSON builtins) that PostgreSQL cannot
    hold as text: a NUL character (its json keeps the escape, but jsonb and every extraction
    of the field as text refuse it), or a lone surrogate (not UTF-8); None when there is none."""
    if isinstance(value, str):
        if "\x00" in value:
            return path or "(payload)", "a NUL character (U+0000) cannot be stored"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "(payload)", "a lone surrogate is not valid Unicode"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = unstorable_text(key, where) or unstorable_text(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_text(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


TAG_FIELD: Final = "type"
"""The field msgspec writes an event's tag in (its default, which every event keeps)."""


class _Entry:
    __slots__ = ("cls", "decoder", "tagged", "upcasters", "version")

    def __init__(self, cls: type[Event]) -> None:
        self.cls = cls
        self.version = cls.schema_version
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(cls)
        self.upcasters: dict[int, Upcaster] = {}
        config = cls.__struct_config__
        # How msgspec's JSON for this class begins: the tag field, always first.
        field = config.tag_field or TAG_FIELD
        self.tagged = b'{"' + field.encode() + b'":' + msgspec.json.encode(config.tag)


def same_payload(stored: bytes | str, given: bytes | str, tag: str) -> bool:
    """Whether two stored payloads of an event of type ``tag`` say the same, whether or not
    either carries the tag field (earlier releases stored it, this one does not). Pure."""
    first, second = msgspec.json.decode(stored), msgspec.json.decode(given)
    if isinstance(first, dict) and isinstance(second, dict):
        for payload in (first, second):
            if payload.get(TAG_FIELD) == tag:
                del payload[TAG_FIELD]
    return bool(first == second)


def untagged(payload: bytes, tagged: bytes) -> bytes:
    """``payload`` without its leading tag field (``{"type":"X",...}`` -> ``{...}``): the tag
    is stored in the ``type`` column already, and decoding a known class does not need it.
    Anything that does not begin with exactly ``tagged`` is left as it is. Pure."""
    if not payload.startswith(tagged):
        return payload
    rest = payload[len(tagged) :]
    if rest[:1] == b",":
        return b"{" + rest[1:]
    if rest == b"}":
        return b"{}"
    return payload


class EventRegistry:
    """Stored type tags and their Structs. Safe to share; registration happens at start-up."""

    def __init__(self, types: Iterable[type[Event]] = ()) -> None:
        self._by_tag: dict[str, _Entry] = {}
        self._by_cls: dict[type[Event], _Entry] = {}
        self._encoder = msgspec.json.Encoder()
        # current_decoders(), built once per registration rather than once per read.
        self._current: dict[str, tuple[int, Callable[[bytes | str], Event]]] | None = None
        for cls in types:
            self.register(cls)

    # -- registration -------------------------------------------------------------------
    def register(self, cls: E) -> E:
        """Register an event class (usable as a decorator). Its tag must be explicit."""
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise EventRegistrationError(f"{cls!r} is not a subclass of events.Event")
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str) or not tag:
            raise EventRegistrationError(
                f"{cls.__qualname__} has no explicit tag: declare it as "
                f'class {cls.__name__}(Event, tag="{cls.__name__}")'
            )
        if not cls.__struct_config__.frozen:
            raise EventRegistrationError(f"{cls.__qualname__} must be frozen (events never change)")
        existing = self._by_tag.get(tag)
        if existing is not None and existing.cls is not cls:
            raise EventRegistrationError(
                f"type tag {tag!r} is already registered to {existing.cls.__qualname__}"
            )
        if cls.schema_version < 1:
            raise EventRegistrationError(f"{cls.__qualname__}.schema_version must be >= 1")
        entry = existing or _Entry(cls)
        self._by_tag[tag] = entry
        self._by_cls[cls] = entry
        self._current = None
        return cls

    def upcaster(self, tag: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register the step that turns stored version ``from_version`` into the next one."""

        def decorate(fn: Upcaster) -> Upcaster:
            entry = self._entry_for_tag(tag, None)
            if not 1 <= from_version < entry.version:
                raise EventRegistrationError(
                    f"{tag} is at schema version {entry.version}: an upcaster from version "
                    f"{from_version} would never run"
                )
            if from_version in entry.upcasters:
                raise EventRegistrationError(f"{tag} already has an upcaster from v{from_version}")
            entry.upcasters[from_version] = fn
            return fn

        return decorate

    # -- queries --------------------------------------------------------------------------
    def __contains__(self, tag: object) -> bool:
        return tag in self._by_tag

    def current_decoders(self) -> Mapping[str, tuple[int, Callable[[bytes | str], Event]]]:
        """tag -> (current schema version, payload decoder): the fast path for readers, used
        when the stored version is the current one (else go through :meth:`decode`). Built
        once per registration and shared: every read of either log asks for it (a fresh dict
        each time was 3 % of a simulated run)."""
        if self._current is None:
            self._current = {
                tag: (entry.version, entry.decoder.decode) for tag, entry in self._by_tag.items()
            }
        return self._current

    def tags(self) -> list[str]:
        return sorted(self._by_tag)

    def class_for(self, tag: str) -> type[Event]:
        return self._entry_for_tag(tag, None).cls

    def tag_of(self, event_or_cls: Event | type[Event]) -> str:
        cls = event_or_cls if isinstance(event_or_cls, type) else type(event_or_cls)
        entry = self._by_cls.get(cls)
        if entry is None:
            raise UnknownEventType(getattr(cls, "__qualname__", repr(cls)))
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str)
        return tag

    # -- codec ----------------------------------------------------------------------------
    def encode(self, event: Event) -> tuple[str, int, bytes]:
        """Validate ``event`` and return (type tag, schema version, JSON payload).

        Raises InvalidEvent naming the type and field; nothing is written by the caller then.
        """
        entry = self._by_cls.get(type(event))
        if entry is None:
            raise UnknownEventType(type(event).__qualname__)
        tag = type(event).__struct_config__.tag
        assert isinstance(tag, str)
        try:
            # Stored without the tag field: the type column names the tag (about 28 bytes an
            # event fewer); decoding accepts payloads with it too, as earlier releases wrote.
            payload = untagged(self._encoder.encode(event), entry.tagged)
            entry.decoder.decode(payload)  # enforce Meta constraints and aware datetimes
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field, reason = _split_validation_error(exc)
            raise InvalidEvent(tag, field, reason) from exc
        except UnicodeEncodeError as exc:  # a lone surrogate: not UTF-8, so not JSON
            field, reason = unstorable_text(msgspec.to_builtins(event)) or ("(payload)", str(exc))
            raise InvalidEvent(tag, field, reason) from exc
        except (TypeError, OverflowError) as exc:  # a value msgspec cannot encode at all
            raise InvalidEvent(tag, "(payload)", str(exc)) from exc
        # PostgreSQL's text refuses \u0000 (jsonb, and ->> on the log's json): refused here, so
        # that no stored event can fail a statement that reads a field of it, or a task payload
        # made from it. The cheap test may also match an escaped backslash followed by "u0000";
        # the walk decides.
        if b"\\u0000" in payload:
            unstorable = unstorable_text(msgspec.json.decode(payload))
            if unstorable is not None:
                raise InvalidEvent(tag, *unstorable)
        return tag, entry.version, payload

    def decode(
        self,
        tag: str,
        schema_version: int,
        payload: bytes | str,
        *,
        position: int | None = None,
    ) -> Event:
        """Decode a stored payload into the current Struct, upcasting older versions."""
        entry = self._entry_for_tag(tag, position)
        try:
            if schema_version >= entry.version:
                # Same version, or a newer writer that only added fields (ignored here).
                event: Event = entry.decoder.decode(payload)
                return event
            raw = msgspec.json.decode(payload)
            if not isinstance(raw, dict):
                raise UpcastError(f"{tag} v{schema_version} payload is not a JSON object")
            for version in range(schema_version, entry.version):
                step = entry.upcasters.get(version)
                if step is None:
                    raise UpcastError(
                        f"{tag} is stored at v{schema_version} but no upcaster turns "
                        f"v{version} into v{version + 1}"
                        + (f" (global position {position})" if position is not None else "")
                    )
                raw = step(raw)
            converted: Event = msgspec.convert(raw, entry.cls)
            return converted
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field, reason = _split_validation_error(exc)
            where = f" at global position {position}" if position is not None else ""
            raise UpcastError(
                f"stored {tag}{where} does not decode: field {one_line(repr(field), 80)}: "
                f"{one_line(reason)}"
            ) from exc

    def _entry_for_tag(self, tag: str, position: int | None) -> _Entry:
        entry = self._by_tag.get(tag)
        if entry is None:
            raise UnknownEventType(tag, position)
        return entry
