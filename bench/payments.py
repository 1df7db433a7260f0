"""Payment verification's figures: N pending payments against N TonAPI transactions (10,000, or
2,000 with ``--quick``), time and memory, each beside a reference measured in the same run.

1. Pure matching: :func:`actors.payments.match_all` on decoded transactions, beside the bare
   minimum a matcher must do (a regex full match on the comment and a dict lookup of the payment
   id per transaction, no other rule): best and median of R calls, tracemalloc peak, and the RSS
   growth of one call in a fresh process.
2. End to end: a real :class:`~actors.payment_monitor.PaymentMonitor` in a worker process of its
   own (an :class:`~actors.runtime.ActorRunner` fenced by its lease, as the supervisor runs it),
   N ``PaymentCreated`` already in the log, a :class:`~ops.standins.TonApiStandIn` in another
   process holding N incoming transactions for the wallet, and one ``ask(CheckPayments())``:
   the time to the reply split into its phases (fetch, match, decide, commit, fold), the
   worker's peak RSS growth, then the recovery of a fresh runner over the whole category.
   References: raw httpx GETs of the same pages (fetch), raw asyncpg ``executemany`` of the same
   rows into a copy of ``i3lani.events`` (append), a raw asyncpg read of the same rows (recovery).

The processes are ``python -m bench.payments standin|worker|rss ...`` (see :func:`main`); the
bench starts them. ``worker --profile FILE`` keeps a cProfile of the ask for a closer look.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import ctypes.util
import gc
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import asyncpg
import httpx
import msgspec
from anyio.abc import Process

from actors.config import Settings
from actors.payment_monitor import CheckPayments, MonitorState, PaymentMonitor, ScanResult
from actors.payments import Confirm, Decision, Ignore, PendingPayment, Underpaid, match_all
from actors.runtime import ActorRef, ActorRunner, Emit, Message
from actors.runtime.clock import SystemClock
from actors.ton import Address, memo_for
from actors.tonapi import MAX_PAGE_SIZE, TonApiClient
from actors.tonapi_models import Transaction, decode_transactions
from bench.measure import BenchContext
from bench.report import Row
from events import ActorTicked, PaymentCreated
from events.streams import actor_stream, payment_stream, tick_stream
from ops.standins import TonApiStandIn, TransferOp
from store import NO_STREAM, Cursor, EventStore, RecordedEvent
from store.eventstore import init_connection
from store.leases import Leases
from store.queries import query

__all__ = ["NOTES", "run", "plan_transfers", "bare_match", "main"]

SEED: Final = 20_260_101
WALLET: Final = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
WALLET_RAW: Final = Address.parse(WALLET).to_raw()
FIRST_LT: Final = 47_600_000_000_001
LT_STEP: Final = 1_000
PAYERS: Final = 500  # distinct payer wallets
PAGE: Final = MAX_PAGE_SIZE  # what the monitor asks TonAPI for (its maximum, 1000)
SMALL_PAGE: Final = 100  # TonApiClient.transactions_since's default page size
READ_PAGE: Final = 1000  # the store's read page, for the recovery reference
ASK_TIMEOUT: Final = 900.0
DSN_ENV: Final = "I3LANI_BENCH_DSN"  # the worker's database: never on a command line
NODE: Final = "bench-payments"
# ActorRunner's names for the monitor's checkpoint and tick stream (the worker checks them).
CHECKPOINT: Final = actor_stream(PaymentMonitor.name)
TICK_STREAM: Final = tick_stream(PaymentMonitor.name)

# The chain: kind and percentage of the N transactions, shuffled with a fixed seed.
MIX: Final[tuple[tuple[str, int], ...]] = (
    ("exact", 80),  # i3lani_<id>, the expected amount: confirms
    ("underpaid", 3),  # PaymentUnderpaid
    ("overpaid", 3),  # confirms, overpaid recorded
    ("memo_variant", 3),  # "  I3LANI_<id>\n", zero-width space...: confirms after normalising
    ("foreign_comment", 3),  # "pay i3lani_<id>", "i3lani_0<id>", "hello": ignored
    ("bounced", 2),
    ("aborted", 2),
    ("jetton", 2),  # a jetton transfer notification carrying the memo: ignored
    ("unknown_payment", 1),  # i3lani_<id> of no tracked payment: ignored
    ("no_comment", 1),  # a plain transfer: ignored
)
CONFIRMING: Final = frozenset({"exact", "overpaid", "memo_variant"})
_VARIANTS: Final = ("  I3LANI_{}\n", "I3lani_{}", "\u200bi3lani_{} ", "\ti3lani_{}")
_FOREIGN: Final = ("i3lani_{} thanks", "pay i3lani_{}", "i3lani_0{}", "i3lani {}", "hello")

NOTES = [
    "payments, data: N pending payments (ids 1..N, not expired) and N incoming transactions to "
    "the wallet built with TonApiStandIn.transfer (TonAPI's JSON shape, decoded with "
    "decode_transactions): "
    + ", ".join(f"{share}% {kind.replace('_', ' ')}" for kind, share in MIX)
    + "; each transaction names its own payment, so about 86% of the payments are confirmed.",
    "payments, pure: match_all(wallet, pending, used_hashes=empty, transactions) against the "
    "bare minimum (per transaction: the decoded comment, one regex full match tolerating case "
    "and surrounding whitespace, one dict lookup; no other rule, no result objects), called in "
    "turns, GC on, gc.collect() before each call, one untimed warm-up each. tracemalloc: the peak "
    "of Python allocations during one call (its result included). RSS growth: in a fresh "
    "process holding only the decoded data, gc.collect() and malloc_trim(0), then VmHWM - VmRSS "
    "around one call.",
    "payments, end to end: the monitor runs in a worker process of its own (ActorRunner fenced by"
    " its lease, as the supervisor runs it; TonApiClient with pages of 1000, as the monitor "
    "asks); the TonAPI stand-in in another process. Before the ask the log holds the N "
    "PaymentCreated, the monitor's checkpoint is at their end and its tick is not due, so the ask"
    " is the only scan. Phases from the actor's own hooks: fetch (transactions_since), match (the"
    " rest of perform: watched_wallets, the pending map, match_all, scan_cursor), decide, fold "
    "(evolve of the appended events); commit is what remains (the append transaction). RSS "
    "growth: gc.collect() and malloc_trim(0), then VmHWM - VmRSS around the ask (the recovery: "
    "around the first start in a fresh worker).",
    "payments, references: fetch = the same GETs (same after_lt and limit) with a bare "
    "httpx.AsyncClient, bodies read, not decoded; append = the same rows (ids, streams, versions, "
    "payloads, metadata) with one executemany in one transaction, into a copy of i3lani.events "
    "(LIKE ... INCLUDING ALL: same indexes and constraints, no triggers) holding the same rows "
    "the log held before the ask; recovery = the store's read_category query, pages of "
    f"{READ_PAGE}, rows left undecoded. Each reference and the recovery: best of R runs.",
]


# -- the data -------------------------------------------------------------------------------------
class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """One transaction of the bench's chain, as arguments of :meth:`TonApiStandIn.transfer`."""

    kind: str
    payment_id: int
    value: int
    comment: str | None
    op: TransferOp
    lt: int
    utime: int
    tx_hash: str
    source: str
    bounced: bool = False
    aborted: bool = False


