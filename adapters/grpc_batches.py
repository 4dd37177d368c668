"""A provider's streamed batches read straight into the message the consumer receives.

A provider sends ``ProviderBatch`` (``repeated Record records = 1``); the hub's consumer receives
``QueryBatch`` (``repeated Record records = 2``, beside the hub's own fields). The two differ on the wire
only in each record's tag byte, so the gRPC backend's deserializer (``received``) rewrites those bytes
and notes where each record ends, and the stream parses the records it needs straight into a
``QueryBatch`` (``Cutter``): checked and masked in place there, it leaves the hub as it is, with no
message built in between and no record copied.

A provider's message that is not plain top-level records (an unknown field, a record framed across its
end) is parsed as a ``ProviderBatch`` and its records re-encoded, which is slower and gives the same
records; one that does not parse at all is ``Received.bad``, and the stream fails on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from google.protobuf.message import DecodeError

from exchange.v1 import exchange_pb2, provider_pb2

__all__ = ["Cutter", "Received", "received"]

_PROVIDER_RECORD = 0x0A  # field 1, length-delimited: ProviderBatch.records
_CONSUMER_RECORD = 0x12  # field 2, length-delimited: QueryBatch.records


@dataclass(frozen=True)
class Received:
    """One provider message: its records tagged as ``QueryBatch.records``, and where each of them ends."""

    data: bytes | bytearray
    ends: list[int] = field(default_factory=list)
    # The message did not parse as a ProviderBatch: nothing of it may be passed on.
    bad: bool = False


def received(raw: bytes) -> Received:
    """The gRPC deserializer of the provider's Fetch answers (never raises: grpc.aio would end the stream)."""
    try:
        return _retagged(raw)
    except (IndexError, ValueError):
        return _reencoded(raw)


def _retagged(raw: bytes) -> Received:
    """Each top-level record's tag rewritten in place; ValueError or IndexError if not plain records."""
    data = bytearray(raw)
    ends: list[int] = []
    pos, total = 0, len(data)
    while pos < total:
        if data[pos] != _PROVIDER_RECORD:
            raise ValueError("not a record")
        data[pos] = _CONSUMER_RECORD
        first = data[pos + 1]  # the length: one or two bytes (a record under 16 KiB) read here, as this runs per record
        if first < 0x80:
            pos += 2 + first
        elif (second := data[pos + 2]) < 0x80:
            pos += 3 + ((first & 0x7F) | second << 7)
        else:
            length, pos = _varint(data, pos + 1)
            pos += length
        if pos > total:
            raise ValueError("record cut short")
        ends.append(pos)
    return Received(data, ends)  # the copy made to retag, not copied again


def _varint(data: bytearray, pos: int) -> tuple[int, int]:
    """The record length at ``pos`` and where the record starts (lengths of one and two bytes are read inline)."""
    length, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, pos
        shift += 7
        if shift > 28:
            raise ValueError("length too long")


def _reencoded(raw: bytes) -> Received:
    """The slow, general path: parsed as a ProviderBatch, its records encoded as a QueryBatch's."""
    try:
        batch = provider_pb2.ProviderBatch.FromString(raw)
    except DecodeError:
        return Received(b"", bad=True)
    data = bytearray()
    ends: list[int] = []
    for record in batch.records:
        data += exchange_pb2.QueryBatch(records=[record]).SerializeToString()
        ends.append(len(data))
    return Received(data, ends)


class Cutter:
    """Gathers received records into ``QueryBatch`` messages of exactly ``size`` records (the last fewer).

    Each record is parsed once, into the batch it leaves in; ``DecodeError`` if one does not parse.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._batch = exchange_pb2.QueryBatch()
        self._held = 0

    def cut(self, part: Received) -> list[exchange_pb2.QueryBatch]:
        """The batches ``part`` completes; its remaining records are held for the next."""
        full: list[exchange_pb2.QueryBatch] = []
        ends, taken, start = part.ends, 0, 0
        view = cast("bytes", memoryview(part.data))  # parsed from without copying; upb takes any buffer
        while len(ends) - taken >= self._size - self._held:
            taken += self._size - self._held
            end = ends[taken - 1]
            self._batch.MergeFromString(view[start:end])
            full.append(self._batch)
            self._batch, self._held, start = exchange_pb2.QueryBatch(), 0, end
        if taken < len(ends):
            self._batch.MergeFromString(view[start:])
            self._held += len(ends) - taken
        return full

    def rest(self) -> exchange_pb2.QueryBatch | None:
        """The records held at the stream's end, if any."""
        return self._batch if self._held else None
