"""audit search indexes: (actor | department | resource | outcome, seq), so a filtered page is read in order

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 17:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_REPLACED = ("actor", "actor_department", "resource")
_ADDED = ("actor", "actor_department", "resource", "outcome")


def upgrade() -> None:
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        for column in _REPLACED:
            batch_op.drop_index(f"ix_audit_entries_{column}")
        for column in _ADDED:
            batch_op.create_index(f"ix_audit_entries_{column}_seq", [column, "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        for column in _ADDED:
            batch_op.drop_index(f"ix_audit_entries_{column}_seq")
        for column in _REPLACED:
            batch_op.create_index(f"ix_audit_entries_{column}", [column], unique=False)
