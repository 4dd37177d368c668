"""peers: federation with other hubs, the catalog offers this hub makes them, and the entries they offer

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import exchange.store.schema

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_TIME = exchange.store.schema.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "peers",
        sa.Column("code", sa.String(length=6), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("relation", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("ca_pem", sa.Text(), nullable=False),
        sa.Column("ca_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("registered_at", _TIME, nullable=False),
        sa.Column("changed_at", _TIME, nullable=False),
        sa.Column("offer_sequence", sa.BigInteger(), nullable=False),
        sa.Column("synced_at", _TIME, nullable=True),
        sa.Column("sync_problem", sa.Text(), nullable=False),
        sa.Column("log_key", sa.Text(), nullable=False),
        sa.Column("witness_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_peers")),
    )
    op.create_index(op.f("ix_peers_state"), "peers", ["state"], unique=False)
    op.create_table(
        "catalog_offers",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("resource_code", sa.String(length=32), nullable=False),
        sa.Column("home_hub_code", sa.String(length=6), nullable=False),
        sa.Column("home_hub_name", sa.String(length=200), nullable=False),
        sa.Column("home_level", sa.String(length=16), nullable=False),
        sa.Column("via_peer", sa.String(length=6), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("offered_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_catalog_offers")),
    )
    op.create_index(op.f("ix_catalog_offers_resource_code"), "catalog_offers", ["resource_code"], unique=False)
    op.create_table(
        "remote_entries",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("department_code", sa.String(length=18), nullable=False),
        sa.Column("share_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("item_names", sa.Text(), nullable=False),
        sa.Column("home_hub_code", sa.String(length=6), nullable=False),
        sa.Column("home_hub_name", sa.String(length=200), nullable=False),
        sa.Column("home_level", sa.String(length=16), nullable=False),
        sa.Column("via_peer", sa.String(length=6), nullable=False),
        sa.Column("offer_sequence", sa.BigInteger(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_remote_entries")),
    )
    for column in ("department_code", "home_hub_code", "home_level", "via_peer"):
        op.create_index(op.f(f"ix_remote_entries_{column}"), "remote_entries", [column], unique=False)


def downgrade() -> None:
    for column in ("department_code", "home_hub_code", "home_level", "via_peer"):
        op.drop_index(op.f(f"ix_remote_entries_{column}"), table_name="remote_entries")
    op.drop_table("remote_entries")
    op.drop_index(op.f("ix_catalog_offers_resource_code"), table_name="catalog_offers")
    op.drop_table("catalog_offers")
    op.drop_index(op.f("ix_peers_state"), table_name="peers")
    op.drop_table("peers")
