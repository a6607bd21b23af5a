"""pull-through cache: mirror_fetch (the single flight of blob fetches), mirror_tag (ttl)

Revision ID: 0007_mirror
Revises: 0006_auth_failure
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# A name, not the next number: other branches add migrations after 0005 too, and a merge
# then only has to re-point one down_revision.
revision: str = "0007_mirror"
down_revision: str | tuple[str, ...] | None = "0006_auth_failure"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mirror_fetch",
        sa.Column("digest", sa.String(length=150), nullable=False),
        sa.Column("owner", sa.String(length=36), nullable=False),
        sa.Column("upstream", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_mirror_fetch")),
    )
    op.create_table(
        "mirror_tag",
        sa.Column("repository_id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=150), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repository.id"],
            name=op.f("fk_mirror_tag_repository_id_repository"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", "name", name=op.f("pk_mirror_tag")),
    )


def downgrade() -> None:
    op.drop_table("mirror_tag")
    op.drop_table("mirror_fetch")
