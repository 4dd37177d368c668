"""Group commit: records from concurrent callers staged together, one transaction per batch.

``append`` returns only once the caller's record is durably committed (or raises Unavailable:
"no audit, no data"). While one batch commits, the records that arrive queue up and form the next, so batches grow with
load by themselves and a lone caller waits only for its own commit; ``max_wait`` can hold a batch
open a little longer for more company, ``max_batch`` caps it.

On SQLite an event loop's turn of records is committed in the loop itself when nothing else is writing
(``AuditStore.stage_now``: this process's write turn, the lock file and SQLite's lock all free at once) and the
committer thread has nothing queued: handing a turn to the thread cost its callers the thread's wake-up and,
worse, the GIL taken back from the loop after each driver call (the loop spends its time in gRPC's and uvloop's
C code, which gives it up late), which was most of a call's wait for its record at 300 calls a second. The loop
never waits there: when the write turn is taken (mostly by an integrator's round, a few milliseconds), the loop
tries again every millisecond, the turns appended meanwhile joining it, for up to ``loop_patience`` seconds;
after that, or when the commit fails, the records go to the thread as before, which waits its turn and fails
the callers if it cannot commit either.

Under load a loop's turn gathers company (``gather``): when records have been arriving more often than one per
``gather`` seconds (a slow-moving mean of the gaps between them), a new turn is handed over ``gather`` seconds
after its first record instead of at once, and the records of the calls in flight join it. One commit then
serves several calls, and their answers leave together: at 64 calls in flight this cut the hub's CPU per call
by a sixth (docs/performance.md). A lone caller, or calls at a few hundred a second, still wait only for their
own commit. The wait is never a condition of the record's durability: a turn is committed as before, later.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from audit.records import AuditRecord
from exchange.errors import ExchangeError, Unavailable
from exchange.store.audit import AuditStore

log = logging.getLogger(__name__)


# A caller waiting for its record: a thread's future, or an asyncio future with its loop.
Waiter = Future[None] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
Staged = tuple[AuditRecord, Waiter]
_TIMED_OUT = Unavailable("the audit log did not confirm in time; nothing was released")
# How often a loop tries again to commit records that found the store's write turn taken (uvloop's timers
# count whole milliseconds).
_LOOP_RETRY_SECONDS = 0.001
# The weight of each new gap between records in their moving mean (``gather``): slow enough that a few close
# records among sparse ones do not make a turn wait; a burst turns it on after a few dozen records.
_GAP_WEIGHT = 1 / 32
# A gap of this many ``gather``s is a pause: the mean starts again from it, and comes down within a few dozen
# records of a new burst.
_GAP_CAP = 4


def _settle_async(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
    """Runs in the waiters' event loop: one wake-up for a whole batch."""
    for waiter in waiters:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


def _expire_all(waiters: list[asyncio.Future[None]]) -> None:
    """The records of one turn not confirmed in time: their callers fail (those confirmed are done already)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(_TIMED_OUT)


# How early a loop may run a timer (uvloop's are set in whole milliseconds): a deadline that close counts as
# passed, else the sweep would set its timer again and again until the clock reaches it.
_TIMER_SLACK = 0.001


def _settled(waiters: list[asyncio.Future[None]]) -> bool:
    return all(waiter.done() for waiter in waiters)


class _Expiry:
    """The turns of one event loop and one timeout still waiting for the log, with one timer for all of them.

    A timer per turn would leave tens of thousands in the loop's heap at a thousand calls a second, each firing
    long after its records were confirmed. Turns are kept oldest first, so their deadlines are in order: settled
    turns are dropped from the front as new ones come, and the one timer, set for the oldest deadline, fails the
    callers of every turn whose deadline has passed, then is set again for the next unsettled turn's.
    Used only in its loop.
    """

    def __init__(self, key: tuple[asyncio.AbstractEventLoop, float], gone: Callable[[_Expiry], None]) -> None:
        self.key = key
        self._loop, self._timeout = key
        self._gone = gone  # told when nothing waits any more (so a closed loop is not held)
        self._turns: deque[tuple[float, list[asyncio.Future[None]]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.timers = 0  # how many times the timer was set (for tests)

    def add(self, waiters: list[asyncio.Future[None]]) -> None:
        """Starts ``waiters``' timeout now."""
        turns = self._turns
        while turns and _settled(turns[0][1]):
            turns.popleft()
        deadline = self._loop.time() + self._timeout
        turns.append((deadline, waiters))
        if self._timer is None:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        self._timer = self._loop.call_at(deadline, self._sweep)
        self.timers += 1

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time() + _TIMER_SLACK
        turns = self._turns
        while turns:
            deadline, waiters = turns[0]
            if deadline <= now:
                _expire_all(waiters)
            elif not _settled(waiters):
                self._arm(deadline)
                return
            turns.popleft()
        self._gone(self)


