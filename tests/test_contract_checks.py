"""buf's checks of the contract bite: a field removed or retyped since the release, or a new RPC named
against the rules, fails ``scripts/contract.py check`` (what ``make test`` runs), naming what broke.

Each test runs the check in a copy of buf.yaml, pyproject.toml and proto/ (with the release baseline),
changed as a careless edit would change it. buf is the npm package in tools/buf (``make test`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
BUF = PROJECT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
SCRIPT = PROJECT / "scripts" / "contract.py"
EXCHANGE = Path("proto") / "exchange" / "v1" / "exchange.proto"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    if not BUF.exists():
        reason = "buf is not installed: `npm ci --prefix tools/buf` (make test does it when npm is present)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI checks the contract with buf, but {reason}")
        pytest.skip(reason)
    for name in ("buf.yaml", "pyproject.toml"):
        shutil.copyfile(PROJECT / name, tmp_path / name)
    shutil.copytree(PROJECT / "proto", tmp_path / "proto")
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "check", "--root", str(root), "--buf", str(BUF)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _edit(root: Path, path: Path, old: str, new: str) -> None:
    text = (root / path).read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path} no longer holds {old!r}: update this test"
    (root / path).write_text(text.replace(old, new), encoding="utf-8")


def test_the_contract_as_it_is_passes(copy: Path) -> None:
    done = _check(copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compatible with exchange-v1-0.1.0.binpb" in done.stdout


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        # a field removed: code generated from the release loses it (FILE refuses it even with the number reserved)
        ("  bool provenance = 7;\n", "", 'field "7" with name "provenance" on message "QueryRequest" was deleted'),
        # FILE, not only WIRE: reserving the number does not make a removal compatible for generated code
        (
            "  bool provenance = 7;\n",
            '  reserved 7;\n  reserved "provenance";\n',
            'field "7" with name "provenance" on message "QueryRequest" was deleted',
        ),
        # a field's type changed: old clients' bytes no longer decode
        (
            "  int32 batch_size = 8;\n",
            "  string batch_size = 8;\n",
            'Field "8" with name "batch_size" on message "QueryRequest" changed type from "int32" to "string"',
        ),
    ],
    ids=["removed", "removed-reserved", "retyped"],
)
def test_a_breaking_change_fails_and_names_the_field(copy: Path, old: str, new: str, reported: str) -> None:
    _edit(copy, EXCHANGE, old, new)
    done = _check(copy)
    assert done.returncode != 0
    assert reported in done.stdout, done.stdout + done.stderr


def test_a_new_service_is_held_to_the_naming_rules(copy: Path) -> None:
    """The released files are excepted from the RPC naming rules one by one: a new file is not."""
    (copy / "proto" / "exchange" / "v1" / "notice.proto").write_text(
        'syntax = "proto3";\n\npackage exchange.v1;\n\n'
        "// Notices to a department.\nservice NoticeService {\n"
        "  // Lists notices.\n  rpc ListNotices(NoticeFilter) returns (NoticeList);\n}\n\n"
        "// Which notices.\nmessage NoticeFilter {}\n\n// Notices.\nmessage NoticeList {}\n",
        encoding="utf-8",
    )
    done = _check(copy)
    assert done.returncode != 0
    assert 'RPC request type "NoticeFilter" should be named "ListNoticesRequest"' in done.stdout, done.stdout
    assert "catalog.proto" not in done.stdout  # the released files stay excepted
