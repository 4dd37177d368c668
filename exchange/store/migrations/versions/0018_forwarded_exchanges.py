"""forwarded exchanges: the home hub's log key on offers and remote entries, seen forwarded statements

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("catalog_offers", "remote_entries"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("home_log_key", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "forwarded_seen",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("expires", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forwarded_seen")),
    )
    op.create_index(op.f("ix_forwarded_seen_expires"), "forwarded_seen", ["expires"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_forwarded_seen_expires"), table_name="forwarded_seen")
    op.drop_table("forwarded_seen")
    for table in ("remote_entries", "catalog_offers"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("home_log_key")
