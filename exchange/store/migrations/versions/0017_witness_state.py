"""witness state: the checkpoints this hub cosigned for peers, fork evidence, cosignatures it received

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witness_seen",
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("updated_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("origin", name=op.f("pk_witness_seen")),
    )
    op.create_table(
        "witness_forks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("seen_note", sa.Text(), nullable=False),
        sa.Column("offered_note", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("detected_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_witness_forks")),
    )
    op.create_index(op.f("ix_witness_forks_origin"), "witness_forks", ["origin"], unique=False)
    op.create_table(
        "witness_cosignatures",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.String(length=255), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("received_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", "witness", name=op.f("pk_witness_cosignatures")),
    )


def downgrade() -> None:
    op.drop_table("witness_cosignatures")
    op.drop_index(op.f("ix_witness_forks_origin"), table_name="witness_forks")
    op.drop_table("witness_forks")
    op.drop_table("witness_seen")
