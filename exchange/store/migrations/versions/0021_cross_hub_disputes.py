"""cross-hub disputes: at the consumer's hub, a dispute of an application refused at its home hub, kept until
it is submitted there (its state, reason, disputer and time, and the last problem met on the way)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("applications_out", schema=None) as batch:
        batch.add_column(sa.Column("dispute", sa.String(length=16), server_default="", nullable=False))
        batch.add_column(sa.Column("dispute_reason", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("disputer", sa.String(length=80), server_default="", nullable=False))
        batch.add_column(sa.Column("disputed_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("dispute_problem", sa.Text(), server_default="", nullable=False))
        batch.create_index(batch.f("ix_applications_out_dispute"), ["dispute"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("applications_out", schema=None) as batch:
        batch.drop_index(batch.f("ix_applications_out_dispute"))
        batch.drop_column("dispute_problem")
        batch.drop_column("disputed_at")
        batch.drop_column("disputer")
        batch.drop_column("dispute_reason")
        batch.drop_column("dispute")
