"""repository figures: tag, manifest and blob counts, total size and last push, kept on the
repository row by every write (app/registry/queries.py) and indexed for the UI's sorted list

Revision ID: 0010_repository_stats
Revises: 0009_mirror_retention
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_repository_stats"
down_revision: str | tuple[str, ...] | None = "0009_mirror_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("tag_count", "manifest_count", "blob_count")
INDEXES = {
    "ix_repository_tag_count_name": ["tag_count", "name"],
    "ix_repository_total_size_name": ["total_size", "name"],
    "ix_repository_last_push_name": ["last_push", "name"],
}
# The figures counted from the rows, in one statement (correlated subqueries, each an index
# look-up by repository): what the writes keep up from here on. The latest push is the
# latest of the tags, manifests and blob links.
BACKFILL = """
UPDATE repository SET
  tag_count = (SELECT count(*) FROM tag WHERE tag.repository_id = repository.id),
  manifest_count = (SELECT count(*) FROM manifest WHERE manifest.repository_id = repository.id),
  blob_count = (SELECT count(*) FROM repository_blob rb WHERE rb.repository_id = repository.id),
  total_size =
    (SELECT coalesce(sum(blob.size), 0) FROM repository_blob rb JOIN blob ON blob.id = rb.blob_id
     WHERE rb.repository_id = repository.id)
    + (SELECT coalesce(sum(manifest.size), 0) FROM manifest
       WHERE manifest.repository_id = repository.id),
  last_push = (
    SELECT max(at) FROM (
      SELECT updated_at AS at FROM tag WHERE tag.repository_id = repository.id
      UNION ALL
      SELECT created_at FROM manifest WHERE manifest.repository_id = repository.id
      UNION ALL
      SELECT created_at FROM repository_blob rb WHERE rb.repository_id = repository.id
    ) AS pushes
  )
"""


def upgrade() -> None:
    for name in COUNTS:
        op.add_column(
            "repository", sa.Column(name, sa.Integer(), server_default="0", nullable=False)
        )
    op.add_column(
        "repository",
        sa.Column("total_size", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("repository", sa.Column("last_push", sa.DateTime(timezone=True)))
    op.execute(BACKFILL)
    for index, columns in INDEXES.items():
        op.create_index(index, "repository", columns)


def downgrade() -> None:
    for index in INDEXES:
        op.drop_index(index, table_name="repository")
    # Plain ALTER TABLE DROP COLUMN (SQLite 3.35+): a batch copy would recreate the table
    # every other table points at.
    for name in (*COUNTS, "total_size", "last_push"):
        op.drop_column("repository", name)
