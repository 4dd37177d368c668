"""Keyset pagination over any ordered, unique key column."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from exchange.errors import FieldViolation, InvalidArgument
from exchange.models import Page
from exchange.paging import PageRequest

T = TypeVar("T")


def fetch_page(
    session: Session,
    stmt: Select[Any],
    key: InstrumentedAttribute[Any],
    page: PageRequest,
    *,
    convert: Callable[[Any], T],
    parse: Callable[[str], Any] = str,
) -> Page[T]:
    """Runs ``stmt`` from just after the page's key, returning one page and the next token.

    ``parse`` turns the token's key back into the column's type (``int`` for numbers).
    """
    if page.after is not None:
        try:
            after = parse(page.after)
        except ValueError:
            raise InvalidArgument.of([FieldViolation("page_token", "is not a token this hub issued")]) from None
        stmt = stmt.where(key > after)
    rows = list(session.scalars(stmt.order_by(key).limit(page.size + 1)).unique())
    more = len(rows) > page.size
    rows = rows[: page.size]
    token = page.token_after(str(getattr(rows[-1], key.key))) if more and rows else ""
    return Page([convert(r) for r in rows], token)
