"""webhook notification outbox

Revision ID: 0003
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notification_event",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_event")),
    )
    op.create_table(
        "notification_delivery",
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["notification_event.id"],
            name=op.f("fk_notification_delivery_event_id_notification_event"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", "endpoint", name=op.f("pk_notification_delivery")),
    )
    op.create_index(
        "ix_notification_delivery_endpoint_status",
        "notification_delivery",
        ["endpoint", "status", "event_id"],
        unique=False,
    )
    op.create_table(
        "notification_endpoint",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_notification_endpoint")),
    )


def downgrade() -> None:
    op.drop_table("notification_endpoint")
    op.drop_index("ix_notification_delivery_endpoint_status", table_name="notification_delivery")
    op.drop_table("notification_delivery")
    op.drop_table("notification_event")
