"""Connection to the store: engine, transactions, migrations, error translation.

SQLite (a file, the default) and PostgreSQL (by URL) behave the same to the
layers above. Database errors never leave this module as SQLAlchemy
exceptions: a store that cannot be reached becomes ``Unavailable``, a
conflicting concurrent write ``Aborted``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from exchange.errors import Aborted, AlreadyExists, ConfigError, DeadlineExceeded, InvalidArgument, Unavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# An arbitrary constant naming the PostgreSQL advisory lock that keeps migrations one at a time.
MIGRATION_LOCK = 0x45584D49  # "EXMI"
# When the current call must be done (time.monotonic()), or None: set by `deadline()`.
_deadline: ContextVar[float | None] = ContextVar("store_deadline", default=None)
_IDLE_WAIT_MS = 5000
# Where a pooled SQLite connection keeps the busy_timeout last set on it.
_BUSY_TIMEOUT = "exchange_busy_timeout_ms"
# Beside a SQLite file, the file whose lock the processes writing it take in turn (see Database._one_writer).
WRITERS_SUFFIX = "-writers"
# SQLite's primary result code for "the database is locked by another connection".
_SQLITE_BUSY = 5
# How often a process waiting for that lock tries it again.
_TURN_POLL_SECONDS = 0.0005


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Bounds the store work done inside the block to ``seconds`` (a gRPC call's time remaining).

    Lock waits and statements then end when the caller stops waiting, with
    DeadlineExceeded, instead of running on for nobody.
    """
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _remaining_ms() -> int | None:
    """Milliseconds left for the current call, or None without a deadline; raises when none are left."""
    until = _deadline.get()
    if until is None:
        return None
    left = int((until - time.monotonic()) * 1000)
    if left <= 0:
        raise DeadlineExceeded("the call's deadline passed before the store could answer")
    return left


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own: _sqlite_begin does
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={_IDLE_WAIT_MS}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    """Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE).

    A deferred transaction that reads and then writes can fail at once with
    SQLITE_BUSY when another writer went first; taking the lock at BEGIN makes
    writers queue (up to busy_timeout) instead. Reads stay deferred and
    concurrent under WAL.
    """
    wait = _remaining_ms()
    timeout = min(wait or _IDLE_WAIT_MS, _IDLE_WAIT_MS)
    if connection.info.get(_BUSY_TIMEOUT) != timeout:  # set only when it changes: a statement less per transaction
        connection.exec_driver_sql(f"PRAGMA busy_timeout={timeout}")
        connection.info[_BUSY_TIMEOUT] = timeout
    connection.exec_driver_sql(f"BEGIN {connection.get_execution_options().get('sqlite_begin', 'DEFERRED')}")


