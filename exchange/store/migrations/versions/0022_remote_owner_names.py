"""remote owner names: the owning department's name of each entry offered to peers and of each entry kept
from them, relayed hop by hop like its home hub's name

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 08:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("catalog_offers", "remote_entries"):
        with op.batch_alter_table(table, schema=None) as batch:
            batch.add_column(sa.Column("department_name", sa.String(length=200), server_default="", nullable=False))
    # This hub's own offers made before: named as its registry names their departments (for peers yet to pull them).
    op.execute(
        "UPDATE catalog_offers SET department_name = COALESCE((SELECT d.name FROM resources r JOIN departments d"
        " ON d.id = r.department_id WHERE r.code = catalog_offers.resource_code), '') WHERE via_peer = ''"
    )


def downgrade() -> None:
    for table in ("remote_entries", "catalog_offers"):
        with op.batch_alter_table(table, schema=None) as batch:
            batch.drop_column("department_name")
