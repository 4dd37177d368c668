"""Masking values before they leave the hub (个人信息保护法 art. 51: de-identification).

Each mask keeps only what a grant allows to be seen: an ID number its first 6 and last 4 characters
(the usual mask for 公民身份号码), a name its family name (first character), a phone number its last 4
digits, FULL nothing. Masking is applied to text; other values are masked as their text. This module is
the one place masks are applied: to rows (``apply``) and to records still in wire form (``mask_record``,
``records_masker``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from exchange import values
from exchange.models import MaskKind
from exchange.v1 import data_pb2

MASK_CHAR = "*"


def _id_number(text: str) -> str:
    """The first 6 and last 4 characters kept; all hidden if that would keep them all."""
    n = len(text)
    return f"{text[:6]}{MASK_CHAR * (n - 10)}{text[-4:]}" if n > 10 else MASK_CHAR * n


def _name(text: str) -> str:
    """The first character kept (the family name); a single character hidden."""
    n = len(text)
    return text[0] + MASK_CHAR * (n - 1) if n > 1 else MASK_CHAR


def _phone(text: str) -> str:
    digits = [c for c in text if c.isdigit()]
    return MASK_CHAR * max(0, len(digits) - 4) + "".join(digits[-4:]) if len(digits) > 4 else MASK_CHAR * len(text)


def _full(text: str) -> str:
    return MASK_CHAR * len(text)


# How each mask hides a value's text (every kind but NONE; an unknown kind hides all, as FULL).
_HIDE: dict[MaskKind, Callable[[str], str]] = {
    MaskKind.ID_NUMBER: _id_number,
    MaskKind.NAME: _name,
    MaskKind.PHONE: _phone,
}


def mask(value: object, kind: MaskKind) -> object:
    """The value as the grant lets it be seen; None stays None (an absent value reveals nothing)."""
    if value is None or kind is MaskKind.NONE:
        return value
    return _HIDE.get(kind, _full)(str(value))


def apply(
    row: dict[str, object], fields: tuple[str, ...], masks: tuple[tuple[str, MaskKind], ...]
) -> dict[str, object]:
    """Only the granted fields of ``row``, each masked as the grant says."""
    how = dict(masks)
    if not how:
        return {f: row.get(f) for f in fields}
    return {f: mask(row.get(f), how[f]) if f in how else row.get(f) for f in fields}


def mask_record(record: data_pb2.Record, masks: tuple[tuple[str, MaskKind], ...]) -> data_pb2.Record:
    """``apply`` for a record still in wire form: the masked fields replaced, in place, by their masked text.

    The record holds only the fields asked for (the provider's answer is checked first); nulls stay null.
    """
    return record_masker(masks)(record)


def record_masker(masks: tuple[tuple[str, MaskKind], ...]) -> Callable[[data_pb2.Record], data_pb2.Record]:
    """``mask_record`` with ``masks`` worked out once."""
    mask_all = records_masker(masks)

    def masked(record: data_pb2.Record) -> data_pb2.Record:
        mask_all((record,))
        return record

    return masked


# A Value's WhichOneof taken from the class: called so, it skips the instance's attribute lookup (cheaper).
_kind = data_pb2.Value.WhichOneof


def records_masker(masks: tuple[tuple[str, MaskKind], ...]) -> Callable[[Iterable[data_pb2.Record]], None]:
    """``mask_record`` for each of many records (a stream's batch), in place, with ``masks`` worked out once."""
    hidden = tuple((name, _HIDE.get(kind, _full)) for name, kind in masks if kind is not MaskKind.NONE)

    def mask_all(records: Iterable[data_pb2.Record]) -> None:
        for record in records:
            fields = record.fields
            for name, hide in hidden:
                if name not in fields:
                    continue
                value = fields[name]
                text = value.string_value  # text only if the value is a string: then its kind need not be asked
                if text:
                    value.string_value = hide(text)
                    continue
                which = _kind(value, "kind")
                if which == "string_value":
                    value.string_value = hide(text)
                elif which is not None:
                    value.string_value = hide(str(values.from_wire(value)))  # setting the text clears the other kind

    return mask_all
