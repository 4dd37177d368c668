"""The CLI's one output convention for verbs that report what they did: sentences for people, JSON with --json."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping


def emit(args: argparse.Namespace, data: Mapping[str, object], *lines: str) -> None:
    """Prints ``lines`` for a person, or with ``--json`` the same facts as one JSON object."""
    if getattr(args, "json", False):
        print(json.dumps(dict(data), ensure_ascii=False, indent=2, default=str))
    else:
        for line in lines:
            print(line)
