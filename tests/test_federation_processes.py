"""Two hubs as two `exchange serve` processes, each with its own home, CA and store, peered by their operators
with the command line; an entry published at the county's hub is found at the city's by its sync loop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from exchange import models as m
from exchange import wire as w
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.client import HubClient
from exchange.cli.demo import sample_id_number
from exchange.cli.main import main
from exchange.config import Settings
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from tests.federation_support import HUBS, SIMING_MARKET
from tests.harness import AUTHORITY, base_settings, identity_spec

PROJECT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # a bound on waiting for a process, never a claim about speed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    level: str
    settings: Settings
    operator: Path
    federation: str

    def cli(self, *argv: str) -> int:
        return main(["--hub", self.settings.hub_address, "--identity", str(self.operator), "--json", *argv])


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not seen: {what}"
        time.sleep(0.2)


@contextmanager
def _serve(root: Path, level: str) -> Iterator[Served]:
    code, name = HUBS[level]
    port, federation = _free_port(), _free_port()
    settings = replace(
        base_settings(root / level), hub_code=code, hub_name=name, hub_level=level, hub_address=f"localhost:{port}"
    )
    operator = initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维")).directory
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(settings.home),
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": "127.0.0.1:0",
        "EXCHANGE_HUB_CODE": code,
        "EXCHANGE_HUB_NAME": name,
        "EXCHANGE_HUB_LEVEL": level,
        "EXCHANGE_FEDERATION_LISTEN": f"127.0.0.1:{federation}",
        "EXCHANGE_FEDERATION_SYNC_SECONDS": "0.5",
    }
    log = root / f"{level}.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the hub
        process = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli.main", "serve"], cwd=PROJECT, env=env, stderr=sink, text=True
        )
        try:
            served = Served(level, settings, operator, f"localhost:{federation}")
            with HubClient(settings, operator) as hub:

                def serving() -> bool:
                    assert process.poll() is None, log.read_text()
                    try:
                        hub.call(hub.registry.WhoAmI, rpb.WhoAmIRequest())
                    except grpc.RpcError:
                        return False
                    return True

                _until(serving, f"the {level} hub serving")
            yield served
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=WAIT) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=WAIT)


def test_two_served_hubs_peer_and_share_their_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ExitStack() as stack:
        county = stack.enter_context(_serve(tmp_path, "county"))
        city = stack.enter_context(_serve(tmp_path, "city"))
        for node, other, relation in ((county, city, "parent"), (city, county, "child")):
            ca = tmp_path / f"{other.level}-ca.pem"
            assert other.cli("peer", "identity", "--ca-out", str(ca)) == 0
            capsys.readouterr()
            code, name = HUBS[other.level]
            register = ["peer", "register", "--code", code, "--name", name, "--level", other.level]
            assert node.cli(*register, "--relation", relation, "--address", other.federation, "--ca-file", str(ca)) == 0
            state = json.loads(capsys.readouterr().out)["peer"]["state"]
            assert state == ("PEER_STATE_REGISTERED" if node is county else "PEER_STATE_ACTIVE")

        with HubClient(county.settings, county.operator) as hub:
            hub.call(
                hub.registry.CreateDepartment,
                rpb.CreateDepartmentRequest(department=w.department_to_wire(SIMING_MARKET)),
            )
            person = m.Person("scjg-steward", "林科长", SIMING_MARKET.code, frozenset({m.Role.OWNER_STEWARD}))
            number = sample_id_number("scjg-steward")
            hub.call(
                hub.registry.CreatePerson, rpb.CreatePersonRequest(person=w.person_to_wire(person), id_number=number)
            )
        steward = tmp_path / "steward"
        assert (
            main(
                [
                    "--hub",
                    county.settings.hub_address,
                    "--identity",
                    str(county.operator),
                    "cert",
                    "issue",
                    "--person",
                    "scjg-steward",
                    "--out",
                    str(steward),
                ]
            )
            == 0
        )
        spec = identity_spec("10101/350203000001", SIMING_MARKET.code)
        with HubClient(county.settings, steward) as hub:
            request = cpb.CreateResourceRequest(resource=w.spec_to_wire(spec), publish=True, reason="首次编目")
            hub.call(hub.catalog.CreateResource, request)

        def reached_the_city() -> bool:
            with HubClient(city.settings, city.operator) as hub:
                found = hub.call(hub.catalog.ListResources, cpb.ListResourcesRequest(home_hub_code="350203"))
            return [(r.code, r.home_level) for r in found.resources] == [("10101/350203000001", "county")]

        _until(reached_the_city, "the county's entry at the city's hub")
