"""Witness cosignatures on checkpoints, in the C2SP tlog-cosignature v1 form (Ed25519).

A cosignature is a signed-note signature line "— <witness name> <base64(key id || timestamp || signature)>"
added to a checkpoint note. The key id is the first four bytes of SHA-256(name || "\\n" || 0x04 || public
key); the timestamp is 8 bytes big-endian (POSIX seconds, below 2^63); the Ed25519 signature covers
"cosignature/v1\\n" "time <timestamp>\\n" followed by the whole checkpoint text (with its extension lines,
without any signature line). A v1 cosignature states that, at that time, this was the largest consistent
tree the witness had seen for the checkpoint's origin. Keys are written as signed-note keys with type 0x04:
"<name>+<hex id>+<base64(0x04 || public key)>" and "PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || seed)>".
Source: C2SP tlog-cosignature specification (v1, Ed25519 signed message) and C2SP signed-note.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.note import SIGNATURE_PREFIX, NoteError

COSIGNATURE_ED25519 = b"\x04"
HEADER = "cosignature/v1\n"
# The timestamp of a cosignature must not exceed 2^63 - 1 (the specification's bound).
MAX_TIMESTAMP = (1 << 63) - 1
_SIGNATURE_BYTES = 4 + 8 + 64


def key_id(name: str, public: bytes) -> bytes:
    """The 4-byte id of an Ed25519 cosigning key: SHA-256(name || "\\n" || 0x04 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + COSIGNATURE_ED25519 + public).digest()[:4]


def message(text: str, timestamp: int) -> bytes:
    """The bytes a witness signs over checkpoint ``text`` at ``timestamp`` (POSIX seconds)."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")
    if not text.endswith("\n"):
        raise NoteError("a checkpoint's text ends with a newline")
    return f"{HEADER}time {timestamp}\n{text}".encode()


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"witness name {name!r} must be non-empty, without spaces or '+'")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Cosignature:
    """One parsed cosignature line: who (name and key id), when, and the Ed25519 signature."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def line(self) -> str:
        """The signature line, as it is appended to a note (without its newline)."""
        raw = self.key_id + struct.pack(">Q", self.timestamp) + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(raw).decode()}"

    @classmethod
    def parse(cls, line: str) -> Cosignature:
        """A cosignature line; NoteError when it is not one (a log's own signature has no timestamp)."""
        line = line.rstrip("\n")
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"not a signature line: {line[:60]!r}")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise NoteError(f"the signature by {name} is not base64") from None
        if not name or len(raw) != _SIGNATURE_BYTES:
            raise NoteError(f"the signature by {name} is not an Ed25519 cosignature (key id, timestamp, signature)")
        (timestamp,) = struct.unpack(">Q", raw[4:12])
        if timestamp > MAX_TIMESTAMP:
            raise NoteError(f"the cosignature by {name} has a timestamp beyond 2^63-1")
        return cls(name, raw[:4], timestamp, raw[12:])


@dataclass(frozen=True)
class WitnessVerifier:
    """A witness's public cosigning key, as an auditor or a log trusts it."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def parse(cls, text: str) -> WitnessVerifier:
        try:
            name, hex_id, encoded = text.strip().split("+", 2)
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise NoteError("a witness key is <name>+<hex id>+<base64 key>") from None
        if raw[:1] != COSIGNATURE_ED25519 or len(raw) != 33:
            raise NoteError("only Ed25519 cosignature keys (type 0x04) are witness keys")
        _check_name(name)
        if key_id(name, raw[1:]).hex() != hex_id:
            raise NoteError(f"witness key id {hex_id} does not match its key")
        return cls(name, bytes.fromhex(hex_id), Ed25519PublicKey.from_public_bytes(raw[1:]))

    def encode(self) -> str:
        encoded = base64.b64encode(COSIGNATURE_ED25519 + _raw(self.public_key)).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, text: str, cosignature: Cosignature) -> None:
        """Checks one cosignature over checkpoint ``text``; NoteError if it is not this witness's or is false."""
        if cosignature.name != self.name or cosignature.key_id != self.key_id:
            raise NoteError(f"the cosignature is by {cosignature.name}, not by the witness {self.name}")
        try:
            self.public_key.verify(cosignature.signature, message(text, cosignature.timestamp))
        except InvalidSignature:
            raise NoteError(f"the cosignature by {self.name} does not verify") from None

    def find(self, note: str) -> Cosignature:
        """This witness's valid cosignature on ``note`` (a signed checkpoint); NoteError if it has none."""
        text, lines = split_note(note)
        for line in lines:
            try:
                cosignature = Cosignature.parse(line)
            except NoteError:
                continue  # the log's own signature, or another kind
            if cosignature.name == self.name and cosignature.key_id == self.key_id:
                self.verify(text, cosignature)
                return cosignature
        raise NoteError(f"the checkpoint carries no cosignature by the witness {self.name} ({self.key_id.hex()})")


@dataclass(frozen=True)
class WitnessKey:
    """A witness's private cosigning key (Ed25519, type 0x04; never the key its hub signs its log with)."""

    name: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> WitnessKey:
        _check_name(name)
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a witness's private key is PRIVATE+KEY+<name>+<hex id>+<base64 key>")
        _, _, name, hex_id, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise NoteError("a witness's private key is not base64") from None
        if raw[:1] != COSIGNATURE_ED25519 or len(raw) != 33:
            raise NoteError("only Ed25519 cosignature keys (type 0x04) are witness keys")
        _check_name(name)
        key = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if key.verifier().key_id.hex() != hex_id:
            raise NoteError(f"witness key id {hex_id} does not match its key")
        return key

    def encode(self) -> str:
        seed = base64.b64encode(COSIGNATURE_ED25519 + self.private_key.private_bytes_raw()).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier().key_id.hex()}+{seed}"

    def verifier(self) -> WitnessVerifier:
        public = self.private_key.public_key()
        return WitnessVerifier(self.name, key_id(self.name, _raw(public)), public)

    def cosign(self, text: str, timestamp: int) -> Cosignature:
        """This witness's cosignature over checkpoint ``text`` at ``timestamp``."""
        signature = self.private_key.sign(message(text, timestamp))
        return Cosignature(self.name, self.verifier().key_id, timestamp, signature)


def split_note(note: str) -> tuple[str, list[str]]:
    """A signed note's text (ending in its newline) and its signature lines; NoteError if malformed."""
    text, sep, signatures = note.rpartition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise NoteError("a signed note is text, a blank line, then signature lines")
    return text + "\n", signatures[:-1].split("\n")


def with_cosignatures(note: str, lines: list[str]) -> str:
    """``note`` with the signature ``lines`` added after its own (each once, in the order given)."""
    text, present = split_note(note)
    added = [line for line in dict.fromkeys(lines) if line not in present]
    return text + "\n" + "".join(f"{line}\n" for line in [*present, *added])
