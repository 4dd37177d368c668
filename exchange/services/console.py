"""Signing people in to the web console: one-time links, sessions bound to a certificate, their ends.

A session is always tied to the person's hub certificate, however it was opened: with the certificate
itself (mutual TLS on the console's port) or with a link asked for over gRPC with that certificate. On
every request the certificate is looked up again, so revoking it (or its expiry) ends the session; a
role held at sign-in and since removed ends it too. Systems cannot sign in. Signing in and out are
audit records written with the session's own change; refused sign-ins are recorded by the caller (the
console), through the same refusal log as refused gRPC calls.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from exchange import errors
from exchange.models import Principal, PrincipalKind
from exchange.services.auditing import change_record
from exchange.store.console import ConsoleStore, Link, SessionRecord

# A session's last-seen time is written at most this often (each request would otherwise be a write).
TOUCH_EVERY = dt.timedelta(seconds=30)


class Authenticator(Protocol):
    def authenticate(self, fingerprint: str) -> Principal | None: ...


@dataclass(frozen=True)
class Lifetimes:
    """How long links and sessions last."""

    link: dt.timedelta = dt.timedelta(minutes=5)
    idle: dt.timedelta = dt.timedelta(minutes=30)
    absolute: dt.timedelta = dt.timedelta(hours=8)


@dataclass(frozen=True)
class Opened:
    """A new session: the secret for the browser's cookie (never stored) and what was stored."""

    secret: str
    record: SessionRecord
    principal: Principal


@dataclass(frozen=True)
class Resumed:
    """The person behind a live session, as the registry knows them now."""

    principal: Principal
    record: SessionRecord


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _refused(message: str, reason: str) -> errors.PermissionDenied:
    return errors.PermissionDenied(message, reason=reason)


class ConsoleAccess:
    """Issues sign-in links, opens, resumes and ends console sessions."""

    def __init__(self, store: ConsoleStore, auth: Authenticator, lifetimes: Lifetimes) -> None:
        self._store = store
        self._auth = auth
        self.lifetimes = lifetimes

    def create_link(self, actor: Principal) -> tuple[str, dt.datetime]:
        """A one-time sign-in link's secret for ``actor`` (a person), and when it expires."""
        _require_person(actor)
        if not actor.certificate_fingerprint:
            raise errors.FailedPrecondition(
                f"{actor.ref} called without a certificate; a sign-in link is bound to one", kind="CERTIFICATE"
            )
        secret = secrets.token_urlsafe(32)
        now = _now()
        expires = now + self.lifetimes.link
        record = change_record(
            actor, "console", "sign_in_link", subject=str(actor.ref), reason=f"until {expires:%H:%M}Z"
        )
        self._store.add_link(
            _hash(secret), Link(actor.ref.code, actor.certificate_fingerprint, expires), now, audit=record
        )
        return secret, expires

    def open_with_link(self, secret: str) -> Opened:
        """Opens a session with a link's secret; the link cannot be used again."""
        if not secret or len(secret) > 128:
            raise _refused(
                "this sign-in link is not valid: ask for a new one with `exchange console login`", "LINK_UNKNOWN"
            )
        link, why = self._store.use_link(_hash(secret), _now())
        if link is None:
            raise _refused(_LINK_REFUSALS[why], f"LINK_{why.upper()}")
        principal = self._auth.authenticate(link.fingerprint)
        if principal is None or principal.ref.code != link.username or principal.ref.kind is not PrincipalKind.PERSON:
            raise _refused(
                "the certificate this link was made with has been revoked or has expired; sign in again",
                "CERTIFICATE_NOT_VALID",
            )
        return self._open(principal, "link")

    def open_with_certificate(self, fingerprint: str | None) -> Opened:
        """Opens a session for the holder of the certificate the browser presented."""
        if not fingerprint:
            raise errors.Unauthenticated(
                "the browser presented no certificate: import yours (`exchange cert export`) or use a sign-in link"
            )
        principal = self._auth.authenticate(fingerprint)
        if principal is None:
            raise errors.Unauthenticated(
                "the certificate the browser presented is not registered, has expired or has been revoked"
            )
        _require_person(principal)
        return self._open(principal, "certificate")

    def _open(self, principal: Principal, method: str) -> Opened:
        secret = secrets.token_urlsafe(32)
        now = _now()
        record = SessionRecord(
            secret_hash=_hash(secret),
            username=principal.ref.code,
            fingerprint=principal.certificate_fingerprint,
            roles=frozenset(r.value for r in principal.roles),
            method=method,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            seen_at=now,
            expires_at=now + self.lifetimes.absolute,
            ended_at=None,
        )
        audit = change_record(principal, "console", "sign_in", subject=str(principal.ref), reason=method)
        self._store.add_session(record, audit=audit)
        return Opened(secret, record, principal)

    def resume(self, secret: str, presented: str | None) -> Resumed:
        """The person behind a session cookie, checked now: live session, valid certificate, roles kept.

        ``presented`` is the fingerprint of a certificate the browser presented on this connection, if any;
        it must be the session's. A session found ended for any reason is ended in the store.
        """
        if not secret or len(secret) > 128:
            raise errors.Unauthenticated("not signed in")
        record = self._store.get_session(_hash(secret))
        if record is None or record.ended_at is not None:
            raise errors.Unauthenticated("not signed in, or signed out")
        now = _now()
        why = self._why_over(record, presented, now)
        principal = None if why else self._auth.authenticate(record.fingerprint)
        if not why and (principal is None or principal.ref.code != record.username):
            why = "your certificate has been revoked or has expired"
        if not why and principal is not None and not record.roles <= {r.value for r in principal.roles}:
            why = "your roles have changed since you signed in"
        if why or principal is None:
            self._store.expire(record.secret_hash, now)
            raise errors.Unauthenticated(f"your session has ended: {why}; sign in again")
        if now - record.seen_at >= TOUCH_EVERY:
            self._store.touch(record.secret_hash, now)
        return Resumed(principal, record)

    def _why_over(self, record: SessionRecord, presented: str | None, now: dt.datetime) -> str:
        if now >= record.expires_at:
            return "it reached its longest life"
        if now - record.seen_at >= self.lifetimes.idle:
            return "it was idle too long"
        if presented and presented != record.fingerprint:
            return "the browser now presents another certificate"
        return ""

    def close(self, secret: str, principal: Principal) -> None:
        """Signs out: ends the session, with its audit record."""
        audit = change_record(principal, "console", "sign_out", subject=str(principal.ref))
        self._store.end(_hash(secret), _now(), audit=audit)


_LINK_REFUSALS = {
    "unknown": "this sign-in link is not valid: ask for a new one with `exchange console login`",
    "used": "this sign-in link has already been used; each opens one session: ask for a new one",
    "expired": "this sign-in link has expired: ask for a new one with `exchange console login`",
}


def _require_person(actor: Principal) -> None:
    if actor.ref.kind is not PrincipalKind.PERSON:
        raise _refused(
            f"{actor.ref} is a system: the console is for people; systems call the hub over gRPC",
            "SYSTEM_SIGN_IN_DENIED",
        )
