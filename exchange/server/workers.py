"""``exchange serve --workers N``: N hub processes on one port, kept running by a small supervisor.

Python runs one thread of a process at a time, so one hub process uses about one core. Each worker is
a whole hub (started with multiprocessing's "spawn": a fresh interpreter, nothing forked from this
one) listening on the same gRPC address with SO_REUSEPORT, so the kernel spreads new connections
over them. They share the PostgreSQL store as separate hub processes do: grants and roles follow
through LISTEN/NOTIFY, quotas are leased hub-wide, and one process at a time integrates and signs the
audit log under an advisory lock. A federating hub's workers all serve the federation listener on its port
too; one at a time runs the federation's sync rounds (exchange/server/federation.py). Worker i serves
metrics on metrics_listen's port + i (its own process's counters); only worker 0 serves the web console.

The supervisor serves nothing itself. It restarts a worker that dies (after a growing delay), stops
every worker gracefully on SIGTERM or SIGINT, and gives up, showing the worker's error, when a worker
fails to start several times in a row (a taken port, a bad setting, a store that is not current).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from exchange import logs
from exchange.config import Settings
from exchange.errors import ConfigError, ExchangeError
from exchange.server import loop
from exchange.server.app import serve

log = logging.getLogger(__name__)

# Exits in a row before serving after which the supervisor gives up (the error would only repeat).
START_FAILURES = 3
# Restart delays double from the first to the last; they start over once a worker served STABLE_SECONDS.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_LAST_SECONDS = 30.0
STABLE_SECONDS = 60.0
# Beyond the hubs' own shutdown grace, how long stopping workers get (closing records, audit flush).
STOP_MARGIN_SECONDS = 20.0
# How often the supervisor looks at its workers when nothing happens.
TICK_SECONDS = 0.5


def check(settings: Settings) -> None:
    """Refuses, saying what to change, the settings several workers cannot run with."""
    n = settings.workers
    if n <= 1:
        return
    if not settings.effective_database_url.startswith("postgresql"):
        raise ConfigError(
            f"workers = {n} needs a PostgreSQL store: on the embedded SQLite file one process writes at a time, "
            "so the workers' audit commits would queue on one lock. Set database_url "
            "(EXCHANGE_DATABASE_URL=postgresql+psycopg://user@host/db, then `exchange migrate`), or serve "
            "with --workers 1"
        )
    host, _, port = settings.listen.rpartition(":")
    if int(port) == 0:
        raise ConfigError(
            f"workers = {n} share one port, so listen needs a fixed one: got {settings.listen}; "
            f"set listen (--listen, EXCHANGE_LISTEN) to {host}:PORT with PORT not 0"
        )
    if settings.federation_listen and int(settings.federation_listen.rpartition(":")[2]) == 0:
        raise ConfigError(
            f"workers = {n} share the federation listener's port too, so it needs a fixed one: got "
            f"{settings.federation_listen}; set federation_listen (EXCHANGE_FEDERATION_LISTEN) to HOST:PORT, PORT not 0"
        )
    if settings.metrics_listen:
        metrics = int(settings.metrics_listen.rpartition(":")[2])
        if metrics and metrics + n - 1 > 65535:
            raise ConfigError(
                f"worker i serves metrics on metrics_listen's port + i: {metrics} + {n - 1} is past 65535; "
                "choose a lower metrics_listen port"
            )


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: metrics on the port + index (0 stays 0: any free port), the console on 0 only."""
    metrics = settings.metrics_listen
    if metrics:
        host, _, port = metrics.rpartition(":")
        metrics = f"{host}:{int(port) + index}" if int(port) else metrics
    return replace(settings, metrics_listen=metrics, console_listen=settings.console_listen if index == 0 else "")


