"""subscriptions: a consumer system's subscription to a resource's changes, and its window of pending changes

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_INDEXED = ("resource_code", "owner_department", "consumer_department", "status")


def upgrade() -> None:
    utc = exchange.store.schema.UTCDateTime
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("resource_code", sa.String(length=32), nullable=False),
        sa.Column("owner_department", sa.String(length=18), nullable=False),
        sa.Column("consumer_department", sa.String(length=18), nullable=False),
        sa.Column("consumer_system", sa.String(length=80), nullable=False),
        sa.Column("grant_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("source_cursor", sa.Text(), nullable=True),
        sa.Column("next_sequence", sa.BigInteger(), nullable=False),
        sa.Column("acknowledged_sequence", sa.BigInteger(), nullable=False),
        sa.Column("delivered_sequence", sa.BigInteger(), nullable=False),
        sa.Column("dropped_through", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reader_holder", sa.String(length=80), nullable=False),
        sa.Column("reader_expires", utc(timezone=True), nullable=True),
        sa.Column("poll_holder", sa.String(length=80), nullable=False),
        sa.Column("poll_expires", utc(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", utc(timezone=True), nullable=False),
        sa.Column("updated_at", utc(timezone=True), nullable=False),
        sa.Column("cancelled_at", utc(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    for column in _INDEXED:
        op.create_index(op.f(f"ix_subscriptions_{column}"), "subscriptions", [column], unique=False)
    op.create_table(
        "subscription_changes",
        sa.Column("subscription_id", sa.String(length=32), nullable=False),
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("change_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("subjects", sa.JSON(), nullable=False),
        sa.Column("masks", sa.JSON(), nullable=False),
        sa.Column("created_at", utc(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_changes_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("subscription_id", "sequence", name=op.f("pk_subscription_changes")),
    )
    op.create_index(op.f("ix_subscription_changes_created_at"), "subscription_changes", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_subscription_changes_created_at"), table_name="subscription_changes")
    op.drop_table("subscription_changes")
    for column in _INDEXED:
        op.drop_index(op.f(f"ix_subscriptions_{column}"), table_name="subscriptions")
    op.drop_table("subscriptions")
