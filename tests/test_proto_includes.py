"""The contract compiles from ``proto/`` alone plus the published files docs/integrating.md names.

The command is taken from the documentation itself and run in a directory holding only a copy of
``proto/``, so the instructions an integrator follows are the ones tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

PROJECT = Path(__file__).resolve().parent.parent
DOC = PROJECT / "docs" / "integrating.md"


def _documented_command() -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"To check that `proto/` compiles.*?```sh\n(.*?)```", text, re.S)
    assert found, "docs/integrating.md lost its protoc command"
    return found.group(1)


def _run(script: str, where: Path) -> subprocess.CompletedProcess[str]:
    """Runs the shell lines with this interpreter's environment first on the PATH (its `python`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-euc", script], check=False, cwd=where, env=env, capture_output=True, text=True, timeout=120
    )


def _where(tmp_path: Path) -> Path:
    shutil.copytree(PROJECT / "proto", tmp_path / "proto")
    return tmp_path


def test_the_documented_protoc_command_compiles_the_contract(tmp_path: Path) -> None:
    where = _where(tmp_path)
    done = _run(_documented_command(), where)
    assert done.returncode == 0, done.stderr
    files = descriptor_pb2.FileDescriptorSet.FromString((where / "gen" / "exchange.pb").read_bytes()).file
    names = {f.name for f in files}
    contract = {f"exchange/v1/{p.name}" for p in (PROJECT / "proto" / "exchange" / "v1").glob("*.proto")}
    assert contract <= names
    assert {"google/type/date.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"} <= names
    services = {s.name for f in files for s in f.service}
    assert {"RegistryService", "CatalogService", "ExchangeService", "AuditService"} <= services


def test_without_the_common_protos_it_does_not_compile(tmp_path: Path) -> None:
    command = _documented_command()
    assert ' -I "$COMMON"' in command
    # Without the common protos' directory (and not asking for google/rpc/*), the contract's date import fails.
    alone = command.replace(' -I "$COMMON"', "").replace(" google/rpc/status.proto google/rpc/error_details.proto", "")
    done = _run(alone, _where(tmp_path))
    assert done.returncode != 0 and "google/type/date.proto" in done.stderr