class GroupCommitter:
    def __init__(
        self,
        store: AuditStore,
        *,
        max_batch: int = 1000,
        max_wait: float = 0.0,
        on_batch: Callable[[int, bool], None] | None = None,
        halted: Callable[[], str | None] = lambda: None,
        in_loop: bool = True,
        loop_patience: float = 0.005,
        gather: float = 0.0,
    ) -> None:
        """``in_loop``: whether an event loop's turn may be committed in the loop when the store allows it (see
        the module's docstring); False sends every turn to the committer thread. ``loop_patience``: how long a
        loop keeps trying when the write turn is taken before the thread takes its records. ``gather``: how long
        a loop's turn waits for company under load (0: never; see the module's docstring)."""
        self._store = store
        # Why records must not be taken now (the stored log failed its check), or None.
        self._halted = halted
        # Told of each batch: its size, and whether it failed (for metrics and health).
        self._on_batch = on_batch
        self.failing = False
        self._max_batch = max_batch
        self._max_wait = max_wait
        # Single records (``append``), a loop's turn of them (``append_async``), or None to stop.
        self._queue: queue.SimpleQueue[Staged | list[Staged] | None] = queue.SimpleQueue()
        # The records each event loop has appended in its current turn, by loop and timeout: handed over after it.
        self._turns: dict[tuple[asyncio.AbstractEventLoop, float], list[Staged]] = {}
        # The timeouts of turns handed over, by loop and timeout: one timer each (see _Expiry).
        self._expiries: dict[tuple[asyncio.AbstractEventLoop, float], _Expiry] = {}
        # Whether a loop's turn may be committed in the loop (see the module's docstring), and whether the
        # thread is at work on a batch now (it then goes on, and turns queue behind it, in order).
        self._in_loop = in_loop and store.stages_now
        self._committing = False
        self._loop_patience = loop_patience
        # Per loop and timeout, records that found the write turn taken, tried again in the loop: since when.
        self._retrying: dict[tuple[asyncio.AbstractEventLoop, float], tuple[float, list[Staged]]] = {}
        self._thread = threading.Thread(target=self._run, name="audit-commit", daemon=True)
        self._thread.start()
        self.batches = 0
        self.records = 0
        self.loop_batches = 0  # of ``batches``, those committed in an event loop
        self._gather = gather
        # The moving mean of the gaps between records appended by event loops, and when the last one came.
        self._gap = _GAP_CAP * gather
        self._appended_at = 0.0
        self.gathered = 0  # turns that waited for company

    def append(self, record: AuditRecord, timeout: float | None = 30.0) -> None:
        """Stages ``record`` durably; returns when committed, raises Unavailable if it could not be.

        After a timeout the record may still be committed later: the caller must treat its call as
        failed (nothing released), which errs on the side the audit log can vouch for.
        """
        self._refuse_if_halted()
        done: Future[None] = Future()
        self._queue.put((record, done))
        try:
            done.result(timeout)
        except TimeoutError:
            raise _TIMED_OUT from None

    async def append_async(self, record: AuditRecord, timeout: float = 30.0) -> None:
        """``append`` for asyncio handlers: awaits the commit without holding a thread.

        The records an event loop appends in one of its turns go to the committer together, with one timer
        for their timeout, and the committer wakes each loop once per batch: per record, the loop only adds
        it to a list (a queue hand-over and a timer each cost more than the rest of this).
        """
        self._refuse_if_halted()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        key = (loop, timeout)
        busy = self._busy()
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = []
            if busy:
                self.gathered += 1
                loop.call_later(self._gather, self._hand_over, key)
            else:
                loop.call_soon(self._hand_over, key)
        turn.append((record, (loop, done)))
        await done

    def _busy(self) -> bool:
        """Whether records have been arriving more often than one per ``gather`` (a new turn then waits that
        long for company); every record's gap counts in the mean, those that join a turn as well."""
        if not self._gather:
            return False
        now, longest = time.monotonic(), _GAP_CAP * self._gather
        gap, self._appended_at = now - self._appended_at, now
        if gap >= longest:  # a pause: the load, if any, has ended
            self._gap = longest
            return False
        self._gap += (gap - self._gap) * _GAP_WEIGHT
        return self._gap < self._gather

    def _hand_over(self, key: tuple[asyncio.AbstractEventLoop, float]) -> None:
        """Runs in the loop after the turn that appended: its records to the committer, and their timeout set."""
        turn = self._turns.pop(key, None)
        if not turn:
            return  # handed over by ``close``
        waiting = self._retrying.get(key)
        if waiting is not None:  # records before it wait to be tried again in the loop: this turn joins them
            if len(waiting[1]) + len(turn) <= self._max_batch:
                waiting[1].extend(turn)
                return
            del self._retrying[key]
            self._to_thread(key, waiting[1])
        elif self._may_commit_in_loop(turn):
            committed = self._commit_in_loop(turn)
            if committed is None:  # the write turn is taken: tried again in a moment
                self._retrying[key] = (time.monotonic(), turn)
                key[0].call_later(_LOOP_RETRY_SECONDS, self._retry, key)
            if committed is not False:
                return
        self._to_thread(key, turn)

    def _may_commit_in_loop(self, turn: list[Staged]) -> bool:
        """Whether ``turn`` may be committed in the loop: the store allows it, the thread has nothing to do (else
        records would overtake those queued), and the turn fits in a batch (a larger one is split by the thread)."""
        return self._in_loop and not self._committing and self._queue.empty() and len(turn) <= self._max_batch

    def _retry(self, key: tuple[asyncio.AbstractEventLoop, float]) -> None:
        """Tries again to commit in the loop records that found the write turn taken; past ``loop_patience``, or
        if the thread has work meanwhile, they go to the thread."""
        waiting = self._retrying.pop(key, None)
        if waiting is None:
            return  # gone to the thread, or handed over by ``close``
        since, turn = waiting
        if self._may_commit_in_loop(turn):
            committed = self._commit_in_loop(turn)
            if committed is None and time.monotonic() - since < self._loop_patience:
                self._retrying[key] = waiting
                key[0].call_later(_LOOP_RETRY_SECONDS, self._retry, key)
            if committed is True or key in self._retrying:
                return
        self._to_thread(key, turn)

    def _to_thread(self, key: tuple[asyncio.AbstractEventLoop, float], turn: list[Staged]) -> None:
        """Hands records to the committer thread, their timeout set."""
        self._queue.put(turn)
        expiry = self._expiries.get(key)
        if expiry is None:
            expiry = self._expiries[key] = _Expiry(key, self._expired)
        expiry.add([waiter[1] for _, waiter in turn if isinstance(waiter, tuple)])

    def _commit_in_loop(self, turn: list[Staged]) -> bool | None:
        """Commits ``turn`` in the loop if the store's write turn is free at once: True; None (nothing done) if it
        is taken; False (nothing done) if the commit failed."""
        try:
            if not self._store.stage_now([record for record, _ in turn]):
                return None
        except Exception as e:  # the thread tries again, waiting its turn, and fails the callers if it must
            log.debug("audit records not committed in the event loop (%s); the committer thread tries", e)
            return False
        self._counted(len(turn), None)
        self.loop_batches += 1
        for _, waiter in turn:
            if isinstance(waiter, tuple) and not waiter[1].done():
                waiter[1].set_result(None)
        return True

    def _expired(self, expiry: _Expiry) -> None:
        """An _Expiry with nothing left to wait for: forgotten (a later turn makes a new one)."""
        if self._expiries.get(expiry.key) is expiry:
            del self._expiries[expiry.key]

    def _refuse_if_halted(self) -> None:
        reason = self._halted()
        if reason is not None:
            raise Unavailable(f"the audit log failed its integrity check ({reason}); nothing was released")

    def clear_failure(self) -> None:
        """Marks the audit log writable again (the health check probed it) until a commit says otherwise."""
        self.failing = False

    def close(self) -> None:
        for key in list(self._retrying):  # records being tried again in a loop are committed before it stops
            waiting = self._retrying.pop(key, None)
            if waiting:
                self._queue.put(waiting[1])
        for key in list(self._turns):  # a turn not handed over yet is committed before the committer stops
            turn = self._turns.pop(key, None)
            if turn:
                self._queue.put(turn)
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        carried: list[Staged] = []  # what did not fit in the last batch (a loop's turn is handed over whole)
        closing = False
        while True:
            if not carried:
                if closing:
                    return
                self._committing = False
                first = self._queue.get()
                if first is None:
                    return
                self._committing = True
                carried = first if isinstance(first, list) else [first]
            batch, carried = carried[: self._max_batch], carried[self._max_batch :]
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self._max_batch and not closing:
                try:
                    left = deadline - time.monotonic()
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                room = self._max_batch - len(batch)
                items = item if isinstance(item, list) else [item]
                batch += items[:room]
                carried = items[room:]
            self._commit(batch)

    def _counted(self, size: int, error: Exception | None) -> None:
        """A batch committed (or not): counted, and told to the metrics and health."""
        if error is None:
            self.batches += 1
            self.records += size
        self.failing = error is not None
        if self._on_batch is not None:
            self._on_batch(size, error is not None)

    def _commit(self, batch: list[Staged]) -> None:
        error: Exception | None = None
        try:
            self._store.stage([record for record, _ in batch])
        except Exception as e:  # the committer must outlive any batch: every failure fails its callers
            log.error("audit records could not be committed: %s", e.message if isinstance(e, ExchangeError) else e)
            error = Unavailable("the audit log cannot be written; nothing was released")
        self._counted(len(batch), error)
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, waiter in batch:
            if isinstance(waiter, Future):
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
            else:
                by_loop.setdefault(waiter[0], []).append(waiter[1])
        for loop, waiters in by_loop.items():
            loop.call_soon_threadsafe(_settle_async, waiters, error)
