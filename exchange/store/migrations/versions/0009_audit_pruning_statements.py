"""audit pruning statements: the hub's signed word for each pruning of the audit log

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_prunings",
        sa.Column("up_to", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("made", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("up_to", name=op.f("pk_audit_prunings")),
    )


def downgrade() -> None:
    op.drop_table("audit_prunings")
