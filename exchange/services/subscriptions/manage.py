"""Subscriptions made, read, listed and cancelled; each change on the record with its audit record.

A consumer system subscribes for itself, to a resource its grant lets it read, for the grant's purpose,
naming granted items only; a source that cannot tell its changes is refused (FAILED_PRECONDITION). Who sees
which subscriptions follows the rights: a consumer its department's, an owner steward its resources'
subscribers, the share manager and auditors all of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from exchange import validation
from exchange.errors import FailedPrecondition, FieldViolation, NotFound, PermissionDenied
from exchange.models import Page, Principal, PrincipalKind, ResourceStatus
from exchange.paging import page_request
from exchange.services.auditing import change_record
from exchange.services.exchange.admit import MAX_FIELDS, MAX_FILTER_TEXT, MAX_FILTERS, typed_filters
from exchange.services.exchange.answers import Ask
from exchange.services.exchange.decide import denial
from exchange.services.subscriptions.terms import Terms, require_id
from exchange.store import Store
from exchange.store.subscriptions import Subscription, SubscriptionFilter, SubscriptionStatus
from policy import HUB_WIDE, Action, RightsPolicy

# A source that cannot tell its changes says so with this kind (adapters.base.Unsupported).
UNSUPPORTED = "BACKEND_MISMATCH"


@dataclass(frozen=True)
class Creation:
    """What a consumer system subscribes to; ``from_first``: every change the source holds, else from now."""

    ask: Ask
    from_first: bool = False


class SubscriptionService:
    def __init__(self, store: Store, policy: RightsPolicy, terms: Terms, *, clock: Callable[[], dt.datetime]) -> None:
        self._store = store
        self._policy = policy
        self._terms = terms
        self._clock = clock

    # Creating: the checks read the store (blocking); asking the source its position is awaited.

    def admit(self, actor: Principal, creation: Creation) -> Subscription:
        """The subscription to create, once the grants allow it (blocking); its source position still unknown."""
        if actor.ref.kind is not PrincipalKind.SYSTEM:
            raise PermissionDenied(
                "only registered systems subscribe to data; people use their department's system", "NOT_A_SYSTEM"
            )
        ask = creation.ask
        _validate(ask)
        resource = self._terms.entry(ask.resource_code)[0]
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            raise NotFound("resource", ask.resource_code)
        typed_filters(resource, ask)
        decision = self._terms.decide(actor.ref.code, actor.department_code, ask, consume=False)
        if not decision.allowed:
            raise denial(decision)
        if decision.verifying:
            raise FailedPrecondition(
                f"a subscription cannot filter on masked items ({', '.join(f for f, _ in decision.verifying)}): "
                "a masked item is only verified one lookup at a time; filter on other items or on none",
                ask.resource_code,
                kind="MASKED_FILTER",
            )
        now = self._clock()
        return Subscription(
            id=f"SB-{now:%Y%m%d}-{secrets.token_hex(6)}",
            resource_code=resource.spec.code,
            owner_department=resource.spec.department_code,
            consumer_department=actor.department_code,
            consumer_system=actor.ref.code,
            grant_id=decision.grant_id,
            purpose=ask.purpose,
            filters=dict(ask.filters),
            fields=ask.fields,
            created_by=str(actor.ref),
            created_at=now,
        )

    async def create(self, actor: Principal, creation: Creation) -> Subscription:
        sub = await asyncio.to_thread(self.admit, actor, creation)
        resource, binding, backend = await asyncio.to_thread(self._terms.source, sub.resource_code)
        request = self._terms.change_request(resource, binding, creation.ask, None, 1)
        try:
            position = await backend.changes(request)
        except FailedPrecondition as e:
            if e.kind != UNSUPPORTED:
                raise
            raise FailedPrecondition(
                f"resource {sub.resource_code} cannot be subscribed to: its provider does not tell its changes; "
                "read it by query",
                sub.resource_code,
                kind="NOT_SUBSCRIBABLE",
            ) from None
        sub = replace(sub, source_cursor="" if creation.from_first else position.cursor)
        record = change_record(
            actor, "subscription", "create", subject=sub.id, resource=sub.resource_code, purpose=sub.purpose,
            grant=sub.grant_id, reason="from the first change" if creation.from_first else "from now",
        )  # fmt: skip
        record = replace(record, fields=list(sub.fields))
        return await asyncio.to_thread(self._store.subscriptions.add, sub, audit=record)

    # Reading

    def get(self, actor: Principal, subscription_id: str) -> Subscription:
        self._require_reader(actor)  # the right first, before the request is read
        require_id(subscription_id)
        try:
            sub = self._store.subscriptions.get(subscription_id)
        except NotFound:
            if self._sees_everything(actor):  # who would see any subscription is told it does not exist
                raise
            sub = None  # anyone else is answered as for one it may not see
        if sub is None or not self._sees(actor, sub):
            raise PermissionDenied(
                f"{actor.ref} may not see subscription {subscription_id}: only its consumer department, the owner "
                "of its resource, the share manager and auditors do",
                reason="SUBSCRIPTION_READ_DENIED",
            )
        return sub

    def list(
        self, actor: Principal, size: int, token: str, resource_code: str, include_cancelled: bool
    ) -> Page[Subscription]:
        self._require_reader(actor)
        validation.validate_key("resource_code", resource_code, "resource", optional=True)
        f = SubscriptionFilter(resource_code=resource_code or None, include_cancelled=include_cancelled)
        if actor.ref.kind is PrincipalKind.SYSTEM:
            f = replace(f, consumer_department=actor.department_code)
        elif not self._sees_everything(actor):
            f = replace(f, visible_to=actor.department_code)
        page = page_request(size, token, dict(f.__dict__))
        return self._store.subscriptions.find(page, f)

    # Cancelling: the subscribing system, or a consumer of its department.

    def cancel(self, actor: Principal, subscription_id: str, reason: str) -> Subscription:
        if not self._may_cancel(actor, actor.department_code):  # the right first, before the request is read
            raise PermissionDenied(
                f"{actor.ref} may not cancel subscriptions: the subscribing system or a consumer of its department "
                "does (an owner suspends the grant instead)",
                reason="SUBSCRIPTION_CANCEL_DENIED",
            )
        require_id(subscription_id)
        out: list[FieldViolation] = []
        validation.check_text(out, "reason", reason, required=False, limit=validation.MAX_TEXT)
        validation.raise_if(out)
        sub = self.get(actor, subscription_id)
        mine = self._may_cancel(actor, sub.consumer_department) and (
            actor.ref.kind is PrincipalKind.PERSON or actor.ref.code == sub.consumer_system
        )
        if not mine:
            raise PermissionDenied(
                f"{actor.ref} may not cancel subscription {subscription_id}: its system or a consumer of "
                f"{sub.consumer_department} does (an owner suspends the grant instead)",
                reason="SUBSCRIPTION_CANCEL_DENIED",
            )
        if sub.status is not SubscriptionStatus.ACTIVE:
            raise FailedPrecondition(f"subscription {subscription_id} is {sub.status.value} already", subscription_id)
        record = change_record(
            actor, "subscription", "cancel", subject=sub.id, resource=sub.resource_code, grant=sub.grant_id,
            reason=reason,
        )  # fmt: skip
        return self._store.subscriptions.cancel(subscription_id, self._clock(), audit=record)

    def _may_cancel(self, actor: Principal, department: str) -> bool:
        if actor.ref.kind is PrincipalKind.SYSTEM:
            return actor.department_code == department
        return self._policy.allows(actor.ref, Action.APPLY_FOR_DATA, department)

    def _sees(self, actor: Principal, sub: Subscription) -> bool:
        if self._sees_everything(actor):
            return True
        if actor.ref.kind is PrincipalKind.SYSTEM:
            return actor.department_code == sub.consumer_department
        return actor.department_code in {sub.consumer_department, sub.owner_department} and self._party(actor)

    def _sees_everything(self, actor: Principal) -> bool:
        return self._policy.allows(actor.ref, Action.ISSUE_GRANT, HUB_WIDE) or self._policy.allows(
            actor.ref, Action.READ_AUDIT, HUB_WIDE
        )

    def _party(self, actor: Principal) -> bool:
        own = actor.department_code
        return any(self._policy.allows(actor.ref, a, own) for a in (Action.APPLY_FOR_DATA, Action.DECIDE_REQUEST))

    def _require_reader(self, actor: Principal) -> None:
        """Refuses a caller that takes part in no sharing: it reads no subscription at all."""
        if actor.ref.kind is not PrincipalKind.SYSTEM and not self._sees_everything(actor) and not self._party(actor):
            raise PermissionDenied(
                f"{actor.ref} may not read subscriptions: a consumer, an owner steward, the share manager or an "
                "auditor does",
                reason="SUBSCRIPTION_READ_DENIED",
            )


def _validate(ask: Ask) -> None:
    out: list[FieldViolation] = []
    validation.check_pattern(
        out, "resource_code", ask.resource_code, validation.RESOURCE_CODE, validation.RESOURCE_CODE_FORMAT
    )
    validation.check_text(out, "purpose", ask.purpose, required=True, limit=validation.MAX_NAME)
    if not ask.fields:
        out.append(FieldViolation("fields", "name the fields needed (minimum necessary: no wildcard)"))
    if len(ask.fields) > MAX_FIELDS or len(set(ask.fields)) != len(ask.fields):
        out.append(FieldViolation("fields", f"name each field once, at most {MAX_FIELDS}"))
    if len(ask.filters) > MAX_FILTERS:
        out.append(FieldViolation("filters", f"at most {MAX_FILTERS} filters"))
    for name, value in ask.filters.items():
        if len(value) > MAX_FILTER_TEXT or not value.isprintable():
            problem = f"must be printable text of at most {MAX_FILTER_TEXT} characters"
            out.append(FieldViolation(f"filters[{name[:40]}]", problem))
    validation.raise_if(out)
