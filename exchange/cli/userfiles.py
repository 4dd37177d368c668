"""Reading and writing the files a person names on the command line, with errors that say what to fix.

Every verb reads its input files, and checks that its output files can be written, before it calls
the hub: a mistyped path costs no call (and no exchange recorded in the audit log).
"""

from __future__ import annotations

import os
from pathlib import Path

from exchange.errors import InvalidArgument


def os_problem(error: OSError, what: str = "") -> str:
    """One line for a failed file operation: which file, what went wrong, in words."""
    name = error.filename if error.filename is not None else what
    reason = error.strerror or str(error)
    if isinstance(error, IsADirectoryError):
        reason = "it is a directory, not a file"
    label = f"{what} {name}" if what and str(name) != what else str(name)
    return f"cannot use {label}: {reason}" if label else f"file problem: {reason}"


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file the person named (``what`` says which one, e.g. "the log's public key")."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {_reason(e)}") from None
    except UnicodeError:
        raise InvalidArgument(f"{what} {path} is not UTF-8 text: is it the right file?") from None


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of a file the person named."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {_reason(e)}") from None


def check_readable(path: Path, what: str) -> None:
    """That ``path`` is a file this process can open for reading (read later, as a stream)."""
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {_reason(e)}") from None


def check_writable(path: Path, what: str) -> None:
    """That a file can be written at ``path``: its directory exists and is writable, and it is not a directory."""
    if path.is_dir():
        raise InvalidArgument(f"cannot write {what} {path}: it is a directory; give a file name in it")
    parent = path.parent
    if not parent.is_dir():
        raise InvalidArgument(f"cannot write {what} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgument(f"cannot write {what} {path}: the directory {parent} is not writable")


def _reason(error: OSError) -> str:
    if isinstance(error, IsADirectoryError):
        return "it is a directory, not a file"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return error.strerror or str(error)
