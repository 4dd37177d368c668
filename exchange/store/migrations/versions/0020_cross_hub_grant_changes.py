"""cross-hub grant changes: at the consumer's hub, an application's grant state at home (active, suspended,
revoked) with the reason and time of its last change there

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("applications_out", schema=None) as batch:
        batch.add_column(sa.Column("grant_status", sa.String(length=16), server_default="", nullable=False))
        batch.add_column(sa.Column("grant_reason", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("grant_changed_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("applications_out", schema=None) as batch:
        batch.drop_column("grant_changed_at")
        batch.drop_column("grant_reason")
        batch.drop_column("grant_status")
