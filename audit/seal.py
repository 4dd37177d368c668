"""Binding audit rows to the hub's signing key, so that no one who can only write the database can forge them.

A staged record, an integrated entry and the log's head (its size and last leaf) each carry an
HMAC-SHA-256 under a key derived from the log's Ed25519 signing key (HKDF-SHA-256, RFC 5869). The
key never enters the database: whoever rewrites a row there cannot make its seal, so a hub that
restarts after its database was edited finds the first row it did not write, instead of signing a
checkpoint over it. Each seal names what it covers ("staged", "entry", "head") so none stands in
for another.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from audit.note import Signer

_INFO = b"exchange audit seal v1"


class Sealer:
    """Makes and checks the seals of one log's rows."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a seal key has at least 32 bytes")
        self._key = key

    @classmethod
    def of(cls, signer: Signer) -> Sealer:
        """The sealer of the log ``signer`` signs for: its key derived from the signing key and the log's name."""
        seed = signer.private_key.private_bytes_raw()
        derive = HKDF(algorithm=hashes.SHA256(), length=32, salt=signer.name.encode(), info=_INFO)
        return cls(derive.derive(seed))

    def _mac(self, *parts: bytes) -> bytes:
        # One call into OpenSSL's HMAC over the parts joined (the same MAC as feeding them one by one), at half
        # the cost of copying a keyed hmac object: every exchange's record is sealed as it is staged.
        return hmac.digest(self._key, b"".join(parts), "sha256")

    def staged(self, record: bytes) -> bytes:
        return self._mac(b"staged\0", record)

    def entry(self, seq: int, leaf: bytes) -> bytes:
        return self._mac(b"entry\0", struct.pack(">Q", seq), leaf)

    def head(self, size: int, last_leaf: bytes) -> bytes:
        return self._mac(b"head\0", struct.pack(">Q", size), last_leaf)

    @staticmethod
    def same(mac: bytes | None, expected: bytes) -> bool:
        return mac is not None and hmac.compare_digest(bytes(mac), expected)
