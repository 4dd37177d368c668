"""A client in another language calls the hub: the Node.js example of docs/integrating.md, run against a real hub.

The script (examples/clients/node/query.js) loads the contract from ``proto/`` and the googleapis files
from the directory googleapis-common-protos installs them in, as the documentation says, and calls
``ExchangeService.Query`` over mutual TLS with a system's certificate files. Its npm packages come from
its lock file (``make test`` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from google.type import date_pb2

from tests.exchange_world import LOOKUP, PERSON_ID, PURPOSE, World, make_world, serve_lookup
from tests.harness import RunningHub

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT / "examples" / "clients" / "node"
COMMON = Path(date_pb2.__file__).resolve().parents[2]


def _missing() -> str:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return f"the example's npm packages are not installed: `npm ci --prefix {EXAMPLE.relative_to(PROJECT)}`"
    return ""


@pytest.fixture
def world(hub: RunningHub, tmp_path: Path) -> World:
    if reason := _missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Node.js client example, but {reason}")
        pytest.skip(reason)
    world = make_world(hub)
    serve_lookup(world, tmp_path)
    return world


def _query(world: World, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        "node",
        str(EXAMPLE / "query.js"),
        f"--hub={world.hub.settings.hub_address}",
        f"--identity={world.consumer_system}",
        f"--proto={PROJECT / 'proto'}",
        f"--googleapis={COMMON}",
        f"--resource={LOOKUP}",
        f"--filter=id_number={PERSON_ID}",
        "--field=name",
        *extra,
    ]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


def test_a_node_client_queries_the_hub_over_mutual_tls(world: World) -> None:
    done = _query(world, f"--purpose={PURPOSE}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"exchange id: EX[0-9a-f]+", lines[0]), done.stdout
    assert lines[1].startswith("grant: ") and lines[1].endswith("; fields: name")
    assert lines[2:] == ['{"name":"张三"}']


def test_a_refusal_reaches_the_node_client_with_its_details(world: World) -> None:
    done = _query(world, "--purpose=另一事项")
    assert done.returncode == 1, done.stdout
    lines = done.stderr.splitlines()
    assert lines[0].startswith("PERMISSION_DENIED: "), done.stderr
    assert any(line.startswith("google.rpc.ErrorInfo: ") and '"reason":"WRONG_PURPOSE"' in line for line in lines)
    assert any(re.fullmatch(r'google.rpc.RequestInfo: \{"request_id":"EX[0-9a-f]+"\}', line) for line in lines)


def test_the_documented_command_passes_what_this_test_passes() -> None:
    """docs/integrating.md shows the command run here, with the demo's values: the same options, no others."""
    text = (PROJECT / "docs" / "integrating.md").read_text(encoding="utf-8")
    found = re.search(r"A worked call from Node\.js.*?```sh\n(.*?)```", text, re.S)
    assert found, "docs/integrating.md lost its Node.js command"
    command = found.group(1).replace("\\\n", " ")
    assert "npm ci --prefix examples/clients/node" in command
    documented = set(re.findall(r"(--[a-z]+) ", command.split("node examples/clients/node/query.js", 1)[1]))
    passed = {"--hub", "--identity", "--proto", "--googleapis", "--resource", "--purpose", "--filter", "--field"}
    assert documented == passed
