"""The deterministic kernel of ``i3lani simulate``: one seeded event loop on virtual time.

FoundationDB- and VOPR-style simulation runs the whole system in one process, and draws every
choice that could differ between two runs from one seed, so that a failing seed replays
exactly. This module is the loop it runs on (:class:`SimLoop`), the seeded stand-in for
:mod:`events.environment` (:class:`SimEnvironment`) and the entry point (:func:`run`).

What is deterministic, and why
    1. **Time.** :meth:`SimLoop.time` is virtual: it starts at ``start_time`` and moves only
       when nothing is ready to run, straight to the earliest timer. Nothing waits for real, so
       ``anyio.sleep(3600)`` takes microseconds; ``anyio.fail_after``, ``move_on_after`` and
       ``asyncio.wait_for`` fire at their exact virtual instants. While callbacks are ready the
       clock stands still: a step takes no virtual time.
    2. **Order.** Each step runs *one* ready callback, chosen by the loop's seeded scheduler
       from the ready ones. Ready callbacks are first put in a canonical order (plain
       callbacks in the order they were scheduled, then task steps by task serial: the order
       the loop created the tasks), so the choice does not depend on memory addresses:
       anyio and asyncio cancel tasks while iterating over sets hashed by ``id()``, and
       would otherwise leak ASLR into the schedule. Timers due at the same instant become
       ready in heap order (a function of the order they were set) and are then drawn like
       any other ready callback.
    3. **Names and draws.** Tasks without a name get ``Task-<serial>`` from the loop (asyncio's
       own counter is process-wide). The scheduler, the program's decisions
       (:func:`current_rng`) and the environment (UUIDs, ``new_rng()``) draw from three
       generators, each seeded from the run's seed.

    One consequence: ``call_soon`` is not first in, first out here, as it is in stock
    asyncio. Code that needs callback A to run before callback B must say so (await, an
    event); code that only works in queue order is shown up as racy.

The outside world
    4. **Refused at once.** Socket I/O (``add_reader``/``add_writer``, ``sock_*``,
       ``create_connection``, ``create_server``, ``getaddrinfo``, TLS, pipes), subprocesses,
       executors (``run_in_executor``, so ``asyncio.to_thread``) and thread starts (so
       ``anyio.to_thread``, which starts its workers with no loop call first: while a run is
       active, ``threading.Thread.start`` is wrapped, see ``_threads_refused``) raise
       :class:`RealWorldAccess`, one line naming what was attempted. Because a broad
       ``except Exception`` (an actor's restart guard) could swallow it, the loop also
       records it and fails the whole run at its next step. ``call_soon_threadsafe`` works
       from the loop's own thread (asyncio's Ctrl-C handling uses it) and is refused from
       any other.
    5. **Signals.** ``add_signal_handler`` is accepted so that code under test can install
       its handlers unchanged (``anyio.open_signal_receiver``), but nothing real is installed
       and a handler only runs when the simulation delivers the signal itself with
       :meth:`SimLoop.deliver_signal` (a step like any other).

What is not deterministic
    Anything that goes around the loop and :mod:`events.environment`: ``time.monotonic()``,
    ``datetime.now()``, ``uuid.uuid4()`` or an unseeded ``random.Random()`` called directly,
    blocking socket or file I/O, ``subprocess.run``. The loop refuses what it can see (rule
    4); the rest is the program's discipline, which the project's ports
    (``events.environment``, one client module per outside service) exist for. Timing of
    garbage collection (finalizers, "Task exception was never retrieved" logs) is not
    controlled either.

Failures::

    I3laniError
    └── SimulationError            the simulated run could not go on
        ├── Deadlock               nothing ready, no timer, and work is pending (lists tasks)
        ├── BudgetExceeded         more steps or more virtual time than the run allows
        ├── RealWorldAccess        the program tried real I/O, a thread or a subprocess
        └── UnsupportedAsyncio     this Python's asyncio breaks the kernel's assumptions

Every failure of :func:`run` (the program's own exceptions too) carries a note with the seed,
the step count, the virtual time, the trace digest and the last steps, so it can be replayed.

The trace
    Each step appends ``(step, virtual time, label)``: a task's name and serial
    (``worker#3``), or a plain callback's qualified name (never a ``repr``, which holds
    addresses). The whole trace is hashed as it goes (sha256, :attr:`SimResult.digest`);
    only the last ``trace_size`` steps are kept.

Private asyncio details relied on (:func:`check_asyncio_assumptions`, run by every new loop)
    ``BaseEventLoop.run_forever`` calls ``self._run_once()`` once per iteration and stops when
    ``self._stopping`` is set; stock code only appends ``Handle`` objects to ``self._ready``
    (``call_soon``, future callbacks), clears it (``close``) and pops from it in
    ``_run_once``, so SimLoop swaps that deque for a pool of its own kept in canonical order
    (``_ReadyPool``); ``call_at`` pushes ``TimerHandle`` objects on the heap
    ``self._scheduled``, and a cancelled one counts itself in ``self._timer_cancelled_count``
    while its ``_scheduled`` flag is set; a handle runs with ``handle._run()`` and holds its
    callback in ``handle._callback``, which for a task's step or wake-up is a method whose
    ``__self__`` is the task. :class:`SimLoop` replaces ``_run_once`` (the one place
    stock asyncio picks and runs callbacks) and reads the rest. Checked against CPython
    3.11.7, 3.12.1 and 3.13.0 (:data:`CHECKED_PYTHONS`), whose ``base_events.py`` agree on all
    of it and whose runs of the same seed give the same digest.

Speed
    ``python -m ops.simulate.speed`` measures it. On the shared 2-core development machine
    (two runs): 104,000 to 118,000 steps per second with ten tasks, 76,000 to 84,000 with a
    thousand ready at once, 93,000 to 99,000 when timers make the clock jump; stock asyncio
    runs the same programs 2.5 to 4 times faster (and the timers one really waits).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import hashlib
import heapq
import itertools
import math
import random
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from contextvars import Context
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from types import FrameType
from typing import Any, Final, Generic, NamedTuple, NoReturn, TypeVar, TypeVarTuple

from events import environment
from events.errors import I3laniError

__all__ = [
    "run",
    "SimResult",
    "TraceStep",
    "SimLoop",
    "SimEnvironment",
    "current_loop",
    "current_rng",
    "SimulationError",
    "Deadlock",
    "BudgetExceeded",
    "RealWorldAccess",
    "UnsupportedAsyncio",
    "check_asyncio_assumptions",
    "DEFAULT_START",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_START: Final = datetime(2025, 1, 1, tzinfo=UTC)
"""The simulated wall clock at virtual time 0 when a run is not given one."""

_CLEANUP_STEPS: Final = 100_000
"""Steps allowed, beyond the budget, to cancel what is left once the main coroutine ended."""

_PRUNE_EVERY: Final = 1024
"""Every how many task creations the loop forgets the serials of finished tasks."""

_TAIL_IN_NOTE: Final = 12
"""How many of the last steps a failure's note shows."""


