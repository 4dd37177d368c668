"""certificate renewal lineage; person identity keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 21:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("renewed_from", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_certificates_renewed_from"), ["renewed_from"], unique=False)
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_people_identity_key"), ["identity_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_people_identity_key"))
        batch_op.drop_column("identity_key")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_renewed_from"))
        batch_op.drop_column("renewed_from")
