"""resource bindings; filterable data items

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 18:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_bindings",
        sa.Column("resource_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("max_rows", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", exchange.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=80), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name=op.f("fk_resource_bindings_resource_id_resources")
        ),
        sa.PrimaryKeyConstraint("resource_id", name=op.f("pk_resource_bindings")),
    )
    with op.batch_alter_table("resource_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("filterable", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("resource_items", schema=None) as batch_op:
        batch_op.drop_column("filterable")
    op.drop_table("resource_bindings")