def create_store_engine(url: str) -> Engine:
    """An engine for a sqlite: or postgresql URL, with the settings the hub relies on."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as e:
        raise ConfigError(f"database_url is not a valid SQLAlchemy URL ({type(e).__name__})") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, connect_args={"connect_timeout": 5})
    raise ConfigError(f"database_url: backend {parsed.get_backend_name()!r} is not supported (sqlite, postgresql)")


class Database:
    """The store's engine and unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_store_engine(url)
        self.write_sessions = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )
        # A read is one snapshot on every backend: SQLite's read transaction is one already; PostgreSQL's default
        # (READ COMMITTED) gives each statement its own, so two reads could straddle another's commit. REPEATABLE
        # READ READ ONLY costs no round trip (psycopg puts it in the BEGIN it sends) and, only reading, never
        # fails to serialize.
        reads = self.engine
        if self.backend == "postgresql":
            reads = reads.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        self._reads = sessionmaker(reads, expire_on_commit=False)
        # SQLite has one writer at a time. Threads of this process take turns on this lock, woken as soon as
        # it is free; left to SQLite's busy handler they would sleep 1, 2, 5, 10... ms between tries, which is
        # what a call waiting for its audit record behind the integrator's transaction saw as its tail.
        # Processes take turns the same way on a lock file beside the database (flock), tried every half
        # millisecond: the hub's audit integrator runs in a process of its own, and its rounds alternate with the
        # group commit. Writers that do not take it (migrations, other tools) still queue through the busy handler.
        self._writer = threading.RLock() if self.backend == "sqlite" else None
        self._turns = 0  # this process's nested write turns (the RLock's owner only)
        self._writers_file: int | None = None
        # The connection of ``write_now`` (an event loop's writes), made on first use.
        self._now_connection: Any = None
        database = make_url(url).database if self.backend == "sqlite" else None
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                self._writers_file = os.open(database + WRITERS_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:  # a directory this process cannot write: its writes queue in the busy handler
                log.info("no lock file beside %s (%s): writers take turns in SQLite's busy handler", database, e)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def write(self) -> AbstractContextManager[Session]:
        """A transaction that writes: committed on success, rolled back on any error, errors translated."""
        if self._writer is None:
            return self._transaction(self.write_sessions)
        return self._turn()

    @contextmanager
    def _turn(self) -> Iterator[Session]:
        """A write transaction once this process's other writers are done (SQLite)."""
        with self._one_writer(), self._transaction(self.write_sessions) as session:
            yield session

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """This process's turn to write on SQLite, within the call's deadline; nothing to wait for elsewhere."""
        if self._writer is None:
            yield
            return
        wait = _remaining_ms()
        until = time.monotonic() + (_IDLE_WAIT_MS if wait is None else wait) / 1000
        if not self._writer.acquire(timeout=max(0.0, until - time.monotonic())):
            _busy()
        try:
            if self._turns == 0 and self._writers_file is not None:
                self._take_file_turn(self._writers_file, until)
            self._turns += 1
            try:
                yield
            finally:
                self._turns -= 1
                if self._turns == 0 and self._writers_file is not None:
                    fcntl.flock(self._writers_file, fcntl.LOCK_UN)
        finally:
            self._writer.release()

    @staticmethod
    def _take_file_turn(file: int, until: float) -> None:
        """Takes the lock other processes writing this SQLite file take, waiting until ``until`` at most."""
        while not _flock_now(file):
            left = until - time.monotonic()
            if left <= 0:
                _busy()
            time.sleep(min(_TURN_POLL_SECONDS, left))

    @contextmanager
    def driver_write(self) -> Iterator[Any]:
        """A write transaction on the driver's own connection: a DBAPI cursor, committed on success.

        For the audit log's group commit and integrator, where an ORM session's begin and commit cost about five
        times a small batch's insert. Same turn-taking as ``write``; any driver error is Unavailable.
        """
        with self._one_writer():
            try:
                connection = self.engine.raw_connection()
            except (DBAPIError, self.engine.dialect.loaded_dbapi.Error) as e:  # the pool hands the driver's own
                log.warning("store unavailable: %s", e)
                raise Unavailable("the store cannot be reached or is busy; retry later") from None
            try:
                yield from self._driver_transaction(connection)
            finally:
                connection.close()

    def write_now(self, sql: str, params: Sequence[Any]) -> bool:
        """One statement, committed on its own, for an event loop, which must never wait: True once committed;
        False, with nothing done, unless this process's write turn, the lock file and SQLite's own write lock are
        all free at once (on PostgreSQL always False: its writes are network round trips).

        The statement runs in SQLite's autocommit (no BEGIN or COMMIT of its own to pay for: a statement is atomic)
        on a connection kept for it, whose commits never checkpoint the WAL (a checkpoint syncs files to disk; the
        other connections' commits do it) and which never waits for SQLite's lock. Flat, without a context
        manager: it runs for every turn of an event loop that records an exchange. A driver error is Unavailable,
        with nothing written.
        """
        writer = self._writer
        if writer is None or not writer.acquire(blocking=False):
            return False
        try:
            if self._turns > 0 or not self._file_turn_now():
                return False
            try:
                return self._execute_now(sql, params)
            finally:
                if self._writers_file is not None:
                    fcntl.flock(self._writers_file, fcntl.LOCK_UN)
        finally:
            writer.release()

    def _file_turn_now(self) -> bool:
        """Takes the lock file if no other process holds it (True), without waiting; True without a lock file."""
        return self._writers_file is None or _flock_now(self._writers_file)

    def _execute_now(self, sql: str, params: Sequence[Any]) -> bool:
        """``sql`` run and committed on ``write_now``'s connection; False if SQLite's write lock is taken (by a
        writer that takes no turns here: a migration, another tool), or if the connection was found inside a
        transaction, where the statement would not commit on its own (it is replaced; the caller tries again)."""
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            connection = (self._now_connection or self._open_now_connection()).dbapi_connection
        except (DBAPIError, dbapi.Error) as e:
            log.warning("store unavailable: %s", e)
            raise Unavailable("the store cannot be reached or is busy; retry later") from None
        if connection.in_transaction:
            self._drop_now_connection()
            return False
        try:
            connection.execute(sql, params)
        except dbapi.Error as e:
            busy = isinstance(e, dbapi.OperationalError) and _busy_code(e)
            if connection.in_transaction or not busy:  # anything but a busy lock: a new connection next time
                self._drop_now_connection()
            if busy:
                return False
            log.warning("store unavailable: %s", e)
            raise Unavailable("the store cannot be reached or is busy; retry later") from None
        if connection.in_transaction:  # cannot be, in autocommit: nothing counts as committed then
            self._drop_now_connection()
            raise Unavailable("the store did not commit a write on its own; retry later")
        return True

    def _drop_now_connection(self) -> None:
        connection, self._now_connection = self._now_connection, None
        if connection is not None:
            with suppress(Exception):  # already broken: nothing more to do with it
                connection.close()

    def _open_now_connection(self) -> Any:
        connection = self.engine.raw_connection()
        connection.detach()  # kept by this Database, never handed to another user by the pool
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        finally:
            cursor.close()
        self._now_connection = connection
        return connection

    @contextmanager
    def driver_read(self) -> Iterator[Any]:
        """A read on the driver's own connection, outside any write turn: a DBAPI cursor, its transaction (if the
        driver began one) ended after. For the audit integrator's reading ahead of its write transaction."""
        try:
            connection = self.engine.raw_connection()
        except (DBAPIError, self.engine.dialect.loaded_dbapi.Error) as e:
            log.warning("store unavailable: %s", e)
            raise Unavailable("the store cannot be reached or is busy; retry later") from None
        cursor = connection.cursor()
        try:
            yield cursor
        except self.engine.dialect.loaded_dbapi.Error as e:
            log.warning("store unavailable: %s", e)
            raise Unavailable("the store cannot be reached or is busy; retry later") from None
        finally:
            cursor.close()
            _roll_back(connection)
            connection.close()

    def _driver_transaction(self, connection: Any) -> Iterator[Any]:
        cursor = connection.cursor()
        try:
            yield from self._committed(connection, cursor, self._begin_driver if self.backend == "sqlite" else None)
        finally:
            cursor.close()

    @staticmethod
    def _begin_driver(connection: Any, cursor: Any) -> None:
        """Begins a driver write transaction on SQLite: the write lock taken up front, waiting for it up to 5 s."""
        if connection.info.get(_BUSY_TIMEOUT) != _IDLE_WAIT_MS:
            cursor.execute(f"PRAGMA busy_timeout={_IDLE_WAIT_MS}")
            connection.info[_BUSY_TIMEOUT] = _IDLE_WAIT_MS
        cursor.execute("BEGIN IMMEDIATE")

    def _committed(
        self, connection: Any, cursor: Any, begin: Callable[[Any, Any], None] | None = None
    ) -> Iterator[Any]:
        """Begins (``begin``, if given), yields ``cursor`` and commits; a driver error rolls back and is Unavailable."""
        try:
            if begin is not None:
                begin(connection, cursor)
            yield cursor
            connection.commit()
        except self.engine.dialect.loaded_dbapi.Error as e:
            log.warning("store unavailable: %s", e)
            _roll_back(connection)
            raise Unavailable("the store cannot be reached or is busy; retry later") from None
        except BaseException:
            _roll_back(connection)
            raise

    def check_writable(self) -> None:
        """Opens and ends a write transaction (on SQLite, takes the write lock); raises Unavailable if it cannot."""
        with self.write() as session:
            session.execute(text("SELECT 1"))

    def read(self) -> AbstractContextManager[Session]:
        """A transaction that only reads, from one snapshot, concurrent with others on every backend."""
        return self._transaction(self._reads)

    @contextmanager
    def _transaction(self, sessions: sessionmaker[Session]) -> Iterator[Session]:
        try:
            with sessions.begin() as session:
                wait = _remaining_ms()
                if wait is not None and self.backend == "postgresql":
                    session.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(wait)})
                yield session
        except IntegrityError as e:
            log.info("store conflict: %s", e.orig)
            if _is_unique_violation(e):
                raise AlreadyExists("record", _constraint(e), "created by another request at the same time") from None
            raise Aborted("the change conflicts with another made at the same time; read again and retry") from None
        except OperationalError as e:
            if _timed_out(e) and _deadline_passed():
                raise DeadlineExceeded("the call's deadline passed while the store was busy") from None
            log.warning("store unavailable: %s", e.orig)
            raise Unavailable("the store cannot be reached or is busy; retry later") from None
        except DataError as e:
            log.info("store refused a value: %s", e.orig)
            raise InvalidArgument(
                "a value in the request cannot be stored or searched (a NUL character, or out of range)"
            ) from None
        except DBAPIError as e:
            log.error("store error: %s", e.orig)
            raise Unavailable("the store failed to answer; retry later") from None

    def migrate(self) -> None:
        """Brings the schema to the newest migration; on PostgreSQL one process at a time.

        Two `exchange migrate` started together (two pods of a rollout, say) would otherwise both
        find the schema old and race to change it; with the lock the second waits, then finds it current.
        """
        try:
            with self.engine.begin() as connection:
                if self.backend == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                config = _alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as e:
            raise Unavailable(f"cannot migrate the store: {e.orig}") from None

    def is_current(self) -> bool:
        """True when the schema is at the newest migration."""
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision() == head

    def dispose(self) -> None:
        self._drop_now_connection()
        self.engine.dispose()
        if self._writers_file is not None:
            os.close(self._writers_file)
            self._writers_file = None


