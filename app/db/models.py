"""Registry metadata. Blob bytes live in the storage driver; these rows say what exists."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Predictable constraint names, so Alembic migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def byte_ordered(length: int) -> String:
    """A string column that sorts and compares by bytes on every database, as the
    tags/list and _catalog pagination (lexical order, `last` exclusive) require."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Timestamp(TypeDecorator[datetime]):
    """A moment in UTC, aware on the way out on every database: SQLite stores no zone and
    hands back naive values, which compared with an aware `now` would raise."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only autoincrements INTEGER


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Repository(Base):
    """A repository, and its figures for the web UI's list, kept by every write that changes
    them (app/registry/queries.py) so that the list sorts by an index: counting
    them per page took 100-350 ms at 10,000 repositories on PostgreSQL."""

    __tablename__ = "repository"
    # Ties are broken by name in the same direction as the figure, so one index serves both
    # orders (a backward scan for descending).
    __table_args__ = (
        Index("ix_repository_tag_count_name", "tag_count", "name"),
        Index("ix_repository_total_size_name", "total_size", "name"),
        Index("ix_repository_last_push_name", "last_push", "name"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(byte_ordered(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    tag_count: Mapped[int] = mapped_column(Integer, server_default="0")
    manifest_count: Mapped[int] = mapped_column(Integer, server_default="0")
    blob_count: Mapped[int] = mapped_column(Integer, server_default="0")  # linked blobs
    # Bytes of the linked blobs plus the manifests.
    total_size: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The latest blob link, manifest or tag pushed; None until something is (such a
    # repository has no content and is listed nowhere). Deleting never moves it back.
    last_push: Mapped[datetime | None] = mapped_column(Timestamp())


class Blob(Base):
    __tablename__ = "blob"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    digest: Mapped[str] = mapped_column(String(150), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class RepositoryBlob(Base):
    """A blob is visible in a repository only through this link."""

    __tablename__ = "repository_blob"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True
    )
    blob_id: Mapped[int] = mapped_column(
        ForeignKey("blob.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Manifest(Base):
    __tablename__ = "manifest"
    __table_args__ = (
        UniqueConstraint("repository_id", "digest", name="uq_manifest_repository_id_digest"),
        Index("ix_manifest_repository_id_subject_digest", "repository_id", "subject_digest"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(150))
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255))
    subject_digest: Mapped[str | None] = mapped_column(String(150))
    # JSON text of the manifest's annotations, copied into referrers responses.
    annotations: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class ManifestReference(Base):
    """What a manifest points at: config and layer blobs, or child manifests of an index."""

    __tablename__ = "manifest_reference"

    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(150), primary_key=True, index=True)
    # "blob" or "manifest"
    kind: Mapped[str] = mapped_column(String(16))


class Tag(Base):
    __tablename__ = "tag"
    __table_args__ = (UniqueConstraint("repository_id", "name", name="uq_tag_repository_id_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(byte_ordered(128))
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)


class Upload(Base):
    """An upload session. Its bytes are in the driver; any worker can continue it."""

    __tablename__ = "upload"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow, index=True)
    # The one request allowed to write the upload's bytes, until its lease runs out.
    writer: Mapped[str | None] = mapped_column(String(36))
    writer_expires: Mapped[datetime | None] = mapped_column(Timestamp())
    # sha256 of the first `size` bytes (None: not known), recorded with each chunk, so that
    # completing an upload needs no second read of its bytes, whichever worker takes it.
    sha256: Mapped[str | None] = mapped_column(String(64))


class NotificationEvent(Base):
    """Webhook outbox: one registry event, written in the same transaction as the change it
    describes, so a committed change always has its event and a rolled-back one never does."""

    __tablename__ = "notification_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    # The distribution-format event as JSON, exactly as it will be sent.
    payload: Mapped[str] = mapped_column(Text)


class NotificationDelivery(Base):
    """One event for one endpoint: each endpoint has its own state, so one endpoint's outage
    never holds back another's events."""

    __tablename__ = "notification_delivery"
    __table_args__ = (
        Index("ix_notification_delivery_endpoint_status", "endpoint", "status", "event_id"),
    )

    event_id: Mapped[int] = mapped_column(
        ForeignKey("notification_event.id", ondelete="CASCADE"), primary_key=True
    )
    endpoint: Mapped[str] = mapped_column(String(255), primary_key=True)
    # "pending" until a POST holding it got a 2xx/3xx, then "sent".
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # POSTs holding this event that failed (network error, timeout, 4xx/5xx).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp())


class NotificationEndpoint(Base):
    """Delivery state of one endpoint, shared by every delivery worker of every instance: the
    lease makes one worker at a time send its events (in order), the failure count drives the
    threshold/backoff circuit breaker."""

    __tablename__ = "notification_endpoint"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed POSTs
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(Timestamp())
    last_error: Mapped[str | None] = mapped_column(Text)


class AuthUser(Base):
    """A registry account (`berth user add`): name and bcrypt hash, nothing else."""

    __tablename__ = "auth_user"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)


class AuthSigningKey(Base):
    """The token signing key generated on first start, shared by every worker and instance."""

    __tablename__ = "auth_signing_key"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_key: Mapped[str] = mapped_column(Text)  # PEM, PKCS#8
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class AuthFailure(Base):
    """A failed login, counted by every worker and instance (app/auth/throttle.py): one row
    per failure for the client's address, and one for the address and the user name."""

    __tablename__ = "auth_failure"
    __table_args__ = (Index("ix_auth_failure_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(600))
    # Milliseconds since the epoch: compared in the raw read of every Basic login
    # (Database.rows), where SQLite would compare a datetime as text.
    at: Mapped[int] = mapped_column(BigInteger)


class MirrorFetch(Base):
    """A blob being fetched from a pull-through cache's upstream: one row per digest, held by
    one request of one worker of one instance at a time, is the single flight. A holder that
    dies loses it when `expires_at` passes; it renews it while bytes arrive."""

    __tablename__ = "mirror_fetch"

    digest: Mapped[str] = mapped_column(String(150), primary_key=True)
    owner: Mapped[str] = mapped_column(String(36))
    upstream: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp())


class MirrorTag(Base):
    """When a cached tag was last found to agree with its upstream: its ttl counts from here."""

    __tablename__ = "mirror_tag"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(String(150))
    checked_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class MirrorRepository(Base):
    """A repository the pull-through cache wrote, and when it was last pulled: what a
    retention rule counts from. Written with the cache's own writes and otherwise at most
    once per interval per repository and worker (app/mirror/pull.py), never on every pull.
    Only repositories with a row here are ever removed by retention."""

    __tablename__ = "mirror_repository"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True
    )
    pulled_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class UiSession(Base):
    """A web UI login (app/auth/sessions.py): the cookie carries a random id, the row only its
    sha256, so a leaked database gives no usable session."""

    __tablename__ = "ui_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(255))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp(), index=True)
