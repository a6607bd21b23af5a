"""mirror_repository: the pull-through cache's repositories and their last pull (retention)

Revision ID: 0009_mirror_retention
Revises: 0008_ui_sessions
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_mirror_retention"
down_revision: str | tuple[str, ...] | None = "0008_ui_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mirror_repository",
        sa.Column("repository_id", BIG_ID, nullable=False),
        sa.Column("pulled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repository.id"],
            name=op.f("fk_mirror_repository_repository_id_repository"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", name=op.f("pk_mirror_repository")),
    )
    # Repositories cached before this revision: those with a checked tag are surely the
    # cache's, and their last check is the best guess at their last pull. The others get a
    # row at their next pull; until then retention leaves them alone.
    op.execute(
        "INSERT INTO mirror_repository (repository_id, pulled_at)"
        " SELECT repository_id, MAX(checked_at) FROM mirror_tag GROUP BY repository_id"
    )


def downgrade() -> None:
    op.drop_table("mirror_repository")
