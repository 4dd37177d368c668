"""New files in a file store, as changes (for subscriptions): binding option ``changes = "new files"``.

Each regular file under the root whose relative path matches the binding's ``name_template`` is a
change: a document of the resource has appeared (or was replaced). Its row holds, of the fields
asked for, the template's placeholders (the filters that fetch the document, as text) and, when
the resource declares them, ``file_name`` (string: the path relative to the root), ``file_size``
(integer: bytes) and ``file_modified`` (timestamp). Files that do not match the template are not
documents of the resource and are passed over.

Order and cursor: by (modification time in nanoseconds, relative name), ties broken by the name;
the cursor is ``[mtime_ns,"name"]``. A file's time must be ``settle_seconds`` old (default
``SETTLE_SECONDS``), so a file still being written is read once complete. A file written again
comes again, with its new time (an upsert). Removed files are not told. A file put in place with a
modification time older than the newest one already told (copied or moved keeping its old time)
would be behind the subscribers' cursors: the department must write its files in place, or touch
them once moved in.

Safety, as for documents: the walk starts at the resolved root, opens every directory beneath it
with ``O_NOFOLLOW``, never follows a symlink (neither a file nor a directory one), and takes only
regular files with one name (no hard link to a file elsewhere).
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import os
import re
import stat
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass

from adapters.base import (
    Change,
    ChangeBatch,
    ChangeRequest,
    ProviderUnavailable,
    Row,
    SourceWentBack,
    checked_change_filters,
    checked_rows,
)

SETTLE_SECONDS = 2.0
MAX_DEPTH = 32
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY


@dataclass(frozen=True)
class NewFile:
    """A regular file under the root: its time (the modification time, ns), relative name, size."""

    when: int
    name: str
    size: int


def template_pattern(template: str) -> re.Pattern[str]:
    """A pattern that matches the relative names the template makes, capturing each placeholder's value."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)")
            seen.add(name)
    return re.compile("".join(parts))


class FileChanges:
    """Reads one file store's new files for one request; ``provider`` names the department in every error."""

    def __init__(self, provider: str, root: str, template: str, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.provider = provider
        self._root = root
        self._pattern = template_pattern(template)
        self._settle_ns = int(settle_seconds * 1e9)

    def read(self, request: ChangeRequest) -> ChangeBatch:
        checked_change_filters(request)
        settled = time.time_ns() - self._settle_ns
        try:
            found = [(f, m) for f in self._files() if f.when <= settled and (m := self._matched(f, request))]
        except OSError:
            raise ProviderUnavailable(self.provider) from None
        if request.after is None:
            newest = max(found, key=lambda p: (p[0].when, p[0].name), default=None)
            return ChangeBatch([], _cursor(newest[0]) if newest else "")
        after = self._after(request)
        later = [p for p in found if (p[0].when, p[0].name) > after]
        first = heapq.nsmallest(max(1, request.limit), later, key=lambda p: (p[0].when, p[0].name))
        rows = checked_rows(self.provider, request.resource, request.fields, [_row(f, m, request) for f, m in first])
        changes = [Change(_cursor(f), row) for (f, _), row in zip(first, rows, strict=True)]
        return ChangeBatch(changes, changes[-1].cursor if changes else request.after)

    def _matched(self, found: NewFile, request: ChangeRequest) -> dict[str, str] | None:
        """The placeholders' values of a file that is a document of the resource and matches the filters."""
        match = self._pattern.fullmatch(found.name)
        if match is None:
            return None
        values = match.groupdict()
        if any(v.startswith(".") for v in values.values()):
            return None  # no filter could name it (a document's filter values never start with a dot)
        wanted = {k: str(v) for k, v in request.filters.items()}
        return values if all(values.get(k) == v for k, v in wanted.items()) else None

    def _after(self, request: ChangeRequest) -> tuple[int, str]:
        if not request.after:
            return (-1, "")
        try:
            when, name = json.loads(request.after)
        except (ValueError, TypeError):
            when = name = None
        if not isinstance(when, int) or isinstance(when, bool) or not isinstance(name, str):
            raise SourceWentBack(
                self.provider, request.resource.code, "the position is not one this file store handed out"
            )
        return when, name

    def _files(self) -> Iterator[NewFile]:
        fd = os.open(self._root, _DIRECTORY_FLAGS)
        try:
            yield from _walk(fd, "", 0)
        finally:
            os.close(fd)


def _walk(directory: int, prefix: str, depth: int) -> Iterator[NewFile]:
    """The regular files with one name beneath an open directory; symlinks are neither followed nor listed."""
    for name in sorted(os.listdir(directory)):
        found = os.stat(name, dir_fd=directory, follow_symlinks=False)
        relative = f"{prefix}{name}"
        if stat.S_ISDIR(found.st_mode) and depth < MAX_DEPTH:
            child = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            try:
                yield from _walk(child, relative + "/", depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISREG(found.st_mode) and found.st_nlink == 1:
            yield NewFile(found.st_mtime_ns, relative, found.st_size)


def _row(found: NewFile, values: dict[str, str], request: ChangeRequest) -> Row:
    """The fields asked for that a file can give: its placeholders' values and its name, size and time."""
    known: dict[str, object] = {
        **values,
        "file_name": found.name,
        "file_size": found.size,
        "file_modified": dt.datetime.fromtimestamp(found.when / 1e9, dt.UTC),
    }
    return {f: known[f] for f in request.fields if f in known}


def _cursor(found: NewFile) -> str:
    return json.dumps([found.when, found.name], separators=(",", ":"), ensure_ascii=False)