# -- failures -------------------------------------------------------------------------------
class SimulationError(I3laniError):
    """The simulated run could not go on (the tree is in the module docstring)."""


class Deadlock(SimulationError):
    """Nothing is ready, no timer is set, and work is still pending: nothing can ever run."""


class BudgetExceeded(SimulationError):
    """The run took more steps or more virtual time than it was allowed."""


class RealWorldAccess(SimulationError):
    """The program tried to reach outside the simulation: I/O, a thread, a subprocess."""


class UnsupportedAsyncio(SimulationError):
    """This Python's asyncio does not work the way :class:`SimLoop` relies on."""


# -- the private parts of asyncio, in one place ---------------------------------------------
# Every private attribute the kernel touches is read or written through these few lines, and
# check_asyncio_assumptions() proves each one on the running Python.


def _ready_of(loop: asyncio.BaseEventLoop) -> collections.deque[asyncio.Handle] | _ReadyPool:
    ready: collections.deque[asyncio.Handle] | _ReadyPool = loop._ready  # type: ignore[attr-defined]
    return ready


def _install_ready(loop: asyncio.BaseEventLoop, pool: _ReadyPool) -> None:
    loop._ready = pool  # type: ignore[attr-defined]


def _timers_of(loop: asyncio.BaseEventLoop) -> list[asyncio.TimerHandle]:
    timers: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return timers


def _callback_of(handle: asyncio.Handle) -> object:
    return handle._callback  # type: ignore[attr-defined]


