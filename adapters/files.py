"""The file-store adapter: serves documents (电子证照, contracts) from a directory of a department.

Binding options: ``root`` (an absolute directory inside one of the hub's document roots),
``name_template`` (a relative name whose ``{placeholder}`` parts are filled from the request's
filters, e.g. ``{uscc}/营业执照.pdf``), ``media_type`` (optional; else guessed from the name) and
``changes`` (optional: ``"new files"`` makes new documents changes, see ``adapters.file_changes``).

Filter values must be safe single path segments. The built path is resolved and must stay inside
the root; a name resolving outside it (through a symlink, say) is answered as not found, so a
caller learns nothing of what lies outside. The file is then opened one component at a time
beneath the root with ``O_NOFOLLOW``, so a symlink swapped in after the check is not followed
either, and only a regular file is served. Its bytes are read lazily in 64 KiB chunks.
"""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import os
import re
import stat
import string
import threading
import unicodedata
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path

from adapters import options as opt
from adapters.base import (
    BlockingDocument,
    ChangeBatch,
    ChangeRequest,
    FetchRequest,
    ProviderUnavailable,
    Row,
    Unsupported,
    checked_filters,
)
from adapters.factory import BackendContext
from adapters.file_changes import FileChanges
from exchange.backend import Backend, OnThreads
from exchange.errors import FieldViolation, InvalidArgument, NotFound
from exchange.models import NEW_FILES, Binding

CHUNK_BYTES = 64 * 1024
MAX_SEGMENT_BYTES = 255
SHOWN_CHARS = 40
DEFAULT_MEDIA_TYPE = "application/octet-stream"
OPTIONS = ("root", "name_template", "media_type", "changes")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


@dataclass(frozen=True)
class FileBinding:
    """Where a resource's documents lie: the resolved root, the name template and the media type."""

    root: str
    name_template: str
    media_type: str = ""
    # New files under the root are changes (``adapters.file_changes``): the resource can be subscribed to.
    changes: bool = False

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_placeholders(self.name_template))


class FileAdapter:
    """A backend serving one document per request from a directory; it serves no records."""

    def __init__(self, name: str, binding: FileBinding) -> None:
        self.name = name
        self.binding = binding
        self._root = os.path.realpath(binding.root)

    def fetch(self, request: FetchRequest) -> list[Row]:
        raise Unsupported(self.name, "records")

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        raise Unsupported(self.name, "records")

    def document(self, request: FetchRequest) -> BlockingDocument:
        """The document the filters name; NotFound when it is absent or lies outside the root."""
        relative = self._name(request)
        path = os.path.realpath(os.path.join(self._root, relative))
        if os.path.commonpath([self._root, path]) != self._root or path == self._root:
            raise NotFound("document", relative)
        fd, size = self._open(os.path.relpath(path, self._root), relative)
        reader = _Reader(self.name, fd, size)
        media_type = self.binding.media_type or mimetypes.guess_type(relative)[0] or DEFAULT_MEDIA_TYPE
        return BlockingDocument(os.path.basename(relative), media_type, size, reader.chunks(), reader.close)

    def changes(self, request: ChangeRequest) -> ChangeBatch:
        """New documents under the root, after ``request.after`` (see ``adapters.file_changes``)."""
        if not self.binding.changes:
            raise Unsupported(self.name, "changes")
        return FileChanges(self.name, self._root, self.binding.name_template).read(request)

    def close(self) -> None:
        """Nothing is held between documents; each document closes its own file."""

    def _name(self, request: FetchRequest) -> str:
        """The relative name from the template, once every placeholder has a safe value."""
        checked_filters(request)
        wanted = self.binding.placeholders
        missing, extra = sorted(wanted - set(request.filters)), sorted(set(request.filters) - wanted)
        if missing or extra:
            raise InvalidArgument.of([FieldViolation("filters", _mismatch(wanted, missing, extra))])
        values = {name: str(value) for name, value in request.filters.items()}
        bad = [FieldViolation(f"filters.{k}", f"{_shown(v)} {p}") for k, v in values.items() if (p := _unsafe(v))]
        if bad:
            raise InvalidArgument.of(bad)
        return self.binding.name_template.format_map(values)

    def _open(self, inside: str, relative: str) -> tuple[int, int]:
        """A descriptor of the regular file at ``inside`` (relative to the root) and its size; no symlink followed."""
        try:
            fd = _open_beneath(self._root, inside.split(os.sep))
        except OSError as e:
            if e.errno in _MISSING:
                raise NotFound("document", relative) from None
            raise ProviderUnavailable(self.name) from None
        try:
            status = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise ProviderUnavailable(self.name) from None
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            raise NotFound("document", relative)
        return fd, status.st_size


