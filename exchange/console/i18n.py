"""Message catalogs of the console: zh-CN (the default) and English.

Each locale is a directory of YAML files under ``messages/``, one per part of the console, mapping
dotted keys to texts with ``{name}`` placeholders. Every key must exist in every locale (a test holds
this); a key missing at run time shows itself (the key) rather than failing the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent / "messages"
DEFAULT = "zh-CN"
LOCALES = ("zh-CN", "en")
LOCALE_NAMES = {"zh-CN": "中文", "en": "English"}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)


def load_locale(directory: Path) -> dict[str, str]:
    """Every message of one locale, keyed by ``<file stem>.<dotted key>``."""
    out: dict[str, str] = {}
    for file in sorted(directory.glob("*.yaml")):
        _flatten(file.stem, yaml.safe_load(file.read_text(encoding="utf-8")) or {}, out)
    return out


class Catalogs:
    """The console's messages in every locale."""

    def __init__(self, root: Path = HERE) -> None:
        self.messages = {locale: load_locale(root / locale) for locale in LOCALES}

    def pick(self, wanted: str | None) -> str:
        return wanted if wanted in self.messages else DEFAULT

    def text(self, locale: str, key: str, **values: object) -> str:
        """The message ``key`` in ``locale``, its placeholders filled; the key itself when missing."""
        message = self.messages.get(locale, {}).get(key)
        if message is None:
            return key
        if not values:
            return message
        try:
            return message.format_map(values)
        except (KeyError, IndexError, ValueError):
            return message
