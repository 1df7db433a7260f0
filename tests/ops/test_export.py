"""``i3lani export``: a range of the log to a compressed file, as stored, checked against the
log (ops/export.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from pathlib import Path

import msgspec
import pytest

from events import DEFAULT_REGISTRY, EventMetadata
from ops.export import ExportError, Manifest, export_range, manifest_path, verify_export
from store import START, EventStore
from tests.ops.test_cli import Cli, lines, payment_created, payment_expired, reward


async def fill(store: EventStore) -> None:
    meta = EventMetadata(caused_by="user:42", correlation_id=uuid.uuid4())
    for n in range(1, 8):
        await store.append(f"payment-{n}", [payment_created(n)], metadata=meta)
        await store.append(f"user-{n}", [reward(n)])
    await store.append("payment-3", [payment_expired(3)])
    # An event of a type this release does not know (a newer release wrote it): exported as
    # stored, like any other.
    await store.execute_sql(
        "INSERT INTO i3lani.events (event_id, stream, stream_version, type, schema_version,"
        " payload) VALUES ($1, 'future-1', 1, 'FutureThing', 3, '{\"shape\": \"new\"}')",
        uuid.uuid4(),
    )


@pytest.fixture
def cli(dsn: str, clean_env: dict[str, str]) -> Cli:
    return Cli(dsn, clean_env)


def exported(path: Path) -> list[dict[str, object]]:
    with gzip.open(path, "rb") as file:
        return [json.loads(text) for text in file]


async def test_an_export_holds_every_event_as_stored_in_reading_order(
    store: EventStore, tmp_path: Path
) -> None:
    await fill(store)
    path = tmp_path / "log.jsonl.gz"
    manifest = await export_range(store, path, after=START)
    rows = exported(path)
    stored = [r async for r in store.read_all(skip_unknown=True)]
    assert manifest.events == len(rows) == len(stored) + 1  # the unknown type too
    assert [row["position"] for row in rows][:-1] == [r.position for r in stored]
    assert (manifest.first_position, manifest.last_position) == (
        rows[0]["position"],
        rows[-1]["position"],
    )
    assert manifest.upto == await store.head()
    # Payload and metadata are the log's own JSON.
    first = rows[0]
    assert first["type"] == "PaymentCreated"
    _, _, stored_payload = DEFAULT_REGISTRY.encode(payment_created(1))
    assert first["payload"] == json.loads(stored_payload)
    assert first["metadata"]["caused_by"] == "user:42"
    assert rows[-1]["type"] == "FutureThing"
    assert (rows[-1]["schema_version"], rows[-1]["payload"]) == (3, {"shape": "new"})
    with gzip.open(path, "rb") as file:
        assert hashlib.sha256(file.read()).hexdigest() == manifest.sha256
    on_disk = msgspec.json.decode(manifest_path(path).read_bytes(), type=Manifest)
    assert on_disk == manifest
    assert manifest.compressed_bytes == path.stat().st_size
    verified = await verify_export(store, path)
    assert (verified.events, verified.sha256) == (manifest.events, manifest.sha256)


async def test_a_range_between_two_positions(store: EventStore, tmp_path: Path) -> None:
    await fill(store)
    everything = [r async for r in store.read_all(skip_unknown=True)]
    after, upto = everything[2], everything[9]
    path = tmp_path / "range.jsonl.gz"
    manifest = await export_range(
        store, path, after=after.cursor, upto=await store.cursor_at(upto.position)
    )
    assert [row["position"] for row in exported(path)] == [r.position for r in everything[3:10]]
    assert manifest.events == 7
    assert (await verify_export(store, path)).events == 7


async def test_an_export_never_overwrites_a_file(store: EventStore, tmp_path: Path) -> None:
    await fill(store)
    path = tmp_path / "log.jsonl.gz"
    await export_range(store, path, after=START)
    with pytest.raises(ExportError, match="exists already: exports never overwrite a file"):
        await export_range(store, path, after=START)


async def test_a_changed_file_or_a_changed_log_is_found(store: EventStore, tmp_path: Path) -> None:
    await fill(store)
    path = tmp_path / "log.jsonl.gz"
    manifest = await export_range(store, path, after=START)
    rows = exported(path)
    rows[1]["payload"]["amount_nanotons"] = 1  # type: ignore[index]
    forged = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    path.write_bytes(gzip.compress(forged))
    with pytest.raises(ExportError, match="does not match its manifest: 16 events"):
        await verify_export(store, path)
    # A manifest forged to fit the file: the log still tells.
    forged_manifest = msgspec.structs.replace(manifest, sha256=hashlib.sha256(forged).hexdigest())
    manifest_path(path).write_bytes(msgspec.json.encode(forged_manifest))
    with pytest.raises(ExportError, match="does not match the log: the log holds 16 events"):
        await verify_export(store, path)


async def test_the_command_exports_and_verifies_in_one_line_each(
    cli: Cli, store: EventStore, tmp_path: Path
) -> None:
    await fill(store)
    path = tmp_path / "log.jsonl.gz"
    made = await cli("export", "--out", str(path))
    assert made.returncode == 0, made.stderr.decode()
    [said] = lines(made.stdout)
    assert said.startswith(f"exported 16 events (positions 1 to 16) to {path}: ")
    assert "bytes per event compressed, " in said
    checked = await cli("export", "--verify", str(path))
    assert checked.returncode == 0, checked.stderr.decode()
    assert lines(checked.stdout) == [
        f"verified {path}: 16 events, the same as the log's (positions 1 to 16)"
    ]
    again = await cli("export", "--out", str(path))
    assert again.returncode == 1
    assert lines(again.stderr) == [
        f"i3lani export: {path} exists already: exports never overwrite a file"
    ]
    nowhere = await cli("export", "--out", str(tmp_path / "no" / "such.jsonl.gz"))
    assert nowhere.returncode == 1
    [refusal] = lines(nowhere.stderr)
    assert refusal.startswith("i3lani export: cannot write "), refusal
    assert "No such file or directory" in refusal
    missing = await cli("export", "--verify", str(tmp_path / "none.jsonl.gz"))
    assert missing.returncode == 1
    assert "none.jsonl.gz.manifest.json is missing" in missing.stderr.decode()