def _open_beneath(root: str, parts: list[str]) -> int:
    """Opens ``parts`` under ``root`` one directory at a time, refusing a symlink at any step.

    ``O_NONBLOCK`` keeps a FIFO put in the file's place from blocking the open; the caller checks
    that what was opened is a regular file (for which the flag changes nothing).
    """
    fd = os.open(root, _OPEN_FLAGS | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            parent, fd = fd, -1
            try:
                fd = os.open(part, _OPEN_FLAGS | os.O_DIRECTORY, dir_fd=parent)
            finally:
                os.close(parent)
        parent, fd = fd, -1
        try:
            # Only a regular file with one name is opened: no device, FIFO, or hard link to a file elsewhere.
            found = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
                raise FileNotFoundError(errno.ENOENT, "not a regular file with one name", parts[-1])
            fd = os.open(parts[-1], _OPEN_FLAGS | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=parent)
        finally:
            os.close(parent)
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


class _Reader:
    """A file being read in chunks; ``close`` may come from another thread, at any time, more than once."""

    def __init__(self, provider: str, fd: int, size: int) -> None:
        self._provider = provider
        self._fd = fd
        # Bytes still to send: the size announced when the file was opened (a file growing meanwhile is cut).
        self._left = size
        self._lock = threading.Lock()

    def chunks(self) -> Generator[bytes, None, None]:
        """Chunks of up to 64 KiB until the end or ``close``; the file is closed when they end."""
        try:
            while chunk := self._read():
                yield chunk
        finally:
            self.close()

    def _read(self) -> bytes:
        with self._lock:
            if self._fd < 0 or self._left <= 0:
                return b""
            try:
                chunk = os.read(self._fd, min(CHUNK_BYTES, self._left))
            except OSError:
                raise ProviderUnavailable(self._provider) from None
            self._left -= len(chunk)
            return chunk

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _placeholders(template: str) -> list[str]:
    """The names between braces in ``template``; ValueError for a malformed template."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _unsafe(value: str) -> str:
    """Why ``value`` cannot be one path segment; empty when it can."""
    if not value:
        return "is empty"
    if any(c in "/\\" or unicodedata.category(c) in ("Cc", "Cs") for c in value):
        return "holds a path separator or a control character"
    if value.startswith("."):
        return "starts with a dot"
    if len(value.encode("utf-8")) > MAX_SEGMENT_BYTES:
        return f"is longer than {MAX_SEGMENT_BYTES} bytes"
    return ""


def _shown(value: str) -> str:
    """A value as it may appear in an error: quoted, escaped, and cut short."""
    return repr(value[:SHOWN_CHARS] + ("…" if len(value) > SHOWN_CHARS else ""))


def _mismatch(wanted: frozenset[str], missing: list[str], extra: list[str]) -> str:
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts += [f"{', '.join(extra)} does not name the document"] if extra else []
    return f"{'; '.join(parts)}; the document is named by {', '.join(sorted(wanted))}"


def check(options: Mapping[str, object], context: BackendContext) -> list[FieldViolation]:
    """The problems with file-store binding options, each with its path."""
    out: list[FieldViolation] = []
    out += [FieldViolation(f"binding.{k}", "is not an option of a file store") for k in options if k not in OPTIONS]
    root = opt.text(options, "root", out)
    template = opt.text(options, "name_template", out)
    media_type = opt.text(options, "media_type", out, required=False)
    if root.strip():
        out += [FieldViolation("binding.root", d) for d in _root_problems(root, context.document_roots)]
    if template.strip():
        out += [FieldViolation("binding.name_template", d) for d in _template_problems(template)]
    if media_type and not _MEDIA_TYPE.fullmatch(media_type):
        out.append(FieldViolation("binding.media_type", "must be a media type (type/subtype)"))
    if opt.text(options, "changes", out, required=False) not in ("", NEW_FILES):
        out.append(FieldViolation("binding.changes", f"must be {NEW_FILES!r} or empty"))
    return out


def _root_problems(root: str, allowed: tuple[Path, ...]) -> list[str]:
    """Why ``root`` cannot serve documents: not absolute, not a directory, or outside every document root."""
    if "\x00" in root or not os.path.isabs(root):
        return ["must be an absolute path"]
    real = os.path.realpath(root)
    if not os.path.isdir(real):
        return ["must be an existing directory"]
    if not allowed:
        return ["no document roots are configured on this hub"]
    if not any(_inside(real, os.path.realpath(r)) for r in allowed):
        return ["must lie inside one of the hub's document roots"]
    return []


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _template_problems(template: str) -> list[str]:
    """Why ``template`` cannot name documents safely beneath the root."""
    if template.startswith("/"):
        return ["must be relative to the root"]
    if any(c == "\\" or unicodedata.category(c) == "Cc" for c in template):
        return ["must not hold a backslash or a control character"]
    if any(s in ("", ".", "..") for s in template.split("/")):
        return ["must not have empty, '.' or '..' segments"]
    return _placeholder_problems(template)


def _placeholder_problems(template: str) -> list[str]:
    """Why the ``{placeholders}`` of ``template`` cannot be filled from filters: each is a bare name."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return ["has unbalanced braces (write {{ and }} for literal ones)"]
    placeholders = [(name, spec, conversion) for _, name, spec, conversion in fields if name is not None]
    if not placeholders:
        return ["must name the document by at least one {placeholder}"]
    if any(not name.isidentifier() or spec or conversion for name, spec, conversion in placeholders):
        return ["placeholders must be plain {identifier}s"]
    return []


def open(name: str, binding: Binding, context: BackendContext) -> Backend:
    """The adapter for ``binding``; its options are checked again, as the document roots may have changed."""
    violations = check(binding.options, context)
    if violations:
        raise InvalidArgument.of(violations)
    o = binding.options
    files = FileBinding(
        str(o["root"]), str(o["name_template"]), str(o.get("media_type") or ""), changes=binding.subscribable
    )
    return OnThreads(FileAdapter(name, files), context.lane)
