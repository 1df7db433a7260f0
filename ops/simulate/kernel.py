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
       clock stands still: a step takes no virtual time. The timer that ends an
       ``asyncio.sleep`` (so ``anyio.sleep``) is not a step: it only completes the sleep's
       future, so it runs as soon as it is due, and the sleeper's wake-up it schedules is
       drawn like any other ready callback (a sleep is one step, not two).
    2. **Order.** Each step runs *one* ready callback, chosen by the loop's seeded scheduler
       from the ready ones. Ready callbacks are first put in a canonical order (plain
       callbacks in the order they were scheduled, then task steps by task serial: the order
       the loop created the tasks, or first saw a step of one made with ``asyncio.Task``
       directly), so the choice does not depend on memory addresses: anyio and asyncio
       cancel tasks while iterating over sets hashed by ``id()``, and would otherwise leak
       ASLR into the schedule. Timers due at the same instant become ready in the order
       they were set and are then drawn like any other ready callback.
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
    Each step is ``(step, virtual time, label)``: a task's name and serial (``worker#3``), or
    a plain callback's qualified name (never a ``repr``, which holds addresses). Only the
    last ``trace_size`` steps are kept, and kept raw (the task's name or the callback's
    label, and the serial): a step's label is only formatted when the tail is asked for
    (:meth:`SimLoop.trace_tail`, a failure's note). The whole trace is hashed as it goes
    (sha256, :attr:`SimResult.digest`), cheaply: one line per step, the task's serial or the
    callback's label, and one line with the virtual time at the start and whenever the clock
    moves; so it is a function of the seed, and two runs with the same digest ran the same
    steps at the same instants.

Private asyncio details relied on (:func:`check_asyncio_assumptions`, run by every new loop)
    ``BaseEventLoop.run_forever`` calls ``self._run_once()`` once per iteration and stops when
    ``self._stopping`` is set after it (so SimLoop's ``_run_once`` runs steps until it is);
    stock code only appends ``Handle`` objects to ``self._ready`` (``call_soon``, future
    callbacks), clears it (``close``) and pops from it in ``_run_once``, so SimLoop's
    ``_run_once`` moves what arrives there into lists of its own kept in canonical order; a
    handle runs with ``handle._run()``, has a ``_cancelled`` flag and holds its callback in
    ``handle._callback``, which for a task's step or wake-up is a method whose ``__self__``
    is the task. Stock ``call_soon`` and ``call_at`` are copied but for where the handle goes
    (they use ``_check_closed()``, in debug mode ``_check_thread()``, ``_check_callback()``
    and ``_source_traceback``): timers go on a heap of SimLoop's own
    (``BaseEventLoop._scheduled`` stays empty), and ``TimerHandle.cancel()`` tells the loop
    through ``_timer_handle_cancelled(timer)``, which SimLoop replaces to count the cancelled
    timers still on its heap (those whose ``_scheduled`` flag it set). :class:`SimLoop`
    replaces ``_run_once`` (the one place stock asyncio picks and runs callbacks) and reads
    the rest. Checked against CPython 3.11.7, 3.12.1 and 3.13.0 (:data:`CHECKED_PYTHONS`),
    whose ``asyncio`` agree on all of it and whose runs of the same seed give the same digest.

Speed
    ``python -m ops.simulate.speed`` measures it. On the shared 2-core development machine
    (two runs, another process busy on the other core): 270,000 to 278,000 steps per second
    with ten tasks, 197,000 to 199,000 with a thousand ready at once, 179,000 to 181,000 when
    timers make the clock jump; stock asyncio runs the same programs 1.5 to 2 times faster
    (and the timers one really waits). What a step costs the kernel itself is kept small:
    ``_run_once`` runs steps in one call with what it needs in local variables, sorts the
    ready handles into place as they come (no key function, plain callbacks in a list of
    their own), draws with one ``getrandbits``, keeps the trace raw and hashes it in batches
    (see "The trace"), and timers compare as tuples. Before that (same machine, same
    hour): 145,000 to 148,000, 110,000 to 111,000 and 111,000 steps per second. A sleep's
    timer is no longer a step of its own (rule 1): a quarter of a simulated run's steps
    were those timers (about 40,000 of the 163,000 steps of 2.5 quiet hours).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import contextvars
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
from types import FrameType, FunctionType, MethodType
from typing import Any, Final, Generic, NamedTuple, NoReturn, TypeVar, TypeVarTuple

from events import environment
from events.errors import I3laniError

__all__ = [
    "run",
    "SimResult",
    "TraceStep",
    "SimLoop",
    "Frozen",
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
# The kernel relies on the private details below and no others, and check_asyncio_assumptions()
# proves each one on the running Python. The helpers serve the code that runs now and then;
# SimLoop._run_once, call_soon and call_at, which run once per step or handle, use the details
# directly, because a helper call per access would cost a good share of a step: the loop's
# ``_ready`` deque and ``_stopping`` flag; a handle's ``_callback``, ``_cancelled`` and
# ``_run()``; a timer's ``_scheduled`` flag and ``TimerHandle.cancel()`` calling
# ``loop._timer_handle_cancelled(timer)``; and the checks of stock ``call_soon`` and ``call_at``
# (``_check_closed()``, in debug mode ``_check_thread()``, ``_check_callback()`` and
# ``_source_traceback``).


def _ready_of(loop: asyncio.BaseEventLoop) -> collections.deque[asyncio.Handle]:
    ready: collections.deque[asyncio.Handle] = loop._ready  # type: ignore[attr-defined]
    return ready


def _callback_of(handle: asyncio.Handle) -> object:
    return handle._callback  # type: ignore[attr-defined]


def _run_handle(handle: asyncio.Handle) -> None:
    handle._run()


_SLEEP_ENDS: Final[object] = getattr(asyncio.futures, "_set_result_unless_cancelled", None)
"""The callback of the timer ``asyncio.sleep(delay)`` sets (``futures.
_set_result_unless_cancelled``): all it does is complete the sleep's future, which schedules
the sleeping task's wake-up. SimLoop runs it as soon as it is due instead of drawing it as a
step of its own: the wake-up it schedules is drawn like any other ready callback, so no order
of the program's own steps is lost, and a sleep costs one step instead of two."""

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
        if getattr(probe, "_stopping", None) is not False:
            fail("BaseEventLoop._stopping is not a flag")
        handle = probe.call_soon(_no_op)
        if list(_ready_of(probe)) != [handle] or _callback_of(handle) is not _no_op:
            fail("call_soon does not append its Handle to _ready")
        if getattr(handle, "_cancelled", None) is not False:
            fail("a Handle has no _cancelled flag")
        handle.cancel()
        if getattr(handle, "_cancelled", None) is not True:
            fail("Handle.cancel() does not set its _cancelled flag")
        # SimLoop.call_soon and call_at are the stock ones but for where the handle goes.
        stock_call_soon = _names_in(asyncio.BaseEventLoop.call_soon) | _names_in(
            getattr(asyncio.BaseEventLoop, "_call_soon", _no_op)
        )
        if not {"_check_closed", "_call_soon", "Handle", "_ready"} <= stock_call_soon:
            fail("BaseEventLoop.call_soon no longer appends a Handle as SimLoop.call_soon does")
        if not {"_check_closed", "TimerHandle", "heappush"} <= _names_in(
            asyncio.BaseEventLoop.call_at
        ):
            fail("BaseEventLoop.call_at no longer makes a TimerHandle as SimLoop.call_at does")
        timer = probe.call_at(5.0, _no_op)
        if not getattr(timer, "_scheduled", False):
            fail("call_at does not make a TimerHandle with a _scheduled flag")
        told: list[asyncio.TimerHandle] = []
        probe._timer_handle_cancelled = told.append  # type: ignore[attr-defined]
        timer.cancel()
        if told != [timer]:
            fail("TimerHandle.cancel() does not call its loop's _timer_handle_cancelled()")
        if _SLEEP_ENDS is None or not {"call_later", "_set_result_unless_cancelled"} <= _names_in(
            asyncio.sleep
        ):
            fail("asyncio.sleep no longer ends with futures._set_result_unless_cancelled")
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


def _names_in(function: Callable[..., object]) -> set[str]:
    return set(function.__code__.co_names)


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


_Recorded = tuple[int, float, str, int]
"""A step as the loop records it: number, virtual time, then a plain callback's label and 0,
or a task's name and serial. Rendered as a :class:`TraceStep` only when asked for."""


def _label(callback: object) -> str:
    """A plain callback's label: its qualified name (``_run_once`` has a fast path for
    functions and methods)."""
    while isinstance(callback, functools.partial):  # possibly nested
        if _is_context_run(callback.func) and callback.args:  # asyncio.to_thread's wrapping
            callback = callback.args[0]
        else:
            callback = callback.func
    qualname = getattr(callback, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(callback).__qualname__


def _task_label(name: str, serial: int) -> str:
    # anyio names tasks after their function: the serial tells them apart
    return name if name == f"Task-{serial}" else f"{name}#{serial}"


def _render(recorded: _Recorded) -> TraceStep:
    step, time, what, serial = recorded
    return TraceStep(step, time, _task_label(what, serial) if serial else what)


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


_DIGEST_BATCH: Final = 1024
"""Every how many steps the loop hashes what the trace gathered since the last time."""


@dataclass(frozen=True, eq=False)
class Frozen:
    """A process stopped by :meth:`SimLoop.freeze` (``name`` for messages)."""

    name: str
    matches: Callable[[Context], bool]


# -- the loop -------------------------------------------------------------------------------
class SimLoop(asyncio.BaseEventLoop):
    """An asyncio loop on virtual time that runs one seeded choice of ready callback per step.

    ``seed`` drives the scheduler, :attr:`rng` (the program's decisions) and nothing else;
    :func:`run` builds the environment from it too. ``max_time`` bounds the virtual seconds
    after ``start_time``, ``max_steps`` the callbacks run; going past either raises
    :class:`BudgetExceeded`. ``trace_size`` is how many of the last steps are kept.

    The ready callbacks (module rule 2) are kept in two lists whose concatenation is the
    canonical order, and a draw is one seeded index into it: ``_plain``, plain callbacks in the
    order they became ready, and ``_task_steps``, ``(serial, handle, task)`` for task steps
    and wake-ups, sorted by serial, in the order they became ready within one serial. Stock
    asyncio appends to ``_ready`` (``call_soon``, future callbacks); each step first moves
    what arrived there since the last one, then the timers now due, into those lists.
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
        self._draw_bits = self._scheduler.getrandbits
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
        self._tail: collections.deque[_Recorded] = collections.deque(maxlen=trace_size)
        self._digest = hashlib.sha256()
        # What the digest has yet to hash, in batches (see digest()): a task step's serial, a
        # plain callback's label, and "@<time>" whenever the virtual clock moves.
        self._undigested: list[int | str] = [f"@{start_time!r}"]
        # Tasks by serial. A plain dict (hashing a task is cheap, a weak key is not); tasks
        # that are done are dropped now and then (_PRUNE_EVERY creations), never looked up.
        self._task_serials: dict[asyncio.Task[Any], int] = {}
        self._task_contexts: dict[asyncio.Task[Any], Context] = {}  # pruned with the serials
        self._next_serial = itertools.count(1).__next__
        self._incoming = _ready_of(self)
        self._plain: list[asyncio.Handle] = []
        self._task_steps: list[tuple[int, asyncio.Handle, asyncio.Task[Any]]] = []
        # The timers: a heap of (when, order set, timer), never compared beyond the order.
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._next_timer = itertools.count().__next__
        self._cancelled_timers = 0  # how many of them are cancelled
        self._violation: RealWorldAccess | None = None
        self._main: asyncio.Task[Any] | None = None  # set by run(): its main coroutine's task
        self._signal_handlers: dict[int, asyncio.Handle] = {}
        # Frozen processes: what each one's predicate matches is held, not run (freeze()).
        self._frozen: dict[Frozen, list[asyncio.Handle]] = {}

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
        """sha256 (hex) of the whole trace so far: equal for equal runs.

        What is hashed is one line per step, the task's serial or the plain callback's label,
        and a line ``@<virtual time>`` at the start and whenever the clock moves: what ran at
        each step and when, without formatting a line per step (module section "The trace")."""
        self._digest_pending()
        return self._digest.hexdigest()

    def _digest_pending(self) -> None:
        if self._undigested:
            self._undigested.append("")  # every line ends with "\n": batches do not matter
            self._digest.update("\n".join(map(str, self._undigested)).encode())
            self._undigested.clear()

    def trace_tail(self) -> tuple[TraceStep, ...]:
        """The last steps run, oldest first."""
        return tuple(map(_render, self._tail))

    def begin_cleanup(self) -> None:
        """Lift the time budget and allow a fixed number of further steps, for cancelling
        what is left after the main coroutine ended (or the run failed)."""
        self._cleaning = True
        self._deadline = math.inf
        self._max_steps = self._steps + _CLEANUP_STEPS

    def close(self) -> None:
        super().close()  # clears _ready
        self._plain.clear()
        self._task_steps.clear()
        self._timers.clear()

    # -- callbacks and timers: stock, but for where they go ------------------------------
    def call_soon(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.Handle:
        """Stock ``call_soon`` (the same on every checked Python) in one call instead of two:
        a new Handle appended to ``_ready``."""
        self._check_closed()  # type: ignore[attr-defined]
        if self._debug:  # type: ignore[attr-defined]
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_soon")  # type: ignore[attr-defined]
        handle = asyncio.Handle(callback, args, self, context)
        if handle._source_traceback:  # type: ignore[attr-defined]
            del handle._source_traceback[-1]  # type: ignore[attr-defined]
        self._incoming.append(handle)
        return handle

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """Stock ``call_at`` (the same on every checked Python) but for its heap: the loop's
        own, of ``(when, order set, timer)``, so that timers due at the same instant leave it
        in the order they were set, and the heap compares tuples of numbers in C instead of
        calling ``TimerHandle.__lt__`` (about eight times per timer)."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self._debug:  # type: ignore[attr-defined]
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:  # type: ignore[attr-defined]
            del timer._source_traceback[-1]  # type: ignore[attr-defined]
        heapq.heappush(self._timers, (when, self._next_timer(), timer))
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        """Called by ``TimerHandle.cancel()``. Cancelled timers stay on the heap until they
        are due, as in stock asyncio, unless they are most of it: then all of them go."""
        if handle._scheduled:  # type: ignore[attr-defined]
            self._cancelled_timers += 1
            if self._cancelled_timers * 2 > len(self._timers) > 100:
                timers = self._timers
                kept = []
                for entry in timers:
                    if entry[2].cancelled():
                        entry[2]._scheduled = False  # type: ignore[attr-defined]
                    else:
                        kept.append(entry)
                heapq.heapify(kept)
                timers[:] = kept  # in place: _run_once may hold the list
                self._cancelled_timers = 0

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
        # A copy of the current context, as asyncio makes one, but kept: freeze() matches a
        # task by it (Python 3.11's tasks do not show theirs).
        context = contextvars.copy_context() if context is None else context
        task = super().create_task(coro, name=name, context=context)
        if serial % _PRUNE_EVERY == 0:  # in place: _run_once holds the dict
            for done in [known for known in self._task_serials if known.done()]:
                del self._task_serials[done]
                self._task_contexts.pop(done, None)
        self._task_serials[task] = serial
        self._task_contexts[task] = context
        return task

    def _serial(self, task: asyncio.Task[Any]) -> int:
        serial = self._task_serials.get(task)
        if serial is None:  # made with asyncio.Task(...) directly: numbered when first seen
            serial = self._task_serials[task] = self._next_serial()
        return serial

    # -- the scheduler: the one place callbacks run --------------------------------------
    def _run_once(self) -> None:
        """Run steps until the loop is told to stop. Each step makes the due timers ready
        (first jumping the clock to the next timer if nothing is ready), then runs one ready
        callback drawn by the seeded scheduler.

        ``run_forever`` calls this once per iteration and stops after it when ``_stopping`` is
        set: returning as soon as it is set, after the step that set it, changes nothing, and
        spares a call and the set-up below per step. This is the hottest code of a
        simulation: private details are read directly (see the section on them), what is used
        every step is held in local variables, and the trace is recorded raw (see
        :meth:`digest` and ``_render``)."""
        incoming = self._incoming
        timers = self._timers
        plain = self._plain
        task_steps = self._task_steps
        serials = self._task_serials
        record = self._tail.append
        undigested = self._undigested
        digest_item = undigested.append
        draw = self._draw_bits
        heappop = heapq.heappop
        task_type = asyncio.Task
        wake_sleeper = _SLEEP_ENDS
        now = self._now
        steps = self._steps
        while True:
            if self._violation is not None and (self._main is None or not self._main.done()):
                # A refusal the program swallowed (an `except Exception` guard) ends the run
                # now. Once main is done it has propagated, or run() raises it after the end.
                self.raise_swallowed_refusal()
            while timers and timers[0][0] <= now:  # due: in the order they leave the heap
                timer = heappop(timers)[2]
                timer._scheduled = False  # type: ignore[attr-defined]
                if timer._cancelled:
                    self._cancelled_timers -= 1
                elif timer._callback is wake_sleeper and not self._frozen:  # type: ignore[attr-defined]
                    timer._run()  # a sleep's end: its task's wake-up is what gets drawn
                else:
                    incoming.append(timer)
            if incoming:  # into the canonical order (the class docstring), as they came
                for handle in incoming:
                    owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
                    if isinstance(owner, task_type):
                        number = serials.get(owner)
                        if number is None:
                            number = self._serial(owner)
                        if not task_steps or task_steps[-1][0] <= number:
                            task_steps.append((number, handle, owner))
                        else:  # after those of its serial: (number + 1,) sorts before them
                            at = bisect.bisect_left(task_steps, (number + 1,))
                            task_steps.insert(at, (number, handle, owner))
                    else:
                        plain.append(handle)
                incoming.clear()
            count = len(plain) + len(task_steps)
            if not count:
                if self._stopping:  # type: ignore[attr-defined]
                    return
                while timers and timers[0][2]._cancelled:
                    heappop(timers)[2]._scheduled = False  # type: ignore[attr-defined]
                    self._cancelled_timers -= 1
                if not timers:
                    raise self._deadlock()
                when = timers[0][0]
                if when > self._deadline:
                    raise BudgetExceeded(
                        f"virtual time budget exceeded: the next timer is at "
                        f"{when - self.start_time:.3f} s, past the limit of "
                        f"{self._deadline - self.start_time:.3f} s"
                    )
                self._now = now = when  # later than now: it would be due otherwise
                digest_item(f"@{now!r}")
                continue  # to make the timers now due ready
            # The seeded draw: randrange(count), spelled out (what random.Random.randrange
            # does on every checked Python) to spare two Python calls per step.
            index = 0
            if count > 1:
                bits = count.bit_length()
                index = draw(bits)
                while index >= count:
                    index = draw(bits)
            task: asyncio.Task[Any] | None
            if index < len(plain):
                handle = plain.pop(index)
                task = None
            else:
                serial, handle, task = task_steps.pop(index - len(plain))
            if handle._cancelled:  # skipped: not a step
                if self._stopping:  # type: ignore[attr-defined]
                    return
                continue
            if self._frozen and self._hold(handle):
                continue  # drawn, but its process is stopped: not a step
            if (
                self._max_steps is not None
                and steps >= self._max_steps
                # Once main is done its last callbacks end the run; the clean-up has its own
                # budget.
                and (self._cleaning or self._main is None or not self._main.done())
            ):
                incoming.append(handle)  # not run: left for whatever cleans up
                raise BudgetExceeded(
                    f"step budget exceeded: {steps} steps run by virtual time "
                    f"{self.elapsed:.3f} s (a busy loop that never sleeps, or raise max_steps)"
                )
            self._steps = steps = steps + 1
            if task is None:
                callback = handle._callback  # type: ignore[attr-defined]
                kind = type(callback)
                if kind is FunctionType:
                    label: str = callback.__qualname__
                elif kind is MethodType and type(callback.__func__) is FunctionType:
                    label = callback.__func__.__qualname__
                else:
                    label = _label(callback)
                record((steps, now, label, 0))
                digest_item(label)
            else:
                record((steps, now, task.get_name(), serial))
                digest_item(serial)
            if not steps % _DIGEST_BATCH:
                self._digest_pending()
            handle._run()
            if self._stopping:  # type: ignore[attr-defined]
                return

    # -- frozen processes (SIGSTOP, a VM paused, a stop-the-world GC) ---------------------
    def freeze(self, matches: Callable[[Context], bool], name: str = "frozen") -> Frozen:
        """Stop running every callback whose context ``matches`` (a simulated process: its
        tasks and their timers carry its context variables) until :meth:`thaw`. Time goes
        on: the process's timers come due and wait with its ready steps; at the thaw they all
        rejoin the ready ones at once, in the seed's order, as a resumed process finds its
        deadlines passed."""
        frozen = Frozen(name, matches)
        self._frozen[frozen] = []
        return frozen

    def thaw(self, frozen: Frozen) -> int:
        """Resume ``frozen``: what it held becomes ready again; how many callbacks."""
        held = self._frozen.pop(frozen, None)
        if held is None:
            raise ValueError(f"{frozen.name} is not frozen")
        self._incoming.extend(held)
        return len(held)

    def _hold(self, handle: asyncio.Handle) -> bool:
        """Hold ``handle`` if it belongs to a frozen process: it runs in that process's
        context, or it is an anyio cancel scope's delivery of a cancellation to a task of
        that process (which reschedules itself, from whoever cancelled, until the task
        takes it: run while the task is held, it would spin at one instant for ever)."""
        contexts: list[Context] = [handle._context]  # type: ignore[attr-defined]
        host = getattr(getattr(handle._callback, "__self__", None), "_host_task", None)  # type: ignore[attr-defined]
        if isinstance(host, asyncio.Task) and host in self._task_contexts:
            contexts.append(self._task_contexts[host])
        for frozen, held in self._frozen.items():
            if any(frozen.matches(context) for context in contexts):
                held.append(handle)
                return True
        return False

    def _deadlock(self) -> Deadlock:
        pending = sorted(asyncio.all_tasks(self), key=self._serial)
        lines = [
            f"deadlock at virtual time {self.elapsed:.3f} s after {self._steps} steps: "
            f"nothing is ready, no timer is set, and {len(pending)} task(s) wait for ever"
        ]
        lines += [f"  {task.get_name()}: {_suspension_point(task)}" for task in pending]
        lines += [
            f"  {frozen.name}: frozen, holding {len(held)} callback(s) until thawed"
            for frozen, held in self._frozen.items()
        ]
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
        self._incoming.append(handle)
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
            self._refuse(f"call_soon_threadsafe({_label(callback)}) from another thread")
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
        self._refuse(f"run_in_executor({_label(func)}) (a thread or process pool)")

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
        self._last: tuple[float, datetime] = (0.0, self._start)  # now() at one elapsed time

    def now(self) -> datetime:
        elapsed = self._loop.elapsed
        if self._last[0] != elapsed:  # the clock moved: many reads come at one instant
            self._last = (elapsed, self._start + timedelta(seconds=elapsed))
        return self._last[1]

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
_NOT_IN_A_RUN: Final = (
    "not inside a simulated run: current_loop() and current_rng() work only in code "
    "that ops.simulate.run() is running"
)


def current_loop() -> SimLoop:
    """The :class:`SimLoop` running this code; RuntimeError outside a simulated run."""
    loop = _running_sim_loop()
    if loop is None:
        raise RuntimeError(_NOT_IN_A_RUN)
    return loop


def current_rng() -> random.Random:
    """The run's seeded generator for the program's own decisions (fault injection)."""
    try:  # current_loop(), spelled out: fault injection asks for it very often
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if isinstance(loop, SimLoop):
        return loop.rng
    raise RuntimeError(_NOT_IN_A_RUN)


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