def _run_handle(handle: asyncio.Handle) -> None:
    handle._run()


def _take_timer(loop: asyncio.BaseEventLoop) -> asyncio.TimerHandle:
    """Pop the earliest timer off the heap, as stock ``_run_once`` does."""
    timer = heapq.heappop(_timers_of(loop))
    timer._scheduled = False  # type: ignore[attr-defined]
    return timer


def _drop_cancelled_timers(loop: asyncio.BaseEventLoop) -> None:
    """Remove cancelled timers: all of them when they are many, else those at the head."""
    timers = _timers_of(loop)
    cancelled: int = loop._timer_cancelled_count  # type: ignore[attr-defined]
    if len(timers) > 100 and cancelled * 2 > len(timers):
        kept = []
        for timer in timers:
            if timer.cancelled():
                timer._scheduled = False  # type: ignore[attr-defined]
            else:
                kept.append(timer)
        heapq.heapify(kept)
        loop._scheduled = kept  # type: ignore[attr-defined]
        loop._timer_cancelled_count = 0  # type: ignore[attr-defined]
        return
    while timers and timers[0].cancelled():
        loop._timer_cancelled_count -= 1  # type: ignore[attr-defined]
        _take_timer(loop)


CHECKED_PYTHONS: Final = ("3.11.7", "3.12.1", "3.13.0")
"""CPython versions whose asyncio the private details above were read in and tested on."""


def check_asyncio_assumptions() -> None:
    """Raise :class:`UnsupportedAsyncio` naming the first private detail this Python lacks."""

    def fail(what: str) -> NoReturn:
        raise UnsupportedAsyncio(
            f"asyncio on this Python does not match ops/simulate/kernel.py ({what}); "
            f"it was checked on CPython {', '.join(CHECKED_PYTHONS)}: re-read base_events.py"
        )

    if "_run_once" not in asyncio.BaseEventLoop.run_forever.__code__.co_names:
        # 3.13 moved the loop's set-up out of run_forever, but the call stays in it.
        fail("BaseEventLoop.run_forever no longer calls self._run_once()")
    probe = _ProbeLoop()
    try:
        if not isinstance(getattr(probe, "_ready", None), collections.deque):
            fail("BaseEventLoop._ready is not a deque")
        if not isinstance(getattr(probe, "_scheduled", None), list):
            fail("BaseEventLoop._scheduled is not a list")
        _install_ready(probe, _ReadyPool(lambda task: 1))
        handle = probe.call_soon(_no_op)
        if list(_ready_of(probe)) != [handle] or _callback_of(handle) is not _no_op:
            fail("call_soon does not append its Handle to _ready")
        timer = probe.call_at(5.0, _no_op)
        if _timers_of(probe) != [timer] or not getattr(timer, "_scheduled", False):
            fail("call_at does not push a scheduled TimerHandle on _scheduled")
        timer.cancel()
        if getattr(probe, "_timer_cancelled_count", None) != 1:
            fail("a cancelled timer does not count itself in _timer_cancelled_count")
        _drop_cancelled_timers(probe)
        if _timers_of(probe) or getattr(probe, "_timer_cancelled_count", None) != 0:
            fail("cancelled timers cannot be dropped from _scheduled")
        ran: list[int] = []
        _run_handle(asyncio.Handle(ran.append, (1,), probe))
        if ran != [1]:
            fail("Handle._run() does not call the callback")
        _ready_of(probe).clear()
        task = probe.create_task(_finish_at_once())
        (step,) = _ready_of(probe)
        if _task_of(_callback_of(step)) is not task:
            fail("a task's step callback no longer names its task as __self__")
        _run_handle(step)
        if not task.done():
            fail("a task's first step does not run its coroutine")
    finally:
        probe.close()
    if len(_ready_of(probe)):
        fail("close() does not clear _ready")


def _no_op() -> None:
    pass


async def _finish_at_once() -> None:
    pass


class _ProbeLoop(asyncio.BaseEventLoop):
    """A stock loop, never run: what check_asyncio_assumptions() pokes at."""


# -- the trace ------------------------------------------------------------------------------
class TraceStep(NamedTuple):
    """One step of a run: its number (from 1), the virtual time, and what ran."""

    step: int
    time: float
    label: str


