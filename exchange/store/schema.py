"""The store's tables (SQLAlchemy 2.x), shared by SQLite and PostgreSQL.

Migrations in ``migrations/`` create exactly this schema; a test compares
the two on both backends. Enum columns hold the lower-case values of the
enums in ``exchange.models``; times are stored in UTC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC time on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DepartmentRow(Base):
    __tablename__ = "departments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(18), unique=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    division_code: Mapped[str] = mapped_column(String(9))
    level: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    parent: Mapped[DepartmentRow | None] = relationship(remote_side=[id], lazy="joined")


class SystemRow(Base):
    __tablename__ = "systems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    department: Mapped[DepartmentRow] = relationship(lazy="joined")
    __table_args__ = (UniqueConstraint("department_id", "name", name="uq_systems_department_id_name"),)


class PersonRow(Base):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    identity_key: Mapped[str | None] = mapped_column(String(64), index=True)

    department: Mapped[DepartmentRow] = relationship(lazy="joined")
    roles: Mapped[list[PersonRoleRow]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="PersonRoleRow.role"
    )


class PersonRoleRow(Base):
    __tablename__ = "person_roles"

    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)


class CertificateRow(Base):
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial_number: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    principal_kind: Mapped[str] = mapped_column(String(16))
    principal_code: Mapped[str] = mapped_column(String(63), index=True)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    pem: Mapped[str] = mapped_column(Text)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoke_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    renewed_from: Mapped[str | None] = mapped_column(String(64), index=True)
    # Who had the hub certify the key ("person/<username>"): for a system, the person answerable for its key.
    issued_by: Mapped[str] = mapped_column(String(80), default="", server_default="")


class ResourceRow(Base):
    __tablename__ = "resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    classification: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(Text, default="")
    share_type: Mapped[str] = mapped_column(String(16), index=True)
    share_conditions: Mapped[str] = mapped_column(Text, default="")
    legal_basis: Mapped[str] = mapped_column(Text, default="")
    share_method: Mapped[str] = mapped_column(String(16))
    open_to_public: Mapped[bool] = mapped_column(Boolean, default=False)
    open_conditions: Mapped[str] = mapped_column(Text, default="")
    update_cycle: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    department: Mapped[DepartmentRow] = relationship(lazy="joined")
    items: Mapped[list[DataItemRow]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="DataItemRow.position"
    )
    related: Mapped[list[RelatedResourceRow]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="RelatedResourceRow.position"
    )
    # Read only: whether the binding declares a change source (the catalog's "subscribable").
    binding: Mapped[BindingRow | None] = relationship(lazy="selectin", viewonly=True)
    __table_args__ = (UniqueConstraint("department_id", "name", name="uq_resources_department_id_name"),)


class DataItemRow(Base):
    __tablename__ = "resource_items"

    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    type: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    sensitivity: Mapped[str] = mapped_column(String(16))
    personal_information: Mapped[bool] = mapped_column(Boolean)
    filterable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class BindingRow(Base):
    """Where the hub fetches a resource from; one per resource, replaced as a whole."""

    __tablename__ = "resource_bindings"

    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    options: Mapped[dict[str, object]] = mapped_column(JSON)
    timeout_seconds: Mapped[float] = mapped_column(Float)
    max_rows: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(80))


class RelatedResourceRow(Base):
    __tablename__ = "resource_relations"

    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    related_code: Mapped[str] = mapped_column(String(32))


class ResourceVersionRow(Base):
    """An entry's state after each change: never updated, never deleted."""

    __tablename__ = "resource_versions"

    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    change: Mapped[str] = mapped_column(String(16))
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_code: Mapped[str] = mapped_column(String(63))
    reason: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    snapshot: Mapped[dict[str, object]] = mapped_column(JSON)


