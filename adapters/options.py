"""Reading a binding's options: each problem is collected with its path, as the hub reports it."""

from __future__ import annotations

from collections.abc import Mapping

from exchange.errors import FieldViolation

MAX_TEXT = 2000


def text(options: Mapping[str, object], key: str, out: list[FieldViolation], *, required: bool = True) -> str:
    """The option ``key`` as text; a violation when it is missing (and required), not text, or too long."""
    value = options.get(key, "")
    path = f"binding.{key}"
    if not isinstance(value, str):
        out.append(FieldViolation(path, "must be text"))
        return ""
    if required and not value.strip():
        out.append(FieldViolation(path, "is required"))
    if len(value) > MAX_TEXT:
        out.append(FieldViolation(path, f"is longer than {MAX_TEXT} characters"))
    return value


def mapping(options: Mapping[str, object], key: str, out: list[FieldViolation]) -> dict[str, str]:
    """The option ``key`` as a mapping of text to text (empty when absent)."""
    value = options.get(key) or {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        out.append(FieldViolation(f"binding.{key}", "must map names to names"))
        return {}
    return dict(value)
