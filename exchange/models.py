"""Domain models of the hub: plain, immutable values shared by every layer.

The gRPC messages in ``exchange.v1`` are the wire form of these; the store's
tables are their stored form. Enum values are the lower-case names used in
the store, in files and on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class AdministrativeLevel(StrEnum):
    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"


class Role(StrEnum):
    OPERATOR = "operator"
    OWNER_STEWARD = "owner_steward"
    CONSUMER = "consumer"
    SHARE_MANAGER = "share_manager"
    AUDITOR = "auditor"


class PrincipalKind(StrEnum):
    SYSTEM = "system"
    PERSON = "person"


class ShareType(StrEnum):
    UNCONDITIONAL = "unconditional"
    CONDITIONAL = "conditional"
    NOT_SHARED = "not_shared"


class ShareMethod(StrEnum):
    QUERY = "query"
    STREAM = "stream"
    DOCUMENT = "document"


class SensitivityGrade(StrEnum):
    GENERAL = "general"
    IMPORTANT = "important"
    CORE = "core"


class FieldType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    BYTES = "bytes"


class UpdateCycle(StrEnum):
    REAL_TIME = "real_time"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"
    IRREGULAR = "irregular"


class ResourceStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class ResourceChange(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    PUBLISHED = "published"
    SUSPENDED = "suspended"
    RETIRED = "retired"


@dataclass(frozen=True)
class Department:
    code: str
    name: str
    division_code: str
    level: AdministrativeLevel
    parent_code: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class System:
    code: str
    name: str
    department_code: str
    description: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class Person:
    username: str
    display_name: str
    department_code: str
    roles: frozenset[Role] = frozenset()
    created_at: datetime | None = None
    # A keyed hash of the person's identity number: equal for two registrations of one person. Never shown.
    identity_key: str = ""


@dataclass(frozen=True)
class PrincipalRef:
    """Names a principal: ``system/<code>`` or ``person/<username>``."""

    kind: PrincipalKind
    code: str

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.code}"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, as resolved from its client certificate."""

    ref: PrincipalRef
    display_name: str
    department_code: str
    roles: frozenset[Role] = frozenset()
    certificate_fingerprint: str = ""
    # For a person: the keyed hash of the identity number (see Person); "" when not known.
    identity_key: str = ""
    # For a system: who had its calling certificate issued (the person answerable for its key), "" if not known.
    key_holder: str = ""


@dataclass(frozen=True)
class CertificateRecord:
    serial_number: str
    fingerprint_sha256: str
    principal: PrincipalRef
    not_before: datetime
    not_after: datetime
    pem: str
    revoked_at: datetime | None = None
    revoke_reason: str = ""
    # The holder's certificate this one renewed; revoking that one revokes this one too.
    renewed_from: str = ""
    # The CA certificate that signed it (filled in when shown; not stored).
    issuer_fingerprint: str = ""
    # Who had it issued, e.g. "person/ga-steward" ("" before this was kept); a renewal keeps its predecessor's.
    issued_by: str = ""


@dataclass(frozen=True)
class DataItem:
    name: str
    title: str
    type: FieldType
    description: str = ""
    sensitivity: SensitivityGrade = SensitivityGrade.GENERAL
    personal_information: bool = False
    filterable: bool = False  # consumers may look records up by it (查询条件)


@dataclass(frozen=True)
class ResourceSpec:
    """The part of a catalog entry its owner writes."""

    code: str
    name: str
    department_code: str
    data_items: tuple[DataItem, ...]
    share_type: ShareType
    share_method: ShareMethod
    update_cycle: UpdateCycle
    summary: str = ""
    classification: str = ""
    format: str = ""
    share_conditions: str = ""
    legal_basis: str = ""
    open_to_public: bool = False
    open_conditions: str = ""
    related_resource_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resource:
    """A catalog entry as stored: the owner's spec plus the hub's bookkeeping."""

    spec: ResourceSpec
    status: ResourceStatus
    version: int
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None = None
    # Its binding declares a change source (``Binding.subscribable``): it can be subscribed to.
    subscribable: bool = False


