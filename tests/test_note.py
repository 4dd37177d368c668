"""C2SP signed notes and checkpoints: the public vector, and every way a note can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.merkle import leaf_hash
from audit.note import Checkpoint, NoteError, Signer, Verifier, open_note

VECTOR = json.loads((Path(__file__).resolve().parent / "vectors" / "signed-note.json").read_text())


def test_the_public_vector_signs_and_verifies_exactly() -> None:
    signer = Signer.parse(VECTOR["signer_key"])
    assert signer.encode() == VECTOR["signer_key"]
    assert signer.verifier().encode() == VECTOR["verifier_key"]
    assert signer.sign(VECTOR["text"]) == VECTOR["signed_note"]
    assert open_note(VECTOR["signed_note"], Verifier.parse(VECTOR["verifier_key"])) == VECTOR["text"]


def test_bad_notes_and_keys_are_refused() -> None:
    verifier = Verifier.parse(VECTOR["verifier_key"])
    note = VECTOR["signed_note"]
    with pytest.raises(NoteError, match="does not verify"):
        open_note(note.replace("cryptography", "Cryptography"), verifier)
    other = Signer.generate("PeterNeumann")
    with pytest.raises(NoteError, match="no signature by"):
        open_note(note, other.verifier())
    with pytest.raises(NoteError):
        open_note(VECTOR["text"], verifier)
    with pytest.raises(NoteError, match="does not match"):
        Verifier.parse(VECTOR["verifier_key"].replace("c74f20a3", "c74f20a4"))
    with pytest.raises(NoteError):
        Signer.generate("has space")


def test_checkpoints_round_trip_through_signed_notes() -> None:
    signer = Signer.generate("exchange.example/hub")
    checkpoint = Checkpoint("exchange.example/hub/audit", 42, leaf_hash(b"x"), ("extension line",))
    note = signer.sign(checkpoint.text())
    assert Checkpoint.parse(open_note(note, signer.verifier())) == checkpoint
    for broken in ("origin\n-1\nAAAA\n", "origin\n7\nnot base64!\n", "origin\n07\n" + "A" * 43 + "=\n", "x\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(broken)