def worker_main(settings: Settings, index: int, reports: Connection, parent: Connection) -> None:
    """One worker (a spawned process): serves a hub until SIGTERM; says "ready" or why it could not start."""
    logs.configure(settings.log_level, settings.log_format)
    threading.Thread(target=_stop_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    try:
        loop.run(settings, serve(settings, lambda port: reports.send(("ready", port))))
    except ExchangeError as e:
        reports.send(("error", e.message))
        sys.exit(2)
    except Exception as e:
        log.exception("worker %d failed", index)
        reports.send(("error", f"{type(e).__name__}: {e}"))
        sys.exit(1)


def _stop_with_parent(parent: Connection) -> None:
    """Stops this worker gracefully when the supervisor is gone (its end of the pipe closes)."""
    with suppress(EOFError, OSError):
        parent.recv()
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Worker:
    """One worker slot: the process in it now, and how its recent starts went."""

    index: int
    process: Any = None  # a multiprocessing Process while one runs
    reports: Connection | None = None
    parent: Connection | None = None  # kept open while this supervisor lives
    serving_since: float | None = None
    failures: int = 0  # exits in a row before serving
    quick_deaths: int = 0  # deaths in a row, for the restart delay
    due: float = 0.0  # when to start the next process
    error: str = ""

    @property
    def running(self) -> bool:
        return self.process is not None


class Supervisor:
    """Starts ``settings.workers`` workers and keeps them running until asked to stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.stopping = False

    def run(self) -> int:
        """Supervises until SIGTERM or SIGINT (0), or raises ConfigError when a worker cannot start."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        log.info("supervising %d workers on %s", len(self.workers), self.settings.listen)
        try:
            while not self.stopping:
                self._start_due()
                self._watch()
                failing = next((w for w in self.workers if w.failures >= START_FAILURES), None)
                if failing is not None:
                    raise ConfigError(
                        f"worker {failing.index} could not start ({failing.failures} tries): {failing.error}"
                    )
        finally:
            self._stop_all()
        return 0

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start_due(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if not w.running and now >= w.due and not self.stopping:
                self._start(w)

    def _start(self, w: Worker) -> None:
        reports, theirs = self.context.Pipe(duplex=False)
        watched, w.parent = self.context.Pipe(duplex=False)
        args = (worker_settings(self.settings, w.index), w.index, theirs, watched)
        w.process = self.context.Process(target=worker_main, args=args, name=f"exchange-worker-{w.index}")
        w.process.start()
        theirs.close()
        watched.close()
        w.reports, w.serving_since, w.error = reports, None, ""
        log.info("worker %d started (pid %d)", w.index, w.process.pid)

    def _watch(self) -> None:
        """Waits a tick for a report or an exit, and handles what came."""
        running = [w for w in self.workers if w.running]
        handles: list[Any] = [w.process.sentinel for w in running] + [w.reports for w in running]
        ready = set(wait(handles, timeout=TICK_SECONDS)) if handles else set()
        if not handles:
            time.sleep(TICK_SECONDS)
        for w in running:
            if w.reports in ready or w.process.sentinel in ready:
                self._read_reports(w)
            if w.process.sentinel in ready:
                self._exited(w)

    def _read_reports(self, w: Worker) -> None:
        assert w.reports is not None
        try:
            while w.reports.poll():
                kind, value = w.reports.recv()
                if kind == "ready":
                    w.serving_since, w.failures = time.monotonic(), 0
                    log.info("worker %d serving on port %d (pid %d)", w.index, value, w.process.pid)
                else:
                    w.error = str(value)
        except (EOFError, OSError):
            pass

    def _exited(self, w: Worker) -> None:
        """A worker's process ended: unless stopping, schedule its restart after a growing delay."""
        w.process.join()
        code, pid = w.process.exitcode, w.process.pid
        _close(w)
        if self.stopping:
            return
        now = time.monotonic()
        if w.serving_since is None:
            w.failures += 1
        elif now - w.serving_since >= STABLE_SECONDS:
            w.quick_deaths = 0
        delay = min(BACKOFF_LAST_SECONDS, BACKOFF_FIRST_SECONDS * 2**w.quick_deaths)
        w.quick_deaths += 1
        w.due = now + delay
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        if w.serving_since is None and not w.error:  # killed, or gone without a word: say how at least
            w.error = f"it exited with {how} before serving"
        why = f": {w.error}" if w.serving_since is None else ""
        log.error("worker %d (pid %d) exited with %s%s; restarting in %.1fs", w.index, pid, how, why, delay)

    def _stop_all(self) -> None:
        """SIGTERM to every worker, each then drains and finishes; those still running at the bound are killed."""
        running = [w for w in self.workers if w.running]
        for w in running:
            w.process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        for w in running:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker %d (pid %d) did not stop in time; killing it", w.index, w.process.pid)
                w.process.kill()
                w.process.join()
            log.info("worker %d (pid %d) stopped (status %s)", w.index, w.process.pid, w.process.exitcode)
            _close(w)


def _close(w: Worker) -> None:
    for end in (w.reports, w.parent):
        if end is not None:
            end.close()
    w.process, w.reports, w.parent = None, None, None


def supervise(settings: Settings) -> int:
    """Checks the settings for several workers, then runs them until SIGTERM or SIGINT."""
    check(settings)
    return Supervisor(settings).run()
