"""web console: one-time sign-in links and sessions, each kept only as a hash of its secret

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_links",
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("secret_hash", name=op.f("pk_console_links")),
    )
    op.create_table(
        "console_sessions",
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("roles", sa.String(length=200), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("secret_hash", name=op.f("pk_console_sessions")),
    )
    op.create_index(op.f("ix_console_sessions_username"), "console_sessions", ["username"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_console_sessions_username"), table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("console_links")