@dataclass(frozen=True)
class ResourceVersion:
    version: int
    change: ResourceChange
    actor: PrincipalRef
    reason: str
    changed_at: datetime
    resource: Resource


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, and the token for the next (empty on the last page)."""

    items: list[T] = field(default_factory=list)
    next_page_token: str = ""


@dataclass(frozen=True)
class Tally:
    """How many things await an answer, how many are due soon (not yet overdue), and how many are overdue."""

    count: int = 0
    due_soon: int = 0
    overdue: int = 0


class ShareRequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    GRANTED = "granted"
    REFUSED = "refused"
    DISPUTED = "disputed"
    REFUSAL_UPHELD = "refusal_upheld"


class MaskKind(StrEnum):
    NONE = "none"
    ID_NUMBER = "id_number"
    NAME = "name"
    PHONE = "phone"
    FULL = "full"


class GrantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


@dataclass(frozen=True)
class ShareEvent:
    """One step of a request's or grant's life: what, who, when, why."""

    action: str
    actor: PrincipalRef
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class Application:
    """What a consumer asks for: the resource, the matter and the minimum it needs."""

    resource_code: str
    consumer_department_code: str
    system_codes: tuple[str, ...]
    purpose: str
    legal_basis: str
    fields: tuple[str, ...]
    start: date
    end: date
    expected_daily_calls: int


@dataclass(frozen=True)
class CrossHubLink:
    """How a share request crosses hubs (see the ShareRequest.cross_hub field of the contract).

    At the consumer's hub: ``home_hub`` and ``home_request_id``, ``submission`` "waiting" or "submitted" and the
    last ``problem``, and the home grant's ``daily_quota`` and state there as last read back (``grant_status``,
    with the reason and time of its last suspension, resumption or revocation), and a dispute of the home's
    refusal: ``dispute`` "" (none), "waiting" (to be submitted), "submitted" or "refused" (not taken, with the
    ``dispute_problem`` saying why; while waiting, the last problem met on the way). At the home hub:
    ``consumer_hub`` and its request id.
    """

    home_hub: str = ""
    home_request_id: str = ""
    consumer_hub: str = ""
    consumer_request_id: str = ""
    submission: str = ""
    problem: str = ""
    daily_quota: int = 0
    grant_status: GrantStatus | None = None
    grant_reason: str = ""
    grant_changed_at: datetime | None = None
    dispute: str = ""
    dispute_problem: str = ""


@dataclass(frozen=True)
class ShareRequest:
    id: str
    application: Application
    status: ShareRequestStatus
    applicant: PrincipalRef
    created_at: datetime
    due: date
    approved_fields: tuple[str, ...] = ()
    approved_end: date | None = None
    masks: tuple[tuple[str, MaskKind], ...] = ()
    decision_reason: str = ""
    grant_id: str = ""
    history: tuple[ShareEvent, ...] = ()
    # Masked items the owner lets the consumer filter on: a bounded verification of a value it holds.
    verify_masked: tuple[str, ...] = ()
    cross_hub: CrossHubLink | None = None


def home_grant_expired(r: ShareRequest, today: date) -> bool:
    """At the consumer's hub: a request homed elsewhere whose grant's end date has passed (as the home's policy
    has it, the grant is refused from the day after its end)."""
    link = r.cross_hub
    live = link is not None and link.grant_status in (GrantStatus.ACTIVE, GrantStatus.SUSPENDED)
    return live and r.approved_end is not None and r.approved_end < today


@dataclass(frozen=True)
class Grant:
    id: str
    request_id: str
    resource_code: str
    consumer_department_code: str
    system_codes: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    legal_basis: str
    start: date
    end: date
    daily_quota: int
    rate_per_second: int
    masks: tuple[tuple[str, MaskKind], ...]
    status: GrantStatus
    issued_at: datetime
    history: tuple[ShareEvent, ...] = ()
    # Masked items that may be used as filters (a bounded verification); any other masked item may not.
    verify_masked: tuple[str, ...] = ()
    # Today's use, shown to those who may suspend the grant (its owner's stewards, the share manager).
    usage: GrantUsage | None = None
    # The hub the consumer department is at, when it applied from another hub ("" for this hub's own).
    consumer_hub: str = ""


@dataclass(frozen=True)
class GrantUsage:
    """One day's use of a grant, hub-wide: calls counted against its quota, and masked-item verifications.

    ``calls`` counts the blocks of quota that hub processes leased, so it may run ahead of the calls made.
    """

    day: date
    calls: int = 0
    verifications: int = 0
    misses: int = 0
    refused: int = 0
    miss_allowance: int = 0


class BackendKind(StrEnum):
    SQL = "sql"
    GRPC = "grpc"
    HTTP = "http"
    FILES = "files"


# The value of the ``changes`` option that makes a file store a change source.
NEW_FILES = "new files"


def binding_is_subscribable(kind: BackendKind | str, options: Mapping[str, object]) -> bool:
    """``Binding.subscribable`` for a binding's kind and options as stored."""
    if kind == BackendKind.SQL:
        return bool(options.get("change_column"))
    if kind == BackendKind.GRPC:
        return options.get("changes") in (True, "true")
    if kind == BackendKind.FILES:
        return options.get("changes") == NEW_FILES
    return False


@dataclass(frozen=True)
class Binding:
    """Where the hub fetches a resource from: one backend and its options.

    ``options`` are the backend's own settings (see ``adapters``): sql {url, table, columns,
    change_column, change_key, change_settle_seconds}, grpc {target, system_code, changes}, http {url,
    fields, records_key, parameters}, files {root, name_template, media_type, changes}.
    Values are strings or string-to-string mappings.
    """

    resource_code: str
    kind: BackendKind
    options: dict[str, object]
    timeout_seconds: float = 0.0
    max_rows: int = 0
    version: int = 0

    @property
    def subscribable(self) -> bool:
        """Whether the binding declares a change source, so the resource can be subscribed to.

        sql: a ``change_column``; grpc: ``changes`` true; files: ``changes = "new files"``. An
        HTTP/JSON endpoint cannot tell its changes.
        """
        return binding_is_subscribable(self.kind, self.options)
