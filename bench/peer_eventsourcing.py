"""The ``eventsourcing`` peer as its users run it: a process of its own, synchronous, its
writers in threads of that process. The benchmark starts it once per round::

    python -m bench.peer_eventsourcing '{"command": "append", "dsn": ..., ...}'

and reads the figures it prints as one JSON object on stdout (:func:`bench.peers.run_peer`).
Commands:

* ``seed``: ``streams`` streams of ``page`` events each (untimed by the caller's figures);
* ``append``: ``writers`` threads append one event at a time, each to its own stream, for
  ``warmup`` then ``seconds``: ``{"items": n, "seconds": s}``;
* ``read``: pages of ``page`` notifications from the start, for ``warmup`` then ``seconds``,
  with the cost split: ``fetch`` (``select_notifications``: the query, psycopg's rows, its
  ``Notification`` objects), ``decode`` (the same msgspec decoding into typed events as
  i3lani's, of the pages fetched), each ``{"items", "seconds"}``; and, separately timed for
  ``seconds``, ``raw``: the same ``SELECT`` on a plain psycopg connection, tuples left as
  psycopg returns them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg.conninfo import make_conninfo

from bench.eventstore import sample_event  # the same event as every other figure
from bench.peers import EventsourcingPeer, answer, connection_params, read_request
from events import DEFAULT_REGISTRY

__all__ = ["main"]


def _threads(seconds: float, workers: int, step: Callable[[int], int]) -> dict[str, float]:
    counts = [0] * workers
    deadline = time.perf_counter() + seconds

    def work(index: int) -> None:
        done = 0
        while time.perf_counter() < deadline:
            done += step(index)
        counts[index] = done

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"items": sum(counts), "seconds": time.perf_counter() - started}


def append(request: dict[str, Any]) -> dict[str, Any]:
    writers = int(request["writers"])
    peer = EventsourcingPeer(request["dsn"], schema=request["schema"], pool_size=writers)
    try:
        event = sample_event(42)
        ids = [uuid.uuid4() for _ in range(writers)]
        versions = [0] * writers

        def step(i: int) -> int:
            # The same per-append work as i3lani: encode and validate the event.
            topic, _, state = DEFAULT_REGISTRY.encode(event)
            versions[i] += 1
            peer.append_one(ids[i], versions[i], topic, state)
            return 1

        if request["warmup"] > 0:
            _threads(float(request["warmup"]), writers, step)
        return _threads(float(request["seconds"]), writers, step)
    finally:
        peer.close()


def seed(request: dict[str, Any]) -> dict[str, Any]:
    page = int(request["page"])
    peer = EventsourcingPeer(request["dsn"], schema=request["schema"], pool_size=1)
    try:
        encoded = [DEFAULT_REGISTRY.encode(sample_event(i)) for i in range(1, page + 1)]
        for _ in range(int(request["streams"])):
            originator = uuid.uuid4()
            peer.insert(
                [
                    StoredEvent(originator, version, topic, state)
                    for version, (topic, _, state) in enumerate(encoded, start=1)
                ]
            )
        return {"events": peer.count()}
    finally:
        peer.close()


def read(request: dict[str, Any]) -> dict[str, Any]:
    page, seconds = int(request["page"]), float(request["seconds"])
    peer = EventsourcingPeer(request["dsn"], schema=request["schema"], pool_size=1)
    decode = DEFAULT_REGISTRY.decode
    try:

        def split(duration: float) -> dict[str, dict[str, float]]:
            fetched = decoded = 0
            fetch_seconds = decode_seconds = 0.0
            after = 0
            deadline = time.perf_counter() + duration
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                notes = peer.read_page(after, page)
                fetched_at = time.perf_counter()
                events = [decode(note.topic, 1, note.state) for note in notes]
                fetch_seconds += fetched_at - began
                decode_seconds += time.perf_counter() - fetched_at
                fetched += len(notes)
                decoded += len(events)
                after = notes[-1].id if len(notes) == page else 0
            return {
                "fetch": {"items": fetched, "seconds": fetch_seconds},
                "decode": {"items": decoded, "seconds": decode_seconds},
            }

        if request["warmup"] > 0:
            split(float(request["warmup"]))
        result: dict[str, Any] = split(seconds)
    finally:
        peer.close()
    result["raw"] = _raw_read(request, page, seconds)
    return result


def _raw_read(request: dict[str, Any], page: int, seconds: float) -> dict[str, float]:
    """The peer's own query on a plain psycopg connection: tuples, no objects, no decoding."""
    sql = (
        "SELECT notification_id, originator_id, originator_version, topic, state"
        f" FROM {request['schema']}.events WHERE notification_id > %s "
        "ORDER BY notification_id LIMIT %s"
    )
    conninfo = make_conninfo("", **connection_params(request["dsn"]))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        done, after = 0, 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            with conn.cursor() as cursor:
                cursor.execute(sql, (after, page), prepare=True)
                rows = cursor.fetchall()
            done += len(rows)
            after = rows[-1][0] if len(rows) == page else 0
        return {"items": done, "seconds": time.perf_counter() - started}


COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "append": append,
    "seed": seed,
    "read": read,
}


def main() -> None:
    request = read_request()
    answer(COMMANDS[request["command"]](request))


if __name__ == "__main__":
    main()
