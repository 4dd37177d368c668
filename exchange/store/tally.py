"""Counting what awaits an answer by its due date, in the query itself (requests and objections alike)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, case, func


def tally_columns(
    waiting: ColumnElement[bool], due_date: SQLColumnExpression[dt.date], today: dt.date, soon: dt.date
) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    """count, due from ``today`` to ``soon``, overdue on ``today``: the last two only of rows still ``waiting``."""
    due = and_(waiting, due_date >= today, due_date <= soon)
    late = and_(waiting, due_date < today)
    return (
        func.count(),
        func.coalesce(func.sum(case((due, 1), else_=0)), 0),
        func.coalesce(func.sum(case((late, 1), else_=0)), 0),
    )
