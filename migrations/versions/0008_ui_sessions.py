"""ui_session: web UI logins, kept server-side so every worker and instance knows them

Revision ID: 0008_ui_sessions
Revises: 0007_mirror
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_ui_sessions"
down_revision: str | tuple[str, ...] | None = "0007_mirror"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_session",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_ui_session")),
    )
    op.create_index(op.f("ix_ui_session_expires_at"), "ui_session", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_session_expires_at"), table_name="ui_session")
    op.drop_table("ui_session")
