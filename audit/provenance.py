"""Provenance statements (互认): the hub's signed word that it returned this data to this consumer.

A statement names the exchange, the resource and its owner, the consumer, the time, what was
returned (records or a document), how much, and the SHA-256 of it: for records, of their canonical
lines (``exchange.values.RowsDigest``); for a document, of its bytes. The hub signs it as a signed
note (C2SP signed-note, Ed25519) with its audit key, whose verifier key auditors already hold, so
a third party can check both the signature and that the data in hand is what the hub returned.
The first line keeps a statement from ever being read as a checkpoint of the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.note import NoteError, Signer, Verifier, open_note

HEADER = "exchange-provenance/v1"
_KEYS = ("exchange", "time", "resource", "owner", "consumer", "consumer_department", "kind", "count", "sha256")


class ProvenanceError(ValueError):
    """A statement that does not verify, is malformed, or does not match the data."""


@dataclass(frozen=True)
class Statement:
    exchange: str
    time: str  # RFC 3339 UTC
    resource: str
    owner: str  # department code
    consumer: str  # "system/<code>"
    consumer_department: str
    kind: str  # "records" or "document"
    count: int  # records, or bytes of the document
    sha256: str  # hex

    def text(self) -> str:
        lines = [HEADER, *(f"{k} {getattr(self, k)}" for k in _KEYS)]
        for line in lines:
            if "\n" in line or not line.isprintable():
                raise ProvenanceError("a statement's values are single printable lines")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Statement:
        lines = text.rstrip("\n").split("\n")
        if not lines or lines[0] != HEADER or len(lines) != len(_KEYS) + 1:
            raise ProvenanceError(f"not a {HEADER} statement")
        values: dict[str, str] = {}
        for key, line in zip(_KEYS, lines[1:], strict=True):
            name, _, value = line.partition(" ")
            if name != key:
                raise ProvenanceError(f"expected {key!r}, found {name[:20]!r}")
            values[key] = value
        try:
            count = int(values.pop("count"))
        except ValueError:
            raise ProvenanceError("count is not a number") from None
        return cls(count=count, **values)


def sign(signer: Signer, statement: Statement) -> str:
    """The signed note of ``statement``."""
    return signer.sign(statement.text())


def verify(note: str, verifier: Verifier, sha256: str | None = None) -> Statement:
    """The statement in ``note`` if ``verifier`` signed it and, when given, ``sha256`` is its digest."""
    try:
        statement = Statement.parse(open_note(note, verifier))
    except NoteError as e:
        raise ProvenanceError(str(e)) from None
    if sha256 is not None and sha256.lower() != statement.sha256:
        raise ProvenanceError("the data does not match the statement: its SHA-256 differs")
    return statement