def price(payment_id: int) -> int:
    """The expected amount of a payment, nanotons (1 to 2 TON)."""
    return 1_000_000_000 + (payment_id % 5) * 250_000_000


def created_at(base_utime: int) -> datetime:
    return datetime.fromtimestamp(base_utime - 600, UTC)


def expires_at(base_utime: int) -> datetime:
    return created_at(base_utime) + timedelta(days=2)


def plan_transfers(count: int, base_utime: int) -> list[Transfer]:
    """The chain, deterministic for ``(count, base_utime)``: transaction i concerns payment i+1,
    ten transactions a second from ``base_utime`` (old enough that no unknown memo holds the
    monitor's cursor back)."""
    rng = random.Random(SEED)
    kinds = [kind for kind, share in MIX for _ in range(round(count * share / 100))]
    kinds = (kinds + ["exact"] * count)[:count]
    rng.shuffle(kinds)
    payers = [f"0:{rng.getrandbits(256):064x}" for _ in range(PAYERS)]
    out: list[Transfer] = []
    for index, kind in enumerate(kinds):
        payment_id = index + 1
        expected = price(payment_id)
        value, comment = expected, memo_for(payment_id)
        op: TransferOp = "text_comment"
        bounced = aborted = False
        if kind == "underpaid":
            value = expected - rng.randrange(1, expected // 10)
        elif kind == "overpaid":
            value = expected + rng.randrange(1, 1_000_000_000)
        elif kind == "memo_variant":
            comment = rng.choice(_VARIANTS).format(payment_id)
        elif kind == "foreign_comment":
            comment = rng.choice(_FOREIGN).format(payment_id)
        elif kind == "bounced":
            bounced = True
        elif kind == "aborted":
            aborted = True
        elif kind == "jetton":
            op = "jetton_notify"
        elif kind == "unknown_payment":
            comment = memo_for(10 * count + payment_id)
        elif kind == "no_comment":
            op = "none"
        out.append(
            Transfer(
                kind=kind,
                payment_id=payment_id,
                value=value,
                comment=comment,
                op=op,
                lt=FIRST_LT + index * LT_STEP,
                utime=base_utime + index // 10,
                tx_hash=rng.randbytes(32).hex(),
                source=rng.choice(payers),
                bounced=bounced,
                aborted=aborted,
            )
        )
    return out


def fill(standin: TonApiStandIn, transfers: Sequence[Transfer]) -> None:
    """Put the transfers on the stand-in's simulated chain (a stand-in need not be running)."""
    for t in transfers:
        standin.transfer(
            WALLET_RAW,
            source=t.source,
            value=t.value,
            comment=t.comment,
            lt=t.lt,
            utime=t.utime,
            success=not t.aborted,
            aborted=t.aborted,
            bounced=t.bounced,
            op=t.op,
            tx_hash=t.tx_hash,
        )


def transactions_body(transfers: Sequence[Transfer]) -> bytes:
    """The transfers as one TonAPI ``.../transactions`` response body."""
    standin = TonApiStandIn()
    fill(standin, transfers)
    return msgspec.json.encode({"transactions": standin.transactions(WALLET_RAW)})


def pending_payments(count: int, base_utime: int) -> dict[int, PendingPayment]:
    expires = expires_at(base_utime)
    return {
        pid: PendingPayment(payment_id=pid, expected_nanotons=price(pid), expires_at=expires)
        for pid in range(1, count + 1)
    }


def expected_outcome(transfers: Sequence[Transfer]) -> dict[str, int]:
    """What matching must find: confirmations and underpayments (everything else is ignored)."""
    kinds = Counter(t.kind for t in transfers)
    return {
        "confirmed": sum(kinds[kind] for kind in CONFIRMING),
        "underpaid": kinds["underpaid"],
    }


# -- the reference matcher ------------------------------------------------------------------------
_BARE_MEMO: Final = re.compile(r"\s*i3lani_([1-9][0-9]{0,17})\s*", re.IGNORECASE | re.ASCII)


def bare_match(
    pending: Mapping[int, PendingPayment], transactions: Sequence[Transaction]
) -> list[PendingPayment | None]:
    """The bare minimum: the payment each transaction's comment names, if tracked."""
    fullmatch = _BARE_MEMO.fullmatch
    out: list[PendingPayment | None] = []
    append = out.append
    for tx in transactions:
        msg = tx.in_msg
        body = msg.decoded_body if msg is not None else None
        text = body.get("text") if isinstance(body, dict) else None
        found = fullmatch(text) if isinstance(text, str) else None
        append(pending.get(int(found[1])) if found else None)
    return out


# -- memory ---------------------------------------------------------------------------------------
def _status_bytes(name: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    # Not glibc: nothing is trimmed, and a growth may then be understated.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class PeakRss:
    """The growth of this process's resident set from :meth:`start` to its peak at :meth:`stop`:
    the kernel's high-water mark (reset through /proc/self/clear_refs), else sampled every ms."""

    def __init__(self) -> None:
        self.method = "unavailable"
        self._base: int | None = None
        self._peak = 0
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        """Collect garbage and hand free heap back to the system first (glibc malloc_trim), so
        that the growth is memory the measured work needs, not a reuse of what an earlier step
        left free (without it the same ask measured anywhere from 4 to 28 MB)."""
        gc.collect()
        _malloc_trim()
        self._base = _status_bytes("VmRSS")
        if self._base is None:
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")  # reset VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled every 1 ms"
            self._peak = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self._peak = max(self._peak, _status_bytes("VmRSS") or 0)

    def stop(self) -> float:
        """Bytes of growth (NaN when it cannot be measured here)."""
        if self._base is None:
            return float("nan")
        if self._sampler is not None:
            self._done.set()
            self._sampler.join()
            peak = self._peak
        else:
            peak = _status_bytes("VmHWM") or self._base
        return float(max(0, peak - self._base))


def _traced_peak(call: Callable[[], object]) -> float:
    """Peak bytes of Python allocations during ``call()`` (tracemalloc), its result included."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return float(peak - base)


MB: Final = 1024 * 1024


# -- suite ----------------------------------------------------------------------------------------
async def run(ctx: BenchContext) -> list[Row]:
    count = 2_000 if ctx.quick else 10_000
    rounds = 7 if ctx.quick else 21
    base_utime = int(time.time()) - 3600 - count // 10
    transfers = plan_transfers(count, base_utime)
    rows = await _pure(ctx, count, rounds, base_utime, transfers)
    rows += await _end_to_end(ctx, count, 3, base_utime, transfers)
    return rows


def _section(kind: str, count: int) -> str:
    return f"payments: {kind}, {count:,} pending payments x {count:,} transactions"


async def _pure(
    ctx: BenchContext, count: int, rounds: int, base_utime: int, transfers: Sequence[Transfer]
) -> list[Row]:
    ctx.log(f"payments: building {count:,} transactions ...")
    body = transactions_body(transfers)
    decoded_bytes = _traced_peak(lambda: decode_transactions(body))
    transactions = decode_transactions(body)
    pending = pending_payments(count, base_utime)
    wallet = Address.parse(WALLET)
    used: set[str] = set()

    decisions = match_all(wallet, pending, used, transactions)
    outcome = _check_decisions(decisions, expected_outcome(transfers))
    bare_found = sum(1 for found in bare_match(pending, transactions) if found is not None)

    ctx.log(f"payments: match_all vs bare matcher, {rounds} calls each ...")
    contenders: dict[str, Callable[[], object]] = {
        "match_all": lambda: match_all(wallet, pending, used, transactions),
        "bare": lambda: bare_match(pending, transactions),
    }
    times = _time_calls(rounds, contenders)
    traced = {name: _traced_peak(call) for name, call in contenders.items()}
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="i3lani-bench-") as tmp:
        path = Path(tmp) / "transactions.json"
        await anyio.Path(path).write_bytes(body)
        for name in contenders:
            rss[name] = await _fresh_rss(path, name, count, base_utime)
    for name in contenders:
        ctx.log(
            f"  {name}: best {min(times[name]) * 1000:.2f} ms, median "
            f"{statistics.median(times[name]) * 1000:.2f} ms, tracemalloc peak "
            f"{traced[name] / MB:.1f} MB, RSS growth {rss[name] / MB:.1f} MB"
        )
    details: dict[str, Any] = {
        "transactions": count,
        "pending": count,
        "calls": rounds,
        "decisions": outcome,
        "bare_matcher_found": bare_found,
        "decoded_transactions_mb": decoded_bytes / MB,
        "body_bytes": len(body),
        "times_ms": {name: [t * 1000 for t in values] for name, values in times.items()},
    }
    section = _section("match_all, pure", count)
    ms = {name: [t * 1000 for t in values] for name, values in times.items()}
    return [
        Row(
            section,
            f"match_all, best of {rounds}",
            min(ms["match_all"]),
            "ms",
            f"regex + dict lookup, best of {rounds}",
            min(ms["bare"]),
            details=details,
        ),
        Row(
            section,
            f"match_all, median of {rounds}",
            statistics.median(ms["match_all"]),
            "ms",
            f"regex + dict lookup, median of {rounds}",
            statistics.median(ms["bare"]),
        ),
        Row(
            section,
            "match_all, tracemalloc peak",
            traced["match_all"] / MB,
            "MB",
            "regex + dict lookup, tracemalloc peak",
            traced["bare"] / MB,
        ),
        Row(
            section,
            "match_all, RSS growth (fresh process)",
            rss["match_all"] / MB,
            "MB",
            "regex + dict lookup, RSS growth",
            rss["bare"] / MB,
        ),
    ]


def _check_decisions(decisions: Sequence[Decision], expected: Mapping[str, int]) -> dict[str, int]:
    """Counts of decisions by kind; raises if matching did not find what the chain holds."""
    counts: Counter[str] = Counter()
    for decision in decisions:
        if isinstance(decision, Ignore):
            counts[f"ignore:{decision.reason.value}"] += 1
        else:
            counts[type(decision).__name__] += 1
    confirmed = sum(1 for d in decisions if isinstance(d, Confirm))
    underpaid = sum(1 for d in decisions if isinstance(d, Underpaid))
    if (confirmed, underpaid) != (expected["confirmed"], expected["underpaid"]):
        raise RuntimeError(
            f"match_all found {confirmed} confirmations and {underpaid} underpayments, the "
            f"chain holds {expected['confirmed']} and {expected['underpaid']}: {dict(counts)}"
        )
    return dict(sorted(counts.items()))


def _time_calls(
    rounds: int, contenders: Mapping[str, Callable[[], object]]
) -> dict[str, list[float]]:
    """Seconds per call, contenders taking turns (A B, B A, ...) after one untimed warm-up."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    items = list(contenders.items())
    for round_no in range(rounds + 1):
        for name, call in items if round_no % 2 == 0 else items[::-1]:
            gc.collect()
            began = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - began
            del result
            if round_no:
                times[name].append(elapsed)
    return times


def _module_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.payments", *args]


_ROOT: Final = Path(__file__).resolve().parent.parent


async def _run_json(command: list[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a helper process (its stderr goes to ours) and parse its last stdout line."""
    done = await anyio.run_process(
        command, stderr=None, cwd=_ROOT, env=dict(env) if env is not None else None
    )
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"{command[3]} printed nothing")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def _fresh_rss(path: Path, matcher: str, count: int, base_utime: int) -> float:
    result = await _run_json(
        _module_command(
            "rss",
            "--body",
            str(path),
            "--matcher",
            matcher,
            "--count",
            str(count),
            "--base-utime",
            str(base_utime),
        )
    )
    return float(result["rss_growth_bytes"])


def _rss_main(args: argparse.Namespace) -> dict[str, Any]:
    body = Path(args.body).read_bytes()
    transactions = decode_transactions(body)
    del body
    pending = pending_payments(args.count, args.base_utime)
    wallet = Address.parse(WALLET)
    used: set[str] = set()
    gc.collect()
    peak = PeakRss()
    peak.start()
    if args.matcher == "match_all":
        result: list[Any] = list(match_all(wallet, pending, used, transactions))
    else:
        result = bare_match(pending, transactions)
    growth = peak.stop()
    return {"rss_growth_bytes": growth, "method": peak.method, "results": len(result)}


# -- end to end -----------------------------------------------------------------------------------
def _settings(tonapi_url: str) -> Settings:
    return Settings(tonapi_url=tonapi_url, wallet=WALLET, payment_interval=3600.0)


async def _end_to_end(
    ctx: BenchContext, count: int, rounds: int, base_utime: int, transfers: Sequence[Transfer]
) -> list[Row]:
    async with EventStore.open(ctx.dsn) as store:
        existing = await store._pool.fetchval(
            "SELECT count(*) FROM i3lani.events WHERE category = 'payment'"
        )
        if existing:
            raise RuntimeError(f"the benchmark database already holds {existing} payment events")
        ctx.log(f"payments: seeding {count:,} PaymentCreated ...")
        await _seed_log(store, count, base_utime)
    env = {**os.environ, DSN_ENV: ctx.dsn}
    common = ["--count", str(count), "--base-utime", str(base_utime), "--rounds", str(rounds)]
    async with _standin_process(count, base_utime) as url:
        ctx.log(f"payments: worker process: ask CheckPayments, {count:,} transactions ...")
        ask = await _run_json(_module_command("worker", "ask", "--tonapi", url, *common), env)
        ctx.log("payments: worker process: recovery ...")
        recovery = await _run_json(
            _module_command("worker", "recover", "--tonapi", url, *common), env
        )
    expected = expected_outcome(transfers)
    written: dict[str, int] = ask["written"]
    if (written.get("PaymentConfirmed", 0), written.get("PaymentUnderpaid", 0)) != (
        expected["confirmed"],
        expected["underpaid"],
    ):
        raise RuntimeError(f"the monitor wrote {written}, the chain asks for {expected}")
    phases: dict[str, float] = ask["phases_s"]
    events = sum(written.values())
    pages = ask["pages"]
    ms = 1000.0
    section = _section("PaymentMonitor, 1 ask(CheckPayments())", count)
    details = {"ask": ask, "recovery": recovery}
    rows = [
        Row(
            section,
            f"ask -> reply ({events:,} events written)",
            ask["ask_s"] * ms,
            "ms",
            "raw fetch + raw executemany",
            (ask["raw_fetch_s"] + ask["raw_insert_s"]) * ms,
            details=details,
        ),
        Row(
            section,
            f"  fetch: TonApiClient, {pages} pages of {PAGE}",
            phases["fetch"] * ms,
            "ms",
            "raw httpx GET of the same pages",
            ask["raw_fetch_s"] * ms,
        ),
        Row(
            section,
            "  match: watched_wallets, pending map, match_all, scan_cursor",
            phases["match"] * ms,
            "ms",
        ),
        Row(section, "  decide: the events to append", phases["decide"] * ms, "ms"),
        Row(
            section,
            f"  commit: {events:,} events, 1 transaction",
            phases["commit"] * ms,
            "ms",
            f"raw asyncpg executemany, {events:,} rows",
            ask["raw_insert_s"] * ms,
        ),
        Row(section, "  fold: evolve() of the appended events", phases["fold"] * ms, "ms"),
        Row(section, "worker peak RSS growth during the ask", ask["rss_growth_bytes"] / MB, "MB"),
    ]
    folded = recovery["events"]
    recovery_section = f"payments: PaymentMonitor recovery, fold of {folded:,} payment events"
    rows += [
        Row(
            recovery_section,
            f"fresh ActorRunner until started, best of {rounds}",
            recovery["recover_best_s"] * ms,
            "ms",
            f"raw asyncpg read of the rows, undecoded, best of {rounds}",
            recovery["raw_read_best_s"] * ms,
            details=recovery,
        ),
        Row(
            recovery_section,
            "peak RSS growth, first recovery in a fresh worker",
            recovery["rss_growth_bytes"] / MB,
            "MB",
        ),
    ]
    ctx.log(
        "  ask: "
        + ", ".join(f"{name} {value * 1000:.0f} ms" for name, value in phases.items())
        + f"; total {ask['ask_s'] * 1000:.0f} ms; raw fetch {ask['raw_fetch_s'] * 1000:.0f} ms, "
        f"raw insert {ask['raw_insert_s'] * 1000:.0f} ms"
    )
    ctx.log(
        f"  TonApiClient.transactions_since alone: pages of {SMALL_PAGE} "
        f"{ask['client_fetch_s'] * 1000:.0f} ms, pages of {PAGE} "
        f"{ask['client_fetch_1000_s'] * 1000:.0f} ms (raw httpx, pages of {PAGE}: "
        f"{ask['raw_fetch_1000_s'] * 1000:.0f} ms)"
    )
    return rows


async def _seed_log(store: EventStore, count: int, base_utime: int) -> None:
    """N PaymentCreated (8 writers, group commit); then the monitor's checkpoint at their end
    (it has seen them) and a tick just run (the next one is an hour away)."""
    created, expires = created_at(base_utime), expires_at(base_utime)
    ids = iter(range(1, count + 1))

    async def writer() -> None:
        for pid in ids:
            event = PaymentCreated(
                payment_id=pid,
                user_id=5_000_000_000 + pid,
                plan="month",
                amount_nanotons=price(pid),
                wallet=WALLET,
                memo=memo_for(pid),
                created_at=created,
                expires_at=expires,
            )
            await store.append(payment_stream(pid), [event], expected_version=NO_STREAM)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(writer)
    now = datetime.now(UTC)
    tick = await store.append(
        TICK_STREAM,
        [ActorTicked(actor=PaymentMonitor.name, due_at=now, ticked_at=now)],
        expected_version=NO_STREAM,
    )
    # The tick's cursor, not store.head(): a transaction open elsewhere on the server can keep
    # the last PaymentCreated unreadable a moment, and head() would stop short of it (the
    # monitor would then react to it with a scan of its own).
    cursor = Cursor(tick.transaction_id, tick.first_position)
    await store.save_checkpoint(CHECKPOINT, cursor, expected=None)


@asynccontextmanager
async def _standin_process(count: int, base_utime: int) -> AsyncIterator[str]:
    """A TonAPI stand-in holding the bench's chain, in a process of its own: its URL."""
    command = _module_command("standin", "--count", str(count), "--base-utime", str(base_utime))
    process: Process = await anyio.open_process(command, stderr=None, cwd=_ROOT)
    try:
        assert process.stdout is not None
        buffer = b""
        with anyio.fail_after(120):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive()
                buffer += chunk
        url: str = json.loads(buffer.split(b"\n", 1)[0])["url"]
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def _standin_main(args: argparse.Namespace) -> None:
    transfers = plan_transfers(args.count, args.base_utime)
    async with TonApiStandIn() as standin:
        fill(standin, transfers)
        print(json.dumps({"url": standin.url}), flush=True)
        # Serve until the bench closes our stdin (or goes away).
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)


# -- the worker process ---------------------------------------------------------------------------
class _TimedClient(TonApiClient):
    """The real client, timing transactions_since and recording the pages it asked for."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.scans = 0
        self.fetch_s = 0.0
        self.pages: list[tuple[int | None, int]] = []

    async def transactions_page(
        self,
        account: str,
        *,
        after_lt: int | None = None,
        limit: int = 100,
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> list[Transaction]:
        self.pages.append((after_lt, limit))
        return await super().transactions_page(
            account, after_lt=after_lt, limit=limit, sort_order=sort_order
        )

    async def transactions_since(
        self,
        account: str,
        after_lt: int | None,
        *,
        page_size: int = 100,
        max_pages: int = 100,
    ) -> list[Transaction]:
        self.scans += 1
        began = time.perf_counter()
        try:
            return await super().transactions_since(
                account, after_lt, page_size=page_size, max_pages=max_pages
            )
        finally:
            self.fetch_s += time.perf_counter() - began


class _TimedMonitor(PaymentMonitor):
    """The real monitor, timing its own phases (a perf_counter pair around each hook)."""

    def __init__(self, settings: Settings, *, tonapi: TonApiClient) -> None:
        super().__init__(settings, tonapi=tonapi)
        self.timing = False
        self.perform_s = self.decide_s = self.fold_s = 0.0
        self.folded = 0

    async def perform(
        self, state: MonitorState, message: Message, runner: ActorRunner[MonitorState]
    ) -> Sequence[Message]:
        began = time.perf_counter()
        try:
            return await super().perform(state, message, runner)
        finally:
            self.perform_s += time.perf_counter() - began

    def decide(self, state: MonitorState, message: Message) -> Sequence[Emit]:
        began = time.perf_counter()
        try:
            return super().decide(state, message)
        finally:
            if isinstance(message, ScanResult):
                self.decide_s += time.perf_counter() - began

    def evolve(self, state: MonitorState, recorded: RecordedEvent) -> MonitorState:
        if not self.timing:
            return super().evolve(state, recorded)
        began = time.perf_counter()
        try:
            return super().evolve(state, recorded)
        finally:
            self.fold_s += time.perf_counter() - began
            self.folded += 1


def _dsn() -> str:
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        raise SystemExit(f"{DSN_ENV} is not set: the worker is started by `python -m bench`")
    return dsn


def _best(values: Sequence[float]) -> float:
    return min(values) if values else float("nan")


async def _worker_ask(args: argparse.Namespace) -> dict[str, Any]:
    dsn = _dsn()
    settings = _settings(args.tonapi)
    out: dict[str, Any] = {}
    async with EventStore.open(dsn, node=NODE) as store:
        lease = await Leases(store, NODE, ttl=3600).acquire(PaymentMonitor.name)
        if lease is None:
            raise RuntimeError("the PaymentMonitor lease is held by another node")
        async with _TimedClient(settings.tonapi_url) as client, anyio.create_task_group() as tg:
            monitor = _TimedMonitor(settings, tonapi=client)
            runner = ActorRunner(monitor, store, SystemClock(), node=NODE, fence=lease.fence)
            began = time.perf_counter()
            ref: ActorRef = await tg.start(runner.run)
            out["first_start_s"] = time.perf_counter() - began
            if (runner.checkpoint_name, runner.tick_stream) != (CHECKPOINT, TICK_STREAM):
                raise RuntimeError("ActorRunner names its checkpoint or tick stream otherwise")
            await anyio.sleep(0.5)  # the subscription, the ticker, the task processor settle
            gc.collect()
            profiler = cProfile.Profile() if args.profile else None
            monitor.timing = True
            peak = PeakRss()
            peak.start()
            began = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            await ref.ask(CheckPayments(), timeout=ASK_TIMEOUT)
            if profiler is not None:
                profiler.disable()
            out["ask_s"] = time.perf_counter() - began
            out["rss_growth_bytes"] = peak.stop()
            out["rss_method"] = peak.method
            monitor.timing = False
            if monitor.last_error is not None:
                raise RuntimeError(f"the scan failed: {monitor.last_error}")
            if client.scans != 1:
                raise RuntimeError(f"{client.scans} scans instead of the ask's one (a tick?)")
            runner.request_stop()
            tg.cancel_scope.cancel()
        if profiler is not None:
            profiler.dump_stats(args.profile)
        match_s = monitor.perform_s - client.fetch_s
        commit_s = out["ask_s"] - monitor.perform_s - monitor.decide_s - monitor.fold_s
        out["phases_s"] = {
            "fetch": client.fetch_s,
            "match": match_s,
            "decide": monitor.decide_s,
            "commit": commit_s,
            "fold": monitor.fold_s,
        }
        out["folded"] = monitor.folded
        out["pages"] = len(client.pages)
        records = await store._pool.fetch(
            f"SELECT type, count(*) FROM i3lani.events WHERE {_BY_MONITOR} GROUP BY type"
        )
        out["written"] = {record[0]: record[1] for record in records}
        await Leases(store, NODE).release(lease)
        _progress(f"  ask: {out['ask_s'] * 1000:.0f} ms, {out['written']}")

        fetches = [await _raw_fetch(args.tonapi, client.pages) for _ in range(args.rounds)]
        out["raw_fetch_s"] = _best(fetches)
        out["raw_fetch_runs_s"] = fetches
        out["client_fetch_s"] = _best(
            [await _client_fetch(args.tonapi, SMALL_PAGE) for _ in range(args.rounds)]
        )
        # What pages of TonAPI's maximum (1000) would cost, client and raw.
        out["client_fetch_1000_s"] = _best(
            [await _client_fetch(args.tonapi, 1000) for _ in range(args.rounds)]
        )
        big_pages = [
            (None if i == 0 else FIRST_LT + (i * 1000 - 1) * LT_STEP, 1000)
            for i in range(-(-args.count // 1000) + 1)
        ]
        out["raw_fetch_1000_s"] = _best(
            [await _raw_fetch(args.tonapi, big_pages) for _ in range(args.rounds)]
        )
        inserts = await _raw_inserts(store, args.rounds)
        out["raw_insert_s"] = _best(inserts)
        out["raw_insert_runs_s"] = inserts
    return out


async def _client_fetch(url: str, page_size: int) -> float:
    async with TonApiClient(url) as client:
        began = time.perf_counter()
        await client.transactions_since(WALLET_RAW, None, page_size=page_size)
        return time.perf_counter() - began


async def _raw_fetch(url: str, pages: Sequence[tuple[int | None, int]]) -> float:
    """The same GETs with a bare httpx client: bodies read, nothing decoded."""
    path = f"/v2/blockchain/accounts/{WALLET_RAW.replace(':', '%3A')}/transactions"
    async with httpx.AsyncClient(base_url=url, headers={"Accept": "application/json"}) as http:
        began = time.perf_counter()
        for after_lt, limit in pages:
            params: dict[str, str | int] = {"limit": limit, "sort_order": "asc"}
            if after_lt is not None:
                params["after_lt"] = after_lt
            response = await http.get(path, params=params)
            response.raise_for_status()
            _ = response.content
        return time.perf_counter() - began


_SCRATCH: Final = "bench_payments.events"
# The events the ask appended: the database held no payment event before the suite, and the
# monitor writes nothing else before the ask.
_BY_MONITOR: Final = (
    f"category = 'payment' AND metadata->>'caused_by' = 'actor:{PaymentMonitor.name}'"
)
_COLUMNS: Final = "event_id, stream, stream_version, type, schema_version, payload, metadata"


async def _raw_inserts(store: EventStore, rounds: int) -> list[float]:
    """The rows the ask appended, inserted with one executemany in one transaction into a copy
    of i3lani.events that holds what the log held before the ask; emptied again after each."""
    conn = await asyncpg.connect(store.dsn)
    try:
        await init_connection(conn)
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM i3lani.events WHERE {_BY_MONITOR} ORDER BY global_position"
        )
        await conn.execute("CREATE SCHEMA IF NOT EXISTS bench_payments")
        await conn.execute(f"DROP TABLE IF EXISTS {_SCRATCH}")
        await conn.execute(f"CREATE TABLE {_SCRATCH} (LIKE i3lani.events INCLUDING ALL)")
        await conn.execute(
            f"INSERT INTO {_SCRATCH} ({_COLUMNS}, transaction_id, recorded_at)"
            f" SELECT {_COLUMNS}, transaction_id, recorded_at FROM i3lani.events"
            f" WHERE ({_BY_MONITOR}) IS NOT TRUE ORDER BY global_position"
        )
        await conn.execute(f"VACUUM ANALYZE {_SCRATCH}")
        top = await conn.fetchval(f"SELECT max(global_position) FROM {_SCRATCH}")
        insert = f"INSERT INTO {_SCRATCH} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        values = [tuple(row) for row in rows]
        runs: list[float] = []
        for _ in range(rounds):
            await conn.execute("CHECKPOINT")
            began = time.perf_counter()
            async with conn.transaction():
                await conn.executemany(insert, values)
            runs.append(time.perf_counter() - began)
            await conn.execute(f"DELETE FROM {_SCRATCH} WHERE global_position > $1", top)
            await conn.execute(f"VACUUM {_SCRATCH}")
        await conn.execute("DROP SCHEMA bench_payments CASCADE")
        return runs
    finally:
        await conn.close()


async def _worker_recover(args: argparse.Namespace) -> dict[str, Any]:
    dsn = _dsn()
    settings = _settings(args.tonapi)
    out: dict[str, Any] = {}
    runs: list[float] = []
    async with EventStore.open(dsn, node=NODE) as store:
        leases = Leases(store, NODE, ttl=3600)
        out["events"] = await store._pool.fetchval(
            "SELECT count(*) FROM i3lani.events WHERE category = 'payment'"
        )
        gc.collect()
        for round_no in range(args.rounds):
            lease = await leases.acquire(PaymentMonitor.name)
            if lease is None:
                raise RuntimeError("the PaymentMonitor lease is held by another node")
            peak = PeakRss()
            if round_no == 0:
                peak.start()
            runner = ActorRunner(
                PaymentMonitor(settings), store, SystemClock(), node=NODE, fence=lease.fence
            )
            async with anyio.create_task_group() as tg:
                began = time.perf_counter()
                await tg.start(runner.run)
                runs.append(time.perf_counter() - began)
                if round_no == 0:
                    out["rss_growth_bytes"] = peak.stop()
                    out["rss_method"] = peak.method
                    out["payments_in_state"] = len(runner.state.payments)
                runner.request_stop()
                tg.cancel_scope.cancel()
            await leases.release(lease)
            del runner
            gc.collect()
        out["recover_runs_s"] = runs
        out["recover_best_s"] = _best(runs)
        reads = [await _raw_read(store) for _ in range(args.rounds)]
        out["raw_read_runs_s"] = reads
        out["raw_read_best_s"] = _best(reads)
    _progress(f"  recovery: best {out['recover_best_s'] * 1000:.0f} ms of {runs}")
    return out


async def _raw_read(store: EventStore) -> float:
    """The category's rows with the store's own query and page size, left undecoded."""
    conn = await asyncpg.connect(store.dsn)
    try:
        await init_connection(conn)
        sql = query("read_category")
        began = time.perf_counter()
        transaction_id, position = 0, 0
        while True:
            records = await conn.fetch(sql, transaction_id, position, READ_PAGE, "payment")
            if len(records) < READ_PAGE:
                break
            position, transaction_id = records[-1][0], records[-1][1]
        return time.perf_counter() - began
    finally:
        await conn.close()


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- command line (the helper processes) ----------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.payments",
        description="Helper processes of the payments suite (started by `python -m bench`).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    standin = commands.add_parser("standin", help="serve the chain until stdin closes")
    rss = commands.add_parser("rss", help="RSS growth of one matcher call, as JSON")
    rss.add_argument("--body", required=True)
    rss.add_argument("--matcher", choices=("match_all", "bare"), required=True)
    worker = commands.add_parser("worker", help=f"run the monitor on ${DSN_ENV}, print JSON")
    worker.add_argument("phase", choices=("ask", "recover"))
    worker.add_argument("--tonapi", required=True)
    worker.add_argument("--rounds", type=int, default=3)
    worker.add_argument("--profile", metavar="FILE", help="cProfile of the ask, to FILE")
    for command in (standin, rss, worker):
        command.add_argument("--count", type=int, required=True)
        command.add_argument("--base-utime", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "standin":
        anyio.run(_standin_main, args)
        return 0
    if args.command == "rss":
        result = _rss_main(args)
    elif args.phase == "ask":
        result = anyio.run(_worker_ask, args)
    else:
        result = anyio.run(_worker_recover, args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
