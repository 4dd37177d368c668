"""Seals keep their bytes: rows sealed by earlier versions of the hub still check (audit.seal)."""

from __future__ import annotations

import hashlib
import hmac
import struct

from audit.seal import Sealer

KEY = bytes(range(32))


def test_seals_are_the_hmac_of_their_label_and_parts_as_before() -> None:
    sealer = Sealer(KEY)
    record = '{"a":"不动产"}'.encode()
    # Made by the hub before seals were computed in one call: existing rows carry these.
    assert sealer.staged(record).hex() == "184550c9d577b8c806aecbe54278fcd72d81695996d58df26d4813d3e5b68fe7"
    assert sealer.entry(7, bytes(32)).hex() == "44fb4cf254909013d00f644ee84337041003335f9689b518164d444cec69c867"
    assert sealer.head(8, b"\x01" * 32).hex() == "df7589860824f2a66265b9e1e5a1d8696966056bead8733ee16298f0b01743b4"
    for n, leaf in ((0, b""), (2**64 - 1, b"\xff" * 32), (12345, bytes(range(32)))):
        entry = hmac.new(KEY, b"entry\0" + struct.pack(">Q", n) + leaf, hashlib.sha256).digest()
        assert sealer.entry(n, leaf) == entry and Sealer.same(entry, sealer.entry(n, leaf))
        assert sealer.head(n, leaf) == hmac.new(KEY, b"head\0" + struct.pack(">Q", n) + leaf, hashlib.sha256).digest()
    assert not Sealer.same(sealer.staged(record), sealer.staged(record + b" "))
