"""upload writer lease; joins the users and events branches

Revision ID: 0004
Revises: 0002, 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | tuple[str, ...] | None = ("0002", "0003")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("upload") as batch:
        batch.add_column(sa.Column("writer", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("writer_expires", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upload") as batch:
        batch.drop_column("writer_expires")
        batch.drop_column("writer")