class ShareRequestRow(Base):
    """A consumer department's application for one resource, and its decisions."""

    __tablename__ = "share_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), index=True)
    consumer_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    system_codes: Mapped[list[str]] = mapped_column(JSON)
    purpose: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    fields: Mapped[list[str]] = mapped_column(JSON)
    start_date: Mapped[dt.date] = mapped_column(Date)
    end_date: Mapped[dt.date] = mapped_column(Date)
    expected_daily_calls: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    applicant_kind: Mapped[str] = mapped_column(String(16))
    applicant_code: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    due_date: Mapped[dt.date] = mapped_column(Date, index=True)
    approved_fields: Mapped[list[str]] = mapped_column(JSON)
    approved_end: Mapped[dt.date | None] = mapped_column(Date)
    masks: Mapped[list[list[str]]] = mapped_column(JSON)
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    grant_id: Mapped[str | None] = mapped_column(String(32))
    verify_masked: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))

    resource: Mapped[ResourceRow] = relationship(lazy="joined")
    consumer: Mapped[DepartmentRow] = relationship(lazy="joined")


class GrantRow(Base):
    """The right of a consumer department's systems to read granted fields of one resource."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("share_requests.id"), unique=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), index=True)
    consumer_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    system_codes: Mapped[list[str]] = mapped_column(JSON)
    fields: Mapped[list[str]] = mapped_column(JSON)
    purpose: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    start_date: Mapped[dt.date] = mapped_column(Date)
    end_date: Mapped[dt.date] = mapped_column(Date)
    daily_quota: Mapped[int] = mapped_column(BigInteger)
    rate_per_second: Mapped[int] = mapped_column(Integer)
    masks: Mapped[list[list[str]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    verify_masked: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))

    resource: Mapped[ResourceRow] = relationship(lazy="joined")
    consumer: Mapped[DepartmentRow] = relationship(lazy="joined")


class QuotaLeaseRow(Base):
    """Calls of a grant's daily quota handed out to hub processes (in blocks) on one UTC day.

    A block counts as used once leased; a process gives back what it did not use when it stops cleanly,
    so a crash can only lower what is left (it fails closed).
    """

    __tablename__ = "quota_leases"

    grant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    leased: Mapped[int] = mapped_column(BigInteger)


class QuotaHolderRow(Base):
    """A hub process that parks quota in the store; it renews ``expires`` (the database's clock) while it lives.

    Once ``expires`` has passed, any process returns the holder's parked calls to the pool.
    """

    __tablename__ = "quota_holders"

    holder: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires: Mapped[dt.datetime] = mapped_column(UTCDateTime(timezone=True))


class QuotaHoldRow(Base):
    """Calls of a grant's day leased by a holder and parked: promised unused until it takes them back."""

    __tablename__ = "quota_holds"

    holder: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    parked: Mapped[int] = mapped_column(BigInteger)


class MaskedFilterCountRow(Base):
    """Lookups filtered on a masked item on one UTC day, by scope: a grant, a consumer system, or a
    masked pattern (a keyed hash of the value's visible parts; the value itself is never stored)."""

    __tablename__ = "masked_filter_counts"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    lookups: Mapped[int] = mapped_column(BigInteger)
    misses: Mapped[int] = mapped_column(BigInteger)
    refused: Mapped[int] = mapped_column(BigInteger)


class ShareEventRow(Base):
    """One step of a request or grant: appended, never updated or deleted."""

    __tablename__ = "share_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str | None] = mapped_column(ForeignKey("share_requests.id"), index=True)
    grant_id: Mapped[str | None] = mapped_column(ForeignKey("grants.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_code: Mapped[str] = mapped_column(String(63))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")


class AuditStagedRow(Base):
    """An audit record committed with the change it records, waiting for the integrator to give it a place."""

    __tablename__ = "audit_staged"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    record: Mapped[str] = mapped_column(Text)
    staged_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # HMAC of the record under the log's seal key (audit.seal): a row the hub did not write has none that fits.
    mac: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditEntryRow(Base):
    """The audit log: entry ``seq`` is leaf ``seq`` of the RFC 9162 tree. Never updated, never reordered."""

    __tablename__ = "audit_entries"
    # Searches filter on these and page in seq order: (column, seq) lets a page be read in order and stop
    # once full, instead of collecting every match and sorting it.
    __table_args__ = (
        Index("ix_audit_entries_actor_seq", "actor", "seq"),
        Index("ix_audit_entries_actor_department_seq", "actor_department", "seq"),
        Index("ix_audit_entries_resource_seq", "resource", "seq"),
        Index("ix_audit_entries_outcome_seq", "outcome", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # The canonical record; None once its retention ended (the leaf hash stays, so proofs still hold).
    record: Mapped[str | None] = mapped_column(Text)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(80))
    actor_department: Mapped[str] = mapped_column(String(18))
    resource: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    exchange_id: Mapped[str] = mapped_column(String(64), index=True)
    # HMAC of (seq, leaf hash) under the log's seal key; None only for entries from before seals, until checked.
    mac: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditHeadRow(Base):
    """The log's size and last leaf as the integrator left them, sealed: entries cut off the end show."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditSubjectRow(Base):
    """The keyed hashes of the data subjects an entry concerns, for "who looked at this record"."""

    __tablename__ = "audit_subjects"

    seq: Mapped[int] = mapped_column(ForeignKey("audit_entries.seq"), primary_key=True)
    subject_hash: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class AuditNodeRow(Base):
    """A kept subtree hash of the audit tree (2**level leaves from index * 2**level): derived, never edited.

    Hub processes keep only the tree's right edge in memory and read these for roots and proofs.
    """

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpointRow(Base):
    """A signed tree head (C2SP tlog-checkpoint in a signed note)."""

    __tablename__ = "audit_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditPruningRow(Base):
    """A signed pruning statement (audit.pruning): the records of entries [0, up_to) were dropped."""

    __tablename__ = "audit_prunings"

    up_to: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    made: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(Text)


class ConsoleLinkRow(Base):
    """A one-time sign-in link for the web console, asked for over gRPC by a person with their certificate.

    Only the SHA-256 of the link's secret is kept: the store alone cannot open a session.
    """

    __tablename__ = "console_links"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ConsoleSessionRow(Base):
    """A person's web console session, bound to the certificate it was opened with.

    The cookie holds the session's secret; only its SHA-256 is kept. ``roles`` are those held when it opened:
    a session whose person has since lost one ends.
    """

    __tablename__ = "console_sessions"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    roles: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(16))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ObjectionRow(Base):
    """A consumer's objection to shared data (疑义、错误), and the owning department's answer.

    Only a digest of the values the consumer received is kept, never the values themselves.
    """

    __tablename__ = "objections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_code: Mapped[str] = mapped_column(String(32), index=True)
    owner_department: Mapped[str] = mapped_column(String(18), index=True)
    exchange_id: Mapped[str] = mapped_column(String(64), default="")
    fields: Mapped[list[str]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    received_sha256: Mapped[str] = mapped_column(String(64), default="")
    raised_by: Mapped[str] = mapped_column(String(80))
    raiser_department: Mapped[str] = mapped_column(String(18), index=True)
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    due_date: Mapped[dt.date] = mapped_column(Date, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    answer_kind: Mapped[str] = mapped_column(String(16), default="")
    answer_text: Mapped[str] = mapped_column(Text, default="")
    effective_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    answered_by: Mapped[str] = mapped_column(String(80), default="")
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    escalated_by: Mapped[str] = mapped_column(String(80), default="")
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    escalation_reason: Mapped[str] = mapped_column(Text, default="")


class WitnessSeenRow(Base):
    """What this hub, as a witness, last cosigned for a peer log: one row per origin, advanced by compare-and-set."""

    __tablename__ = "witness_seen"

    origin: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class WitnessForkRow(Base):
    """Evidence of a fork a witness refused: two checkpoints one origin signed that cannot both be true."""

    __tablename__ = "witness_forks"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    origin: Mapped[str] = mapped_column(String(255), index=True)
    seen_note: Mapped[str] = mapped_column(Text)
    offered_note: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class WitnessCosignatureRow(Base):
    """A cosignature a witness gave this hub's checkpoint of ``size``: the newest per witness and size is kept."""

    __tablename__ = "witness_cosignatures"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    witness: Mapped[str] = mapped_column(String(255), primary_key=True)
    line: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SubscriptionRow(Base):
    """A consumer system's subscription to a resource's changes, and where its delivery stands.

    Sequence numbers count the changes taken from the source (1, 2, 3...); ``source_cursor`` is the source's
    position after the last of them (None until known). Two leases say who works on it: the one follower
    sending its changes (reader), and the one hub process polling its source (poller).
    """

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_code: Mapped[str] = mapped_column(String(32), index=True)
    owner_department: Mapped[str] = mapped_column(String(18), index=True)
    consumer_department: Mapped[str] = mapped_column(String(18), index=True)
    consumer_system: Mapped[str] = mapped_column(String(80))
    grant_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(Text)
    filters: Mapped[dict[str, str]] = mapped_column(JSON)
    fields: Mapped[list[str]] = mapped_column(JSON)
    source_cursor: Mapped[str | None] = mapped_column(Text)
    next_sequence: Mapped[int] = mapped_column(BigInteger, default=1)
    acknowledged_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_through: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reader_holder: Mapped[str] = mapped_column(String(80), default="")
    reader_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    poll_holder: Mapped[str] = mapped_column(String(80), default="")
    poll_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class PendingChangeRow(Base):
    """A change taken from the source for a subscription and not yet acknowledged: its record, already shaped
    (granted items only, masked), as the protobuf ``Record`` bytes it is sent as."""

    __tablename__ = "subscription_changes"

    subscription_id: Mapped[str] = mapped_column(String(32), ForeignKey("subscriptions.id"), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    change_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # Keyed hashes of the data subjects the change is about (for the audit record of its delivery).
    subjects: Mapped[list[str]] = mapped_column(JSON)
    # The masks the record was shaped with ("field=kind"): delivery refuses one masked less than the grant now says.
    masks: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


# Federation (docs/federation.md): peer hubs, the catalog offers this hub makes them, the entries they offer.
_SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")  # SQLite numbers only INTEGER keys by itself


class PeerRow(Base):
    """A hub this hub's operator registered as a peer, and the peering's state as this hub holds it."""

    __tablename__ = "peers"

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(16))
    relation: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(255))
    ca_pem: Mapped[str] = mapped_column(Text)
    ca_fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    offer_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sync_problem: Mapped[str] = mapped_column(Text, default="")
    log_key: Mapped[str] = mapped_column(Text, default="")
    witness_key: Mapped[str] = mapped_column(Text, default="")


class CatalogOfferRow(Base):
    """One state of a catalog entry as this hub offers it to its peers; appended, never changed.

    ``via_peer`` is "" for this hub's own entries, else the peer a remote entry came from (it is offered to
    every other peer, never back to that one).
    """

    __tablename__ = "catalog_offers"

    sequence: Mapped[int] = mapped_column(_SEQUENCE, primary_key=True, autoincrement=True)
    resource_code: Mapped[str] = mapped_column(String(32), index=True)
    home_hub_code: Mapped[str] = mapped_column(String(6))
    home_hub_name: Mapped[str] = mapped_column(String(200))
    home_level: Mapped[str] = mapped_column(String(16))
    via_peer: Mapped[str] = mapped_column(String(6), default="")
    snapshot: Mapped[dict[str, object]] = mapped_column(JSON)
    offered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The home hub's audit log verifier key, relayed with its name ("" for this hub's own entries: its own key).
    home_log_key: Mapped[str] = mapped_column(Text, default="")
    # The owning department's name as its home hub registers it (this hub's for its own entries), relayed.
    department_name: Mapped[str] = mapped_column(String(200), default="", server_default="")


class RemoteEntryRow(Base):
    """A catalog entry homed at another hub, as the peer ``via_peer`` last offered it; read-only here."""

    __tablename__ = "remote_entries"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    department_code: Mapped[str] = mapped_column(String(18), index=True)
    share_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    # " name title name title ... ": the data items, for the field_name filter
    item_names: Mapped[str] = mapped_column(Text, default="")
    home_hub_code: Mapped[str] = mapped_column(String(6), index=True)
    home_hub_name: Mapped[str] = mapped_column(String(200))
    home_level: Mapped[str] = mapped_column(String(16), index=True)
    via_peer: Mapped[str] = mapped_column(String(6), index=True)
    offer_sequence: Mapped[int] = mapped_column(BigInteger)
    snapshot: Mapped[dict[str, object]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The home hub's audit log verifier key: answers of exchanges forwarded to the home are checked with it.
    home_log_key: Mapped[str] = mapped_column(Text, default="")
    # The owning department's name as its home hub registers it (shown and searched: not in this registry).
    department_name: Mapped[str] = mapped_column(String(200), default="", server_default="")


# Share requests across hubs (docs/federation.md, "Applying across hubs").


class OutgoingApplicationRow(Base):
    """A share request of this hub's department for a resource homed at another hub: kept here, decided there.

    ``submission`` is "waiting" until the home (through ``via_peer``) accepted it, then "submitted";
    ``home_sequence`` is the home's change sequence of the state last read back. Once granted, ``grant_status``
    is the grant's state at home ("" before), with the reason and time of its last change there. ``dispute`` is
    "" until its department disputes a refusal at home, then "waiting" (to be submitted there), "submitted" or
    "refused" (the home, or a hub on the way, would not take it: ``dispute_problem`` says why).
    """

    __tablename__ = "applications_out"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_code: Mapped[str] = mapped_column(String(32), index=True)
    home_hub_code: Mapped[str] = mapped_column(String(6), index=True)
    via_peer: Mapped[str] = mapped_column(String(6))
    consumer_department_code: Mapped[str] = mapped_column(String(18), index=True)
    application: Mapped[dict[str, object]] = mapped_column(JSON)
    applicant: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), index=True)
    submission: Mapped[str] = mapped_column(String(16), index=True)
    problem: Mapped[str] = mapped_column(Text, default="")
    home_request_id: Mapped[str] = mapped_column(String(32), default="")
    home_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    due_date: Mapped[dt.date] = mapped_column(Date)
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    grant_id: Mapped[str] = mapped_column(String(32), default="")
    approved_fields: Mapped[list[str]] = mapped_column(JSON)
    approved_end: Mapped[dt.date | None] = mapped_column(Date)
    masks: Mapped[list[list[str]]] = mapped_column(JSON)
    daily_quota: Mapped[int] = mapped_column(BigInteger, default=0)
    history: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    grant_status: Mapped[str] = mapped_column(String(16), default="", server_default="")
    grant_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    grant_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    dispute: Mapped[str] = mapped_column(String(16), default="", server_default="", index=True)
    dispute_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    disputer: Mapped[str] = mapped_column(String(80), default="", server_default="")
    disputed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    dispute_problem: Mapped[str] = mapped_column(Text, default="", server_default="")


class IncomingApplicationRow(Base):
    """A share request at this (home) hub from a department at another hub: which hub, its id there, and the
    adjacent peer it came through."""

    __tablename__ = "applications_in"

    request_id: Mapped[str] = mapped_column(ForeignKey("share_requests.id"), primary_key=True)
    origin_hub_code: Mapped[str] = mapped_column(String(6), index=True)
    origin_request_id: Mapped[str] = mapped_column(String(32))
    via_peer: Mapped[str] = mapped_column(String(6))
    __table_args__ = (
        UniqueConstraint("origin_hub_code", "origin_request_id", name="uq_applications_in_origin_hub_code"),
    )


class ForeignDepartmentRow(Base):
    """A department of another hub known here because it applied for this hub's data (its grants name it)."""

    __tablename__ = "foreign_departments"

    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), primary_key=True)
    hub_code: Mapped[str] = mapped_column(String(6))


class ForwardedSeenRow(Base):
    """The ids of forwarded statements (exchanges and applications across hubs) this hub accepted, kept until
    they expire: a replay is refused."""

    __tablename__ = "forwarded_seen"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
