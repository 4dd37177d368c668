"""objections: a consumer's doubt about shared data, and the owning department's answer

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "objections",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("resource_code", sa.String(length=32), nullable=False),
        sa.Column("owner_department", sa.String(length=18), nullable=False),
        sa.Column("exchange_id", sa.String(length=64), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_sha256", sa.String(length=64), nullable=False),
        sa.Column("raised_by", sa.String(length=80), nullable=False),
        sa.Column("raiser_department", sa.String(length=18), nullable=False),
        sa.Column("raised_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("answer_kind", sa.String(length=16), nullable=False),
        sa.Column("answer_text", sa.Text(), nullable=False),
        sa.Column("effective_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("answered_by", sa.String(length=80), nullable=False),
        sa.Column("answered_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("escalated_by", sa.String(length=80), nullable=False),
        sa.Column("escalated_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("escalation_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_objections")),
    )
    for column in ("resource_code", "owner_department", "raiser_department", "due_date", "state"):
        op.create_index(op.f(f"ix_objections_{column}"), "objections", [column], unique=False)


def downgrade() -> None:
    for column in ("resource_code", "owner_department", "raiser_department", "due_date", "state"):
        op.drop_index(op.f(f"ix_objections_{column}"), table_name="objections")
    op.drop_table("objections")
