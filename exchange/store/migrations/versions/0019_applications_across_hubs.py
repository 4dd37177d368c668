"""applications across hubs: share requests kept here for resources homed elsewhere, those received from other
hubs' departments, the foreign departments they name, and the forwarded statements already accepted

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = exchange.store.schema.UTCDateTime(timezone=True)
    op.create_table(
        "applications_out",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("resource_code", sa.String(length=32), nullable=False),
        sa.Column("home_hub_code", sa.String(length=6), nullable=False),
        sa.Column("via_peer", sa.String(length=6), nullable=False),
        sa.Column("consumer_department_code", sa.String(length=18), nullable=False),
        sa.Column("application", sa.JSON(), nullable=False),
        sa.Column("applicant", sa.String(length=80), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("submission", sa.String(length=16), nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("home_request_id", sa.String(length=32), nullable=False),
        sa.Column("home_sequence", sa.BigInteger(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("decision_reason", sa.Text(), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("approved_fields", sa.JSON(), nullable=False),
        sa.Column("approved_end", sa.Date(), nullable=True),
        sa.Column("masks", sa.JSON(), nullable=False),
        sa.Column("daily_quota", sa.BigInteger(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_applications_out")),
    )
    for column in ("resource_code", "home_hub_code", "consumer_department_code", "status", "submission"):
        op.create_index(op.f(f"ix_applications_out_{column}"), "applications_out", [column], unique=False)
    op.create_table(
        "applications_in",
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("origin_hub_code", sa.String(length=6), nullable=False),
        sa.Column("origin_request_id", sa.String(length=32), nullable=False),
        sa.Column("via_peer", sa.String(length=6), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"], ["share_requests.id"], name=op.f("fk_applications_in_request_id_share_requests")
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_applications_in")),
        sa.UniqueConstraint("origin_hub_code", "origin_request_id", name="uq_applications_in_origin_hub_code"),
    )
    op.create_index(op.f("ix_applications_in_origin_hub_code"), "applications_in", ["origin_hub_code"], unique=False)
    op.create_table(
        "foreign_departments",
        sa.Column("department_id", sa.Integer(), nullable=False),
        sa.Column("hub_code", sa.String(length=6), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_foreign_departments_department_id_departments")
        ),
        sa.PrimaryKeyConstraint("department_id", name=op.f("pk_foreign_departments")),
    )


def downgrade() -> None:
    op.drop_table("foreign_departments")
    op.drop_index(op.f("ix_applications_in_origin_hub_code"), table_name="applications_in")
    op.drop_table("applications_in")
    for column in ("resource_code", "home_hub_code", "consumer_department_code", "status", "submission"):
        op.drop_index(op.f(f"ix_applications_out_{column}"), table_name="applications_out")
    op.drop_table("applications_out")
