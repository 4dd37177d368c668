"""masked items a grant lets be filtered on; hub-wide quota leases and masked-filter counts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("share_requests", "grants"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("verify_masked", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
    op.create_table(
        "quota_leases",
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("leased", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("grant_id", "day", name=op.f("pk_quota_leases")),
    )
    op.create_table(
        "masked_filter_counts",
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("lookups", sa.BigInteger(), nullable=False),
        sa.Column("misses", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "day", name=op.f("pk_masked_filter_counts")),
    )


def downgrade() -> None:
    op.drop_table("masked_filter_counts")
    op.drop_table("quota_leases")
    for table in ("grants", "share_requests"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("verify_masked")
