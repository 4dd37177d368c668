"""Pruning statements: the hub's signed word that the records of a prefix of its log were dropped, and why.

Retention drops the records of old entries (their leaf hashes stay). A verifier accepts an entry
without its record only under a statement, a C2SP signed note by the log's key whose text is::

    <origin>
    prune
    up-to <N>
    made <time>
    retention-days <D>
    cutoff <time>

Entries [0, N) were logged before ``cutoff`` and their records were dropped; the statement was made
at ``made`` under a retention of ``D`` days, and ``cutoff`` is at least ``D`` days before ``made``.
Times are RFC 3339 UTC with microseconds, as the log's ``logged`` times. ``Coverage`` holds the
statements of one log and says, entry by entry, whether a missing record is covered and whether the
first record kept after a pruned range was logged at or after its cutoff.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from audit.note import NoteError, Signer, Verifier, open_note

KIND = "prune"
# The legal minimum retention of network logs in days; no statement may claim less.
MINIMUM_RETENTION_DAYS = 180
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class PruningError(ValueError):
    """A pruning statement that is malformed, not signed by the log, or not consistent with the log."""


def format_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(_TIME)


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 UTC time as the log writes it (``...Z``); ValueError otherwise."""
    if not text.endswith("Z"):
        raise ValueError(f"{text!r} is not a UTC time")
    return dt.datetime.strptime(text, _TIME).replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class PruningStatement:
    origin: str
    up_to: int
    made: dt.datetime
    retention_days: int
    cutoff: dt.datetime

    def text(self) -> str:
        lines = [
            self.origin,
            KIND,
            f"up-to {self.up_to}",
            f"made {format_time(self.made)}",
            f"retention-days {self.retention_days}",
            f"cutoff {format_time(self.cutoff)}",
        ]
        return "\n".join(lines) + "\n"

    def sign(self, signer: Signer) -> str:
        return signer.sign(self.text())

    @classmethod
    def parse(cls, text: str) -> PruningStatement:
        lines = text.split("\n")
        if len(lines) != 7 or lines[-1] != "" or lines[1] != KIND:
            raise PruningError("a pruning statement is the origin, 'prune', up-to, made, retention-days, cutoff")
        fields = {}
        for line, name in zip(lines[2:6], ("up-to", "made", "retention-days", "cutoff"), strict=True):
            key, _, value = line.partition(" ")
            if key != name:
                raise PruningError(f"a pruning statement's line {line[:40]!r} should be {name}")
            fields[name] = value
        try:
            up_to, days = _number(fields["up-to"]), _number(fields["retention-days"])
            made, cutoff = parse_time(fields["made"]), parse_time(fields["cutoff"])
        except ValueError as e:
            raise PruningError(f"a pruning statement is malformed: {e}") from None
        return cls(lines[0], up_to, made, days, cutoff)

    def check(self) -> None:
        """The statement agrees with itself: a lawful retention, the cutoff that far before it was made."""
        if self.retention_days < MINIMUM_RETENTION_DAYS:
            raise PruningError(
                f"it claims a retention of {self.retention_days} days, below the minimum of {MINIMUM_RETENTION_DAYS}"
            )
        if self.cutoff > self.made - dt.timedelta(days=self.retention_days):
            raise PruningError(
                f"its cutoff {format_time(self.cutoff)} is less than {self.retention_days} days before "
                f"it was made ({format_time(self.made)})"
            )

    def describe(self) -> str:
        return f"pruning statement up to entry {self.up_to}"


def _number(text: str) -> int:
    if not text.isdigit() or (text != "0" and text.startswith("0")):
        raise ValueError(f"{text!r} is not a decimal number")
    return int(text)


def open_statement(note: str, verifier: Verifier) -> PruningStatement:
    """The statement in ``note`` if the log's key signed it, it is of this log and agrees with itself."""
    try:
        statement = PruningStatement.parse(open_note(note, verifier))
    except NoteError as e:
        raise PruningError(f"a pruning statement: {e}") from None
    where = statement.describe()
    if statement.origin != verifier.name:
        raise PruningError(f"{where} names another log: {statement.origin!r}")
    try:
        statement.check()
    except PruningError as e:
        raise PruningError(f"{where}: {e}") from None
    return statement


class Coverage:
    """The pruning statements of one log: which missing records they cover, checked entry by entry."""

    def __init__(self) -> None:
        self.statements: list[PruningStatement] = []

    @property
    def up_to(self) -> int:
        """Entries before this one may be pruned (statements come each covering more than the last)."""
        return self.statements[-1].up_to if self.statements else 0

    def add(self, statement: PruningStatement) -> None:
        """Adds a statement; a later one (by the order they are added) never covers less or cuts off earlier."""
        last = self.statements[-1] if self.statements else None
        if last is not None and (
            statement.up_to <= last.up_to or statement.made < last.made or statement.cutoff < last.cutoff
        ):
            raise PruningError(
                f"{statement.describe()} does not extend the {last.describe()} "
                "(statements come in the order they were made, each covering more)"
            )
        self.statements.append(statement)

    def check_pruned(self, seq: int) -> None:
        """An entry without its record: a statement must cover it."""
        if seq >= self.up_to:
            covered = f"statements cover entries before {self.up_to}" if self.statements else "no statement"
            raise PruningError(
                f"entry {seq}: its record is missing and no signed pruning statement covers it ({covered})"
            )

    def check_kept(self, seq: int, logged: str) -> None:
        """An entry with its record: no statement says it was pruned, and if it is the first entry after the
        pruned range, it was logged at or after the newest statement's cutoff (only older records went)."""
        if not self.statements:
            return
        statement = self.statements[-1]
        if seq < statement.up_to:
            raise PruningError(f"entry {seq}: the {statement.describe()} says it was pruned, but its record is here")
        if seq == statement.up_to and not _at_or_after(logged, statement.cutoff):
            raise PruningError(
                f"entry {seq}: the first record kept after the {statement.describe()} was logged at {logged}, "
                f"before its cutoff {format_time(statement.cutoff)}: the statement does not describe what was pruned"
            )

    def check_within(self, size: int) -> None:
        """No statement covers entries beyond the log's end."""
        if self.up_to > size:
            raise PruningError(f"the {self.statements[-1].describe()} reaches beyond the log's {size} entries")


def _at_or_after(logged: str, cutoff: dt.datetime) -> bool:
    try:
        return parse_time(logged) >= cutoff
    except ValueError:
        return False
