"""The hub's logs: one JSON object a line (or plain text for people at a terminal), levels configurable.

An event logged with ``extra={"event": {...}}`` has those fields in its line: exchanges and
administrative changes are logged so, with their exchange id and outcome and never with the data or
an identifier in clear (records carry data subjects only as keyed hashes, and those are left out too).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping

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
        event = getattr(record, "event", None)
        if isinstance(event, Mapping):
            line.update({k: v for k, v in event.items() if k not in _NOT_LOGGED and k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, form: str) -> None:
    """Sets the root logger's level and format ("json" or "text"); quiets libraries that narrate."""
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("alembic", "casbin"):  # both narrate every migration or policy line at INFO
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
