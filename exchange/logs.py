"""The hub's logs: one JSON object a line (or plain text for people at a terminal), levels configurable.

An event logged with ``extra={"event": {...}}`` has those fields in its line: exchanges and
administrative changes are logged so, with their exchange id and outcome and never with the data or
an identifier in clear (records carry data subjects only as keyed hashes, and those are left out too).
A line logged while a traced call is being served also has its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from exchange import tracing

# Fields of an audit record that a log line leaves out.
_NOT_LOGGED = frozenset({"data_subjects", "request_sha256", "response_sha256", "masks"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(tracing.log_ids())  # the call's trace, when the line is logged under a span
        event = getattr(record, "event", None)
        if isinstance(event, Mapping):
            line.update({k: v for k, v in event.items() if k not in _NOT_LOGGED and k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (it may be replaced after start-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str, form: str) -> None:
    """Sets the root logger's level and our handler's format ("json" or "text"); quiets libraries that narrate.

    Handlers installed by others (a test runner's, say) are left in place; ours is replaced.
    """
    handler = _Stderr()
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for chatty in ("alembic", "casbin"):  # both narrate every migration or policy line at INFO
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def to_file(path: Path) -> Callable[[], None]:
    """Sends the log to ``path`` (plain text), leaving only errors on the terminal; returns what undoes it.

    For a program that narrates on the terminal itself (the demo's tour): the hub's lines would land in
    the middle of its text, and repeat what it says.
    """
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    terminal = [(h, h.level) for h in root.handlers if isinstance(h, _Stderr)]
    for h, _ in terminal:
        h.setLevel(logging.ERROR)
    root.addHandler(handler)

    def undo() -> None:
        root.removeHandler(handler)
        handler.close()
        for h, level in terminal:
            h.setLevel(level)

    return undo
