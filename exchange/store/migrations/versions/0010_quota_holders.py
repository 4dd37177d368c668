"""quota holders: hub processes that hold parked quota under a heartbeat-renewed expiry

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_holders",
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_quota_holders")),
    )
    op.create_table(
        "quota_holds",
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("parked", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("holder", "grant_id", "day", name=op.f("pk_quota_holds")),
    )


def downgrade() -> None:
    op.drop_table("quota_holds")
    op.drop_table("quota_holders")
