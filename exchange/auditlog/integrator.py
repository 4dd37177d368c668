"""The audit log's integrator in a process of its own, started and kept running by the hub process.

A hub process is bound by Python's lock at one core; integrating staged records (reading them, building
Merkle leaves and nodes, moving them into the log) and signing checkpoints in a thread of that process took
the calls' core and stretched each round, and the group commit waited for the store's write lock behind the
stretched rounds. With ``audit_integrator = "process"`` the hub starts this process (multiprocessing's
"spawn": a fresh interpreter) after its own start-up check and flush. It opens the store, checks the log as
a hub does at start, then integrates every ``poll_seconds`` and signs every ``checkpoint_seconds`` with an
``AuditLog`` of its own (exchange.auditlog.log), one integrator at a time by the store's lock (SQLite's
single writer, PostgreSQL's advisory lock) as among hub processes.

The hub process keeps an ``AuditLog`` that does not integrate in the background (proofs, reads, ``flush``).
It learns from this process when a checkpoint was signed (the checkpoint-age metric) and whether the log
failed its check (appends halt: nothing more is released). A dead integrator is restarted after a growing
delay; meanwhile the hub keeps serving (its records are durable once staged) and its checkpoint ages, as the
alerts watch. The integrator stops with its hub: a final integration and signing, then it exits; it also
stops so when its hub's process is gone (the pipe closes) or it is sent SIGTERM; SIGINT (a terminal's
Ctrl-C, sent to the whole group) is left to the hub, which then stops it in order. A SIGTERM to the whole
group (systemd, ``timeout``) ends both: the integrator's last round is done and the stopping hub does not
restart it; one sent to the integrator alone is logged as a warning and it is started again.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from contextlib import suppress
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from exchange import logs
from exchange.auditlog.collection import Collector
from exchange.auditlog.log import AuditLog
from exchange.bootstrap import load_audit_signer
from exchange.config import Settings
from exchange.errors import AuditTampered, ExchangeError
from exchange.store import Store

log = logging.getLogger(__name__)

# Restart delays double from the first to the last; they start over once an integrator ran STABLE_SECONDS.
RESTART_FIRST_SECONDS = 0.5
RESTART_LAST_SECONDS = 30.0
STABLE_SECONDS = 60.0
# How often the integrator process tells its hub what changed (signed checkpoints, a broken log).
REPORT_SECONDS = 0.25
# How long a stopping integrator may take for its final integration and signing before it is killed.
STOP_SECONDS = 30.0
# How long an integrator that ended in order, unasked, waits to hear that its hub is stopping too (both got
# the signal; the hub's handler may run a moment later) before it counts as stopped from outside.
HUB_STOP_SECONDS = 2.0


def integrator_main(settings: Settings, reports: Connection, orders: Connection) -> None:
    """The integrator process: checks the log, integrates and signs until told to stop (or its hub is gone)."""
    logs.configure(settings.log_level, settings.log_format)
    stopping = threading.Event()

    def stop_on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub has it too, and stops this process in order
    signal.signal(signal.SIGTERM, stop_on_signal)
    store = Store(settings.effective_database_url)
    collector = Collector()
    audit = AuditLog(
        store.audit,
        load_audit_signer(settings),
        settings.audit_origin,
        checkpoint_seconds=settings.checkpoint_seconds,
        between_rounds=collector,
    )
    try:
        audit.start()
        collector.start()  # what start-up built is kept; from now on garbage is collected between rounds only
    except AuditTampered as e:  # logged; the hub halts appends, and this process waits to be stopped
        _send(reports, ("broken", e.message))
    except ExchangeError as e:
        _send(reports, ("error", e.message))
        store.close()
        sys.exit(2)
    _send(reports, ("ready", audit.signed_at))
    told: tuple[float | None, str | None] = (audit.signed_at, audit.broken)
    try:
        while not stopping.is_set():
            try:
                if orders.poll(REPORT_SECONDS):
                    break  # "stop", or the hub's end closed
            except (EOFError, OSError):
                break
            told = _tell(reports, audit, told)
        if audit.broken is None:
            audit.stop()
    except ExchangeError as e:
        log.error("the integrator's final integration failed (%s); the hub integrates what is left", e.message)
        store.close()
        sys.exit(1)
    _tell(reports, audit, told)
    _send(reports, ("stopped", audit.signed_at))
    store.close()


def _tell(
    reports: Connection, audit: AuditLog, told: tuple[float | None, str | None]
) -> tuple[float | None, str | None]:
    """Reports a new checkpoint or a newly broken log to the hub; returns what it has been told now."""
    if audit.signed_at != told[0] and audit.signed_at is not None:
        _send(reports, ("signed", audit.signed_at))
    if audit.broken is not None and told[1] is None:
        _send(reports, ("broken", audit.broken))
    return audit.signed_at, audit.broken


def _send(reports: Connection, message: tuple[str, Any]) -> None:
    with suppress(OSError):  # the hub is gone: nobody to tell
        reports.send(message)


class Integrator:
    """The hub's side: starts the integrator process, restarts it when it dies, stops it with the hub.

    What the process reports goes to the hub's ``AuditLog``: when it signed (``signed_at``, for the
    checkpoint-age metric and the health page) and a failed check (``mark_broken``: appends halt).
    """

    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.settings = settings
        self.audit = audit
        self.context = multiprocessing.get_context("spawn")
        self.process: Any = None  # a multiprocessing Process while one runs
        self.restarts = 0
        # Whether the running process has checked the log and reported ready (its signal handling is set up).
        self.ready = False
        self._reports: Connection | None = None
        self._orders: Connection | None = None
        self._started_at = 0.0
        self._quick_deaths = 0
        # Whether the last process stopped in order, its final integration and signing done.
        self.stopped_clean = False
        self._stopping = threading.Event()
        # Set as the hub begins to stop: an integrator that ends in order then ended with it (a signal to the
        # whole process group reaches both), and is not started again.
        self._hub_stopping = threading.Event()
        self._wake_read, self._wake_write = self.context.Pipe(duplex=False)
        self._watcher = threading.Thread(target=self._watch, name="audit-integrator-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else int(self.process.pid)

    def start(self) -> None:
        """Starts the integrator process and the thread that watches it."""
        self._spawn()
        self._watcher.start()

    def hub_stopping(self) -> None:
        """The hub has begun to stop: an integrator that ends from now on is not restarted."""
        self._hub_stopping.set()

    def stop(self, timeout: float = STOP_SECONDS) -> bool:
        """Stops the integrator after its final integration and signing; returns whether that was done.

        False (it was dead, failed or did not stop in time, then killed): the caller integrates what is left.
        """
        self._hub_stopping.set()
        self._stopping.set()
        with suppress(OSError):
            self._wake_write.send(None)
        if self._watcher.is_alive():
            self._watcher.join(timeout + 5)
        if self.process is not None:  # the watcher could not stop it: it is stuck
            self._kill()
        self._wake_read.close()
        self._wake_write.close()
        return self.stopped_clean

    def _spawn(self) -> None:
        reports, theirs = self.context.Pipe(duplex=False)
        ours_read, self._orders = self.context.Pipe(duplex=False)
        self.process = self.context.Process(
            target=integrator_main, args=(self.settings, theirs, ours_read), name="exchange-audit-integrator"
        )
        self.process.daemon = True  # also ended (SIGTERM: in order) if this process exits without stopping it
        self.process.start()
        theirs.close()
        ours_read.close()
        self._reports, self._started_at, self.stopped_clean, self.ready = reports, time.monotonic(), False, False
        log.info("audit integrator started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        """Reads the process's reports, restarts it when it dies, and stops it once the hub stops."""
        due: float | None = None  # when to restart a dead integrator
        while not self._stopping.is_set():
            if self.process is None:  # dead, to be restarted when ``due``; or ended with the hub (None)
                wait([self._wake_read], timeout=None if due is None else max(0.0, due - time.monotonic()))
                if not self._stopping.is_set() and due is not None and time.monotonic() >= due:
                    self.restarts += 1
                    try:
                        self._spawn()
                    except OSError as e:  # no process could be made now (memory, process limit): later
                        self.process = None
                        log.error(
                            "audit integrator could not be started again: %s; trying in %.0fs", e, RESTART_LAST_SECONDS
                        )
                        due = time.monotonic() + RESTART_LAST_SECONDS
                continue
            heard = [self._reports] if self._reports is not None else []  # None: closed by the exiting process
            ready = wait([*heard, self.process.sentinel, self._wake_read])
            if self._reports is not None and self._reports in ready:
                self._read_reports()
            if self.process.sentinel in ready and not self._stopping.is_set():
                due = self._died()
        if self.process is not None:
            self._stop_process()

    def _read_reports(self) -> None:
        """Takes in what the process reported; at its end of the pipe closing, stops listening to it."""
        if self._reports is None:
            return
        try:
            while self._reports.poll():
                kind, value = self._reports.recv()
                self.ready = self.ready or kind == "ready"
                if kind == "signed" or (kind in ("ready", "stopped") and value is not None):
                    self.audit.signed_at = max(self.audit.signed_at or 0.0, float(value))
                    self.stopped_clean = kind == "stopped"
                elif kind == "stopped":
                    self.stopped_clean = True
                elif kind == "broken":
                    self.audit.mark_broken(str(value))
                elif kind == "error":
                    log.error("the audit integrator could not start: %s", value)
        except (EOFError, OSError):
            self._reports.close()
            self._reports = None

    def _died(self) -> float | None:
        """The process ended unasked: logged, and its restart scheduled after a growing delay; returns when (None:
        it ended in order with its hub, as when a signal reaches the whole process group, and is not restarted)."""
        self._read_reports()
        self.process.join()
        code, pid = self.process.exitcode, self.process.pid
        self._close()
        in_order = code == 0 and self.stopped_clean  # its last round done, "stopped" reported
        # SIGTERM before its handler was set (still starting): stopped too, its last round not done.
        stopped = in_order or code == -signal.SIGTERM
        if stopped and self._hub_stopping.wait(HUB_STOP_SECONDS):
            done = "its last round done" if in_order else "before its last round: the hub integrates what is left"
            log.info("audit integrator (pid %d) ended with the hub, %s", pid, done)
            return None
        now = time.monotonic()
        if now - self._started_at >= STABLE_SECONDS:
            self._quick_deaths = 0
        delay = min(RESTART_LAST_SECONDS, RESTART_FIRST_SECONDS * 2.0**self._quick_deaths)
        self._quick_deaths += 1
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        if stopped:  # from outside (a SIGTERM to it alone), nothing lost: started again
            log.warning("audit integrator (pid %d) was stopped from outside the hub; restarting in %.1fs", pid, delay)
            return now + delay
        log.error(
            "audit integrator (pid %d) exited with %s; restarting in %.1fs (until then no checkpoint is signed)",
            pid,
            how,
            delay,
        )
        return now + delay

    def _stop_process(self) -> None:
        """Asks the running process to stop, waits for its final round, kills it past STOP_SECONDS."""
        assert self._orders is not None
        with suppress(OSError):
            self._orders.send("stop")
        self.process.join(STOP_SECONDS)
        self._read_reports()
        if self.process.is_alive():
            log.error("audit integrator (pid %d) did not stop in time; killing it", self.process.pid)
            self._kill()
            return
        if self.process.exitcode != 0:
            self.stopped_clean = False
        log.info("audit integrator (pid %d) ended its last round (status %s)", self.process.pid, self.process.exitcode)
        self._close()

    def _kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.stopped_clean = False
        self._close()

    def _close(self) -> None:
        for end in (self._reports, self._orders):
            if end is not None:
                end.close()
        self.process, self._reports, self._orders = None, None, None
