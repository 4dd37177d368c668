"""Cosignatures in the C2SP tlog-cosignature v1 form: the specification's example, round trips, tampering."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.cosignature import Cosignature, WitnessKey, WitnessVerifier, key_id, message, with_cosignatures
from audit.note import Checkpoint, NoteError, Signer, open_note

# The example checkpoint and cosignature line of the C2SP tlog-cosignature specification (v1).
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_LINE = (
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZ"
    "qhf5nNo0xUe+mbIUBkBIfZ+qnA=="
)
# The specification's example signed message, for the time its example line carries.
SPEC_MESSAGE = b"cosignature/v1\ntime 1679315147\n" + SPEC_TEXT.encode()


def _checkpoint_note(origin: str = "hub-a.example/audit") -> tuple[Signer, str]:
    signer = Signer.generate(origin)
    return signer, signer.sign(Checkpoint(origin, 5, hashlib.sha256(b"root").digest()).text())


def test_the_specifications_example_line_parses_to_its_time_and_message() -> None:
    cosignature = Cosignature.parse(SPEC_LINE)
    assert cosignature.name == "witness.example.com/w1"
    assert cosignature.key_id.hex() == "8d66cf3f"
    assert cosignature.timestamp == 1679315147
    assert len(cosignature.signature) == 64
    assert cosignature.line() == SPEC_LINE
    assert message(SPEC_TEXT, cosignature.timestamp) == SPEC_MESSAGE


def test_the_key_id_is_the_specifications_hash_with_type_0x04() -> None:
    key = WitnessKey.generate("witness.example/w1")
    public = key.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected = hashlib.sha256(b"witness.example/w1\n\x04" + public).digest()[:4]
    assert key.verifier().key_id == key_id("witness.example/w1", public) == expected
    # A log's signed-note key (type 0x01) of the same name and key has another id: the two never mix.
    assert hashlib.sha256(b"witness.example/w1\n\x01" + public).digest()[:4] != expected


def test_a_cosignature_is_a_timestamped_ed25519_signature_over_the_v1_message() -> None:
    key = WitnessKey.generate("witness.example/w1")
    _, note = _checkpoint_note()
    text = note.rpartition("\n\n")[0] + "\n"
    line = key.cosign(text, 1_700_000_000).line()
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == key.verifier().key_id
    assert struct.unpack(">Q", raw[4:12]) == (1_700_000_000,)
    public = key.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    # Checked here with the bare Ed25519 key over the message spelled out as the specification does.
    Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], f"cosignature/v1\ntime 1700000000\n{text}".encode())


def test_round_trip_keys_lines_and_notes() -> None:
    key = WitnessKey.generate("witness.example/w1")
    assert WitnessKey.parse(key.encode()).encode() == key.encode()
    verifier = WitnessVerifier.parse(key.verifier().encode())
    signer, note = _checkpoint_note()
    text = open_note(note, signer.verifier())
    cosigned = with_cosignatures(note, [key.cosign(text, 1_700_000_001).line()])
    # The log's own signature still verifies on the cosigned note, and the witness's is found.
    assert open_note(cosigned, signer.verifier()) == text
    assert verifier.find(cosigned).timestamp == 1_700_000_001
    assert with_cosignatures(cosigned, [key.cosign(text, 1_700_000_001).line()]) == cosigned


def test_tampered_cosignatures_do_not_verify() -> None:
    key = WitnessKey.generate("witness.example/w1")
    signer, note = _checkpoint_note()
    text = open_note(note, signer.verifier())
    good = key.cosign(text, 1_700_000_000)
    verifier = key.verifier()
    with pytest.raises(NoteError, match="does not verify"):
        verifier.verify(text, Cosignature(good.name, good.key_id, good.timestamp + 1, good.signature))
    with pytest.raises(NoteError, match="does not verify"):
        verifier.verify(text.replace("\n5\n", "\n6\n"), good)
    with pytest.raises(NoteError, match="not by the witness"):
        WitnessKey.generate("witness.example/w1").verifier().verify(text, good)
    with pytest.raises(NoteError, match="no cosignature by the witness"):
        verifier.find(note)


@pytest.mark.parametrize(
    "line",
    [
        "— w1 not-base64!",
        "w1 " + base64.b64encode(bytes(76)).decode(),
        "— w1 " + base64.b64encode(bytes(68)).decode(),
        "— w1 " + base64.b64encode(bytes(4) + struct.pack(">Q", 1 << 63) + bytes(64)).decode(),
    ],
)
def test_malformed_cosignature_lines_are_refused(line: str) -> None:
    with pytest.raises(NoteError):
        Cosignature.parse(line)


def test_a_log_key_is_not_a_witness_key() -> None:
    with pytest.raises(NoteError, match="type 0x04"):
        WitnessVerifier.parse(Signer.generate("hub-a.example/audit").verifier().encode())
    with pytest.raises(NoteError, match="type 0x04"):
        WitnessKey.parse(Signer.generate("hub-a.example/audit").encode())