def _busy_code(error: Exception) -> bool:
    """Whether a driver error is SQLite's "busy" (its lock held by another connection), in any of its forms."""
    return getattr(error, "sqlite_errorcode", _SQLITE_BUSY) & 0xFF == _SQLITE_BUSY


def _flock_now(file: int) -> bool:
    """Takes ``file``'s exclusive lock if no other open file holds it (True), without waiting."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _busy() -> NoReturn:
    """No turn to write came in time: the call's deadline passed, or the store is too busy."""
    if _deadline_passed():
        raise DeadlineExceeded("the call's deadline passed while the store was busy")
    raise Unavailable("the store is busy with other writes; retry later")


def _roll_back(connection: Any) -> None:
    """Rolls back a driver transaction that failed; a connection gone meanwhile has nothing left to undo."""
    try:
        connection.rollback()
    except Exception as e:  # the pool discards a broken connection on return
        log.info("rollback after a failed write did not complete: %s", e)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _timed_out(error: OperationalError) -> bool:
    """A statement cancelled by its timeout (PostgreSQL) or a lock wait that ran out (SQLite)."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate == "57014" or "database is locked" in str(error.orig)


def _deadline_passed() -> bool:
    """True when the current call has a deadline and (within a few milliseconds) it has run out."""
    until = _deadline.get()
    return until is not None and until - time.monotonic() < 0.05


def _is_unique_violation(error: IntegrityError) -> bool:
    return getattr(error.orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(error.orig)


def _constraint(error: IntegrityError) -> str:
    """The violated constraint or columns, for the message (no values)."""
    diag = getattr(error.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:
        return str(name)
    text_ = str(error.orig)
    return text_.split("UNIQUE constraint failed:", 1)[-1].strip() if "UNIQUE" in text_ else "unique key"