def _label(callback: object, task: asyncio.Task[Any] | None, serial: int = 0) -> str:
    if task is not None:  # anyio names tasks after their function: the serial tells them apart
        name = task.get_name()
        return name if name == f"Task-{serial}" else f"{name}#{serial}"
    while isinstance(callback, functools.partial):  # possibly nested
        if _is_context_run(callback.func) and callback.args:  # asyncio.to_thread's wrapping
            callback = callback.args[0]
        else:
            callback = callback.func
    qualname = getattr(callback, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(callback).__qualname__


def _is_context_run(func: object) -> bool:
    return isinstance(getattr(func, "__self__", None), Context) and (
        getattr(func, "__name__", None) == "run"
    )


def _task_of(callback: object) -> asyncio.Task[Any] | None:
    """The task a ready handle steps or wakes up, if it is one (``__self__`` of the method)."""
    owner = getattr(callback, "__self__", None)
    return owner if isinstance(owner, asyncio.Task) else None


def _suspension_point(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits: its ``await`` chain, outermost frame first, and on what."""
    frames: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if not isinstance(frame, FrameType):
            break
        path = "/".join(PurePath(frame.f_code.co_filename).parts[-2:])
        frames.append(f"{frame.f_code.co_qualname} ({path}:{frame.f_lineno})")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    if not frames:
        return "(not started or finished)"
    where = " > ".join(frames)
    if awaited is not None:
        where += f" awaiting {type(awaited).__qualname__}"
    return where


class _ReadyPool:
    """What a :class:`SimLoop` puts in place of ``BaseEventLoop._ready`` (a deque in stock
    asyncio), kept in the canonical order of module rule 2 so that a draw is one seeded index.

    Stock asyncio only appends to ``_ready`` (``call_soon``, future callbacks), clears it
    (``close``), tests its length and pops from it in ``_run_once``, which SimLoop replaces.
    Each entry is ``(serial, arrival, handle, task)``: serial 0 for a plain callback, the task's
    serial for a task step; ``arrival`` counts appends, so no two entries compare equal and
    the handles themselves are never compared.
    """

    __slots__ = ("_arrivals", "_entries", "_serial_of")

    def __init__(self, serial_of: Callable[[asyncio.Task[Any]], int]) -> None:
        self._entries: list[tuple[int, int, asyncio.Handle, asyncio.Task[Any] | None]] = []
        self._arrivals = itertools.count().__next__
        self._serial_of = serial_of

    def append(self, handle: asyncio.Handle) -> None:
        task = _task_of(_callback_of(handle))
        entry = (0 if task is None else self._serial_of(task), self._arrivals(), handle, task)
        entries = self._entries
        if not entries or entries[-1][:2] < entry[:2]:
            entries.append(entry)
        else:
            bisect.insort(entries, entry, key=_order_key)

    def draw(self, rng: random.Random) -> tuple[int, asyncio.Handle, asyncio.Task[Any] | None]:
        """Remove one entry, chosen by ``rng``: its serial, handle and task."""
        entries = self._entries
        serial, _, handle, task = entries.pop(
            rng.randrange(len(entries)) if len(entries) > 1 else 0
        )
        return serial, handle, task

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[asyncio.Handle]:
        return (entry[2] for entry in self._entries)


def _order_key(entry: tuple[int, int, asyncio.Handle, asyncio.Task[Any] | None]) -> tuple[int, int]:
    return entry[0], entry[1]


# -- the loop -------------------------------------------------------------------------------
class SimLoop(asyncio.BaseEventLoop):
    """An asyncio loop on virtual time that runs one seeded choice of ready callback per step.

    ``seed`` drives the scheduler, :attr:`rng` (the program's decisions) and nothing else;
    :func:`run` builds the environment from it too. ``max_time`` bounds the virtual seconds
    after ``start_time``, ``max_steps`` the callbacks run; going past either raises
    :class:`BudgetExceeded`. ``trace_size`` is how many of the last steps are kept.
    """

    def __init__(
        self,
        *,
        seed: int,
        start_time: float = 0.0,
        max_time: float = math.inf,
        max_steps: int | None = None,
        trace_size: int = 256,
    ) -> None:
        check_asyncio_assumptions()
        super().__init__()
        master = random.Random(seed)
        self.seed: Final = seed
        self._scheduler = random.Random(master.getrandbits(64))
        self.rng: Final = random.Random(master.getrandbits(64))
        """Seeded decisions for the program (fault injection): see :func:`current_rng`."""
        self.environment_seed: Final = master.getrandbits(64)
        """The seed :func:`run` gives the :class:`SimEnvironment`."""
        self.start_time: Final = start_time
        self._now = start_time
        self._deadline = start_time + max_time
        self._max_steps = max_steps
        self._steps = 0
        self._cleaning = False
        self._tail: collections.deque[TraceStep] = collections.deque(maxlen=trace_size)
        self._digest = hashlib.sha256()
        self._undigested: list[str] = []  # hashed in batches: the same digest, less overhead
        # Tasks by serial. A plain dict (hashing a task is cheap, a weak key is not); tasks
        # that are done are dropped now and then (_PRUNE_EVERY creations), never looked up.
        self._task_serials: dict[asyncio.Task[Any], int] = {}
        self._next_serial = itertools.count(1).__next__
        self._pool = _ReadyPool(self._serial)
        _install_ready(self, self._pool)
        self._violation: RealWorldAccess | None = None
        self._main: asyncio.Task[Any] | None = None  # set by run(): its main coroutine's task
        self._signal_handlers: dict[int, asyncio.Handle] = {}

    # -- what a run reports --------------------------------------------------------------
    def time(self) -> float:
        """Virtual seconds: ``start_time`` plus every jump to a due timer."""
        return self._now

    @property
    def steps(self) -> int:
        """Callbacks run so far (cancelled handles skipped are not steps)."""
        return self._steps

    @property
    def elapsed(self) -> float:
        """Virtual seconds since ``start_time``."""
        return self._now - self.start_time

    def digest(self) -> str:
        """sha256 (hex) of the whole trace so far: equal for equal runs."""
        self._digest_pending()
        return self._digest.hexdigest()

    def _digest_pending(self) -> None:
        self._digest.update("".join(self._undigested).encode())
        self._undigested.clear()

    def trace_tail(self) -> tuple[TraceStep, ...]:
        """The last steps run, oldest first."""
        return tuple(self._tail)

    def begin_cleanup(self) -> None:
        """Lift the time budget and allow a fixed number of further steps, for cancelling
        what is left after the main coroutine ended (or the run failed)."""
        self._cleaning = True
        self._deadline = math.inf
        self._max_steps = self._steps + _CLEANUP_STEPS

    # -- tasks: serial numbers and deterministic names -----------------------------------
    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: object = None,
        context: Context | None = None,
    ) -> asyncio.Task[T]:
        """Number the task (the scheduler's canonical order) and name it ``Task-<serial>``
        unless named: asyncio's default names count across the whole process."""
        serial = self._next_serial()
        name = f"Task-{serial}" if name is None else name
        task = super().create_task(coro, name=name, context=context)
        if serial % _PRUNE_EVERY == 0:
            self._task_serials = {
                known: number for known, number in self._task_serials.items() if not known.done()
            }
        self._task_serials[task] = serial
        return task

    def _serial(self, task: asyncio.Task[Any]) -> int:
        serial = self._task_serials.get(task)
        if serial is None:  # made with asyncio.Task(...) directly: numbered when first seen
            serial = self._task_serials[task] = self._next_serial()
        return serial

    # -- the scheduler: the one place callbacks run --------------------------------------
    def _run_once(self) -> None:
        """One step: make due timers ready (jumping the clock if nothing else is), then run
        one ready callback drawn by the seeded scheduler."""
        if self._main is None or not self._main.done():
            # A refusal the program swallowed (an `except Exception` guard) ends the run now.
            # Once main is done it has propagated, or run() raises it after the end.
            self.raise_swallowed_refusal()
        ready = self._pool
        _drop_cancelled_timers(self)
        self._make_due_timers_ready()
        if not ready:
            if self._stopping:  # type: ignore[attr-defined]
                return
            timers = _timers_of(self)
            if not timers:
                raise self._deadlock()
            when = timers[0].when()
            if when > self._deadline:
                raise BudgetExceeded(
                    f"virtual time budget exceeded: the next timer is at "
                    f"{when - self.start_time:.3f} s, past the limit of "
                    f"{self._deadline - self.start_time:.3f} s"
                )
            self._now = max(self._now, when)
            self._make_due_timers_ready()
        serial, handle, task = self._pool.draw(self._scheduler)
        if handle.cancelled():
            return
        if (
            self._max_steps is not None
            and self._steps >= self._max_steps
            # Once main is done its last callbacks end the run; the clean-up has its own budget.
            and (self._cleaning or self._main is None or not self._main.done())
        ):
            self._pool.append(handle)  # not run: left for whatever cleans up
            raise BudgetExceeded(
                f"step budget exceeded: {self._steps} steps run by virtual time "
                f"{self.elapsed:.3f} s (a busy loop that never sleeps, or raise max_steps)"
            )
        self._steps += 1
        label = _label(_callback_of(handle), task, serial)
        self._tail.append(TraceStep(self._steps, self._now, label))
        self._undigested.append(f"{self._now!r} {label}\n")
        if len(self._undigested) >= 1024:
            self._digest_pending()
        _run_handle(handle)

    def _make_due_timers_ready(self) -> None:
        timers = _timers_of(self)
        while timers and timers[0].when() <= self._now:
            timer = _take_timer(self)
            if not timer.cancelled():
                self._pool.append(timer)

    def _deadlock(self) -> Deadlock:
        pending = sorted(asyncio.all_tasks(self), key=self._serial)
        lines = [
            f"deadlock at virtual time {self.elapsed:.3f} s after {self._steps} steps: "
            f"nothing is ready, no timer is set, and {len(pending)} task(s) wait for ever"
        ]
        lines += [f"  {task.get_name()}: {_suspension_point(task)}" for task in pending]
        return Deadlock("\n".join(lines))

    # -- signals: accepted, delivered only by the simulation -----------------------------
    def add_signal_handler(self, sig: int, callback: Callable[[*Ts], object], *args: *Ts) -> None:
        """Record ``callback`` for ``sig``; no real handler is installed (module rule 5)."""
        self._check_closed()  # type: ignore[attr-defined]
        self._signal_handlers[sig] = asyncio.Handle(callback, args, self, None)

    def remove_signal_handler(self, sig: int) -> bool:
        return self._signal_handlers.pop(sig, None) is not None

    def deliver_signal(self, sig: int) -> bool:
        """Schedule the handler recorded for ``sig`` as a step; False when there is none."""
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return False
        self._pool.append(handle)
        return True

    # -- threads: only the loop's own --------------------------------------------------
    def call_soon_threadsafe(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.Handle:
        """``call_soon`` from the loop's own thread; refused from any other thread."""
        running_in: int | None = self._thread_id  # type: ignore[attr-defined]
        if running_in is not None and running_in != threading.get_ident():
            self._refuse(f"call_soon_threadsafe({_label(callback, None)}) from another thread")
        return self.call_soon(callback, *args, context=context)

    # -- the outside world: refused (module rule 4) ------------------------------------
    def raise_swallowed_refusal(self) -> None:
        """Raise the :class:`RealWorldAccess` the program caught and went on from, if any
        (:func:`run` calls it when main returned, the loop at its next step before)."""
        violation, self._violation = self._violation, None
        if violation is not None:
            raise violation

    def _refuse(self, what: str) -> NoReturn:
        error = RealWorldAccess(
            f"{what} attempted inside a simulated run, which has no real I/O, threads or "
            "processes: reach the outside world through a stand-in port instead"
        )
        if self._violation is None:
            self._violation = error
        raise error

    def run_in_executor(self, executor: Any, func: Callable[[*Ts], T], *args: *Ts) -> NoReturn:
        self._refuse(f"run_in_executor({_label(func, None)}) (a thread or process pool)")

    def set_default_executor(self, executor: Any) -> NoReturn:
        self._refuse("set_default_executor")

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> NoReturn:
        if isinstance(host, bytes):  # anyio passes the IDNA-encoded name
            host = host.decode("ascii", "replace")
        self._refuse(f"getaddrinfo({host!r}, {port!r}) (a DNS lookup)")

    def getnameinfo(self, sockaddr: Any, flags: int = 0) -> NoReturn:
        self._refuse(f"getnameinfo({sockaddr!r}) (a reverse DNS lookup)")

    def create_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse(f"create_connection{_call_args(args, kwargs)} (a network connection)")

    def create_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse(f"create_server{_call_args(args, kwargs)} (a listening socket)")

    def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("create_datagram_endpoint (a UDP socket)")

    def create_unix_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("create_unix_connection (a Unix socket)")

    def create_unix_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("create_unix_server (a Unix socket)")

    def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("connect_accepted_socket (a real socket)")

    def start_tls(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("start_tls (TLS over a real transport)")

    def sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sendfile (a real transport)")

    def connect_read_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("connect_read_pipe (a real pipe)")

    def connect_write_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("connect_write_pipe (a real pipe)")

    def subprocess_exec(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse(f"subprocess_exec{_call_args(args, {})} (a subprocess)")

    def subprocess_shell(self, protocol_factory: Any, cmd: Any, **kwargs: Any) -> NoReturn:
        self._refuse(f"subprocess_shell({cmd!r}) (a subprocess)")

    def add_reader(self, fd: Any, callback: Callable[[*Ts], object], *args: *Ts) -> NoReturn:
        self._refuse(f"add_reader({fd!r}) (waiting on a real file descriptor)")

    def remove_reader(self, fd: Any) -> NoReturn:
        self._refuse(f"remove_reader({fd!r}) (a real file descriptor)")

    def add_writer(self, fd: Any, callback: Callable[[*Ts], object], *args: *Ts) -> NoReturn:
        self._refuse(f"add_writer({fd!r}) (waiting on a real file descriptor)")

    def remove_writer(self, fd: Any) -> NoReturn:
        self._refuse(f"remove_writer({fd!r}) (a real file descriptor)")

    def sock_recv(self, sock: Any, nbytes: int) -> NoReturn:
        self._refuse("sock_recv (a real socket)")

    def sock_recv_into(self, sock: Any, buf: Any) -> NoReturn:
        self._refuse("sock_recv_into (a real socket)")

    def sock_recvfrom(self, sock: Any, bufsize: int) -> NoReturn:
        self._refuse("sock_recvfrom (a real socket)")

    def sock_recvfrom_into(self, sock: Any, buf: Any, nbytes: int = 0) -> NoReturn:
        self._refuse("sock_recvfrom_into (a real socket)")

    def sock_sendall(self, sock: Any, data: Any) -> NoReturn:
        self._refuse("sock_sendall (a real socket)")

    def sock_sendto(self, sock: Any, data: Any, address: Any) -> NoReturn:
        self._refuse("sock_sendto (a real socket)")

    def sock_connect(self, sock: Any, address: Any) -> NoReturn:
        self._refuse(f"sock_connect({address!r}) (a real socket)")

    def sock_accept(self, sock: Any) -> NoReturn:
        self._refuse("sock_accept (a real socket)")

    def sock_sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_sendfile (a real socket)")


def _call_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [repr(arg) for arg in args if isinstance(arg, str | int | bytes)]
    shown += [f"{key}={value!r}" for key, value in kwargs.items() if key in ("host", "port")]
    return f"({', '.join(shown)})"


# -- threads: the one global guard ----------------------------------------------------------
# anyio.to_thread starts its worker threads with threading.Thread.start and no loop call
# before it, so the only place to refuse them is Thread.start itself. While any simulated run
# is active, Thread.start is wrapped: a start from a thread whose running loop is a SimLoop is
# refused, every other start goes through unchanged. The wrapper is removed when the last run
# ends, so nothing outlives the simulation.
_guard_lock = threading.Lock()
_guard_users = 0
_unguarded_start: Final = threading.Thread.start


def _running_sim_loop() -> SimLoop | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if isinstance(loop, SimLoop) else None


def _guarded_start(thread: threading.Thread) -> None:
    loop = _running_sim_loop()
    if loop is not None:
        loop._refuse(f"starting thread {thread.name!r} (anyio.to_thread or threading)")
    _unguarded_start(thread)


@contextlib.contextmanager
def _threads_refused() -> Iterator[None]:
    global _guard_users
    with _guard_lock:
        _guard_users += 1
        threading.Thread.start = _guarded_start  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                threading.Thread.start = _unguarded_start  # type: ignore[method-assign]


# -- the environment ------------------------------------------------------------------------
class SimEnvironment:
    """:class:`events.environment.Environment` on a :class:`SimLoop`'s clock and one seed.

    ``now()`` is ``start`` (timezone-aware, kept in UTC) plus the loop's virtual seconds since
    its ``start_time``; ``monotonic()`` is the loop's time. ``new_uuid()`` gives version-4
    UUIDs and ``new_rng()`` new ``random.Random`` objects, both drawn from ``seed``: the same
    seed gives the same sequence, provided they are asked for in the same order (which the
    loop's seeded schedule makes so).
    """

    def __init__(self, loop: SimLoop, *, start: datetime, seed: int) -> None:
        self._loop = loop
        self._start = _utc(start)
        self._rng = random.Random(seed)

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._loop.elapsed)

    def monotonic(self) -> float:
        return self._loop.time()

    def new_uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def new_rng(self) -> random.Random:
        return random.Random(self._rng.getrandbits(64))


def _utc(start: datetime) -> datetime:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"a simulation starts at a timezone-aware time, not {start!r}")
    return start.astimezone(UTC)


# -- from inside a run ----------------------------------------------------------------------
def current_loop() -> SimLoop:
    """The :class:`SimLoop` running this code; RuntimeError outside a simulated run."""
    loop = _running_sim_loop()
    if loop is None:
        raise RuntimeError(
            "not inside a simulated run: current_loop() and current_rng() work only in code "
            "that ops.simulate.run() is running"
        )
    return loop


def current_rng() -> random.Random:
    """The run's seeded generator for the program's own decisions (fault injection)."""
    return current_loop().rng


# -- the entry point ------------------------------------------------------------------------
@dataclass(frozen=True)
class SimResult(Generic[T]):
    """What a run returned, and how it got there."""

    value: T
    seed: int
    elapsed: float
    """Virtual seconds from start to the end of the run (clean-up included)."""
    steps: int
    digest: str
    """sha256 of the whole trace: two runs with the same digest ran the same schedule."""
    trace_tail: tuple[TraceStep, ...]


def run(
    main: Callable[[], Awaitable[T]],
    *,
    seed: int,
    start: datetime = DEFAULT_START,
    max_time: float = 7 * 86_400.0,
    max_steps: int = 10_000_000,
    trace_size: int = 256,
) -> SimResult[T]:
    """Run ``main()`` on a new :class:`SimLoop` seeded with ``seed``, under a
    :class:`SimEnvironment` starting at ``start``, and close the loop whatever happens.

    ``max_time`` bounds the virtual seconds and ``max_steps`` the steps of ``main`` (what is
    left is then cancelled within a further fixed allowance). A failure propagates with a note
    that names the seed, the steps, the virtual time, the digest and the last steps.
    Call it from synchronous code: it runs its own loop.
    """
    start = _utc(start)  # before the loop exists: nothing to close if it is wrong
    loop = SimLoop(seed=seed, max_time=max_time, max_steps=max_steps, trace_size=trace_size)
    env = SimEnvironment(loop, start=start, seed=loop.environment_seed)

    async def root() -> T:
        loop._main = asyncio.current_task()
        if loop._main is not None:
            loop._main.set_name("main")
        with environment.use(env):
            return await main()

    runner = asyncio.Runner(loop_factory=lambda: loop)
    with _threads_refused():
        try:
            value = runner.run(root())
            loop.raise_swallowed_refusal()
        except BaseException as failure:
            loop.begin_cleanup()
            try:
                runner.close()  # cancels what is left; closes the loop whatever happens
            except Exception as cleanup_failure:
                failure.add_note(f"and while cleaning up after it: {cleanup_failure}")
            failure.add_note(_replay_note(loop))
            raise
        loop.begin_cleanup()
        try:
            runner.close()
        except BaseException as failure:
            failure.add_note(_replay_note(loop))
            raise
    return SimResult(
        value=value,
        seed=seed,
        elapsed=loop.elapsed,
        steps=loop.steps,
        digest=loop.digest(),
        trace_tail=loop.trace_tail(),
    )


def _replay_note(loop: SimLoop) -> str:
    tail = loop.trace_tail()[-_TAIL_IN_NOTE:]
    steps = "; ".join(f"#{step.step} t={step.time:.3f} {step.label}" for step in tail)
    return (
        f"simulated run: seed={loop.seed} steps={loop.steps} virtual time={loop.elapsed:.3f} s "
        f"digest={loop.digest()[:16]} (the same seed replays it); last steps: {steps or 'none'}"
    )
