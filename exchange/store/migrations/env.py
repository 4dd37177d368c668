"""Alembic environment: runs migrations on the connection the hub hands it."""

from __future__ import annotations

from alembic import context

from exchange.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `exchange migrate`, which supplies the connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
