"""The demo's flat sale through the hub: four departmental backends, one consumer system, every answer audited.

Public security answers from a SQL front-end database (前置库), housing from its own gRPC provider
(the example in ``adapters.examples.housing``) and from a file store for contract texts, and the
tax bureau from its REST endpoint (``adapters.examples.tax``). The real-estate registry's system
asks the hub for each; the demo prints what came back, what was masked and what was refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import create_engine, text

from adapters.examples import housing, tax
from audit import provenance
from audit.note import Verifier
from exchange import values
from exchange.cli import tables
from exchange.cli.client import HubClient, describe
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb

FLAT_SALE = "不动产转移登记"
BUYER_ID = "350203198507154313"
CONTRACT_NO = "XM2026-000123"
IDENTITY = "10101/350200000001"
CONTRACT = "20301/350200000001"
CONTRACT_TEXT = "20301/350200000002"
TAX = "20501/350200000001"
HOUSING = "11350200MB0034567G"


@dataclass
class Backends:
    """The departments' running backends, stopped when the demo ends."""

    home: Path
    stops: list[Callable[[], None]] = field(default_factory=list)

    def police_frontend(self) -> str:
        path = self.home / "frontends" / "ga-qzk.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{path}")
        with engine.begin() as c:
            c.execute(text("CREATE TABLE czrk (xm TEXT, sfzh TEXT, xb TEXT, csrq DATE, hjdz TEXT)"))
            c.execute(
                text("INSERT INTO czrk VALUES (:xm, :sfzh, '男', '1985-07-15', '厦门市思明区湖滨南路88号')"),
                {"xm": "林志强", "sfzh": BUYER_ID},
            )
        engine.dispose()
        return f"sqlite:///{path}"

    def housing_provider(self, identity: Path) -> int:
        server, port = housing.start(identity, f"sqlite:///{self.home / 'frontends' / 'zj-qzk.db'}")
        self.stops.append(lambda: _wait(server.stop(1)))
        return port

    def contract_texts(self) -> Path:
        root = (self.home / "documents" / HOUSING / "contracts").resolve()  # the owner's own directory
        root.mkdir(parents=True, exist_ok=True)
        for contract in housing.DEMO_CONTRACTS:
            (root / f"{contract['contract_no']}.pdf").write_bytes(housing.contract_pdf(contract))
        return root

    def tax_endpoint(self) -> int:
        server: ThreadingHTTPServer
        server, port = tax.start()
        self.stops.append(server.shutdown)
        return port

    def stop(self) -> None:
        for stop in reversed(self.stops):
            stop()


def _wait(stopped: Any) -> None:
    stopped.wait()


def bindings(backends: Backends, housing_identity: Path) -> dict[str, tuple[str, cpb.Binding]]:
    """Each resource's binding, and the steward who sets it."""
    columns = {"name": "xm", "id_number": "sfzh", "gender": "xb", "birth_date": "csrq", "address": "hjdz"}
    police = cpb.SqlBackend(url=backends.police_frontend(), table="czrk", columns=columns)
    provider = cpb.GrpcBackend(target=f"127.0.0.1:{backends.housing_provider(housing_identity)}", system_code="zj-wqba")
    files = cpb.FileBackend(root=str(backends.contract_texts()), name_template="{contract_no}.pdf")
    endpoint = cpb.HttpBackend(
        url=f"http://127.0.0.1:{backends.tax_endpoint()}/clearance",
        fields=tax.FIELD_MAP,
        records_key="data",
        parameters={"taxpayer_id_number": "taxpayer"},
    )
    return {
        IDENTITY: ("ga-steward", cpb.Binding(resource_code=IDENTITY, sql=police)),
        CONTRACT: ("zj-steward", cpb.Binding(resource_code=CONTRACT, grpc=provider)),
        CONTRACT_TEXT: ("zj-steward", cpb.Binding(resource_code=CONTRACT_TEXT, files=files)),
        TAX: ("sw-steward", cpb.Binding(resource_code=TAX, http=endpoint, timeout_seconds=3)),
    }


QUERIES = (
    ("public security · SQL front-end database", IDENTITY, {"id_number": BUYER_ID}, ["name", "id_number"]),
    (
        "housing · gRPC provider",
        CONTRACT,
        {"contract_no": CONTRACT_NO},
        ["contract_no", "property_address", "price"],
    ),
    (
        "tax · REST endpoint",
        TAX,
        {"taxpayer_id_number": BUYER_ID},
        ["voucher_no", "taxpayer_id_number", "tax_kind", "amount", "paid_on"],
    ),
)


@dataclass(frozen=True)
class Receipt:
    """What a consumer keeps of one answer to object to it later: its exchange id and the values' SHA-256."""

    exchange_id: str
    sha256: str


def received_digest(records: list[dict[str, object]]) -> str:
    """The SHA-256 (hex) of the records as received, as canonical JSON: what an objection cites, not the values."""
    canonical = json.dumps(records, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def queries(hub: HubClient, receipts: dict[str, Receipt] | None = None) -> list[list[str]]:
    """The registry's three lookups; each printed, and summarized in the returned rows. ``receipts`` gets, per
    resource code, the exchange id and the digest of what came back."""
    summary: list[list[str]] = []
    for label, code, filters, fields in QUERIES:
        request = xpb.QueryRequest(resource_code=code, purpose=FLAT_SALE, filters=filters, fields=fields)
        answer = hub.call(hub.exchange.Query, request)
        rows = [values.record_from_wire(r) for r in answer.records]
        masks = dict(answer.disclosure.masks)
        print(f"\n  {label}: {code}, {len(rows)} record(s), exchange {answer.exchange_id}")
        headers = [f"{f} ({masks[f]} mask)" if f in masks else f for f in fields]
        print(tables.render(headers, [[str(r.get(f, "")) for f in fields] for r in rows]))
        summary.append([code, label.split(" · ")[1], str(len(rows)), ", ".join(masks) or "-", answer.exchange_id])
        if receipts is not None:
            receipts[code] = Receipt(answer.exchange_id, received_digest(rows))
    return summary


def document(hub: HubClient, verifier_file: Path, out: Path) -> list[str]:
    """Downloads the contract text from the file store, with a provenance statement, and checks both."""
    request = xpb.FetchDocumentRequest(
        resource_code=CONTRACT_TEXT, purpose=FLAT_SALE, filters={"contract_no": CONTRACT_NO}, provenance=True
    )
    chunks = list(hub.exchange.FetchDocument(request, timeout=hub.timeout))
    data = b"".join(c.data for c in chunks)
    out.write_bytes(data)
    info, last = chunks[0].info, chunks[-1]
    assert hashlib.sha256(data).digest() == last.sha256
    statement = provenance.verify(
        last.provenance.note, Verifier.parse(verifier_file.read_text()), hashlib.sha256(data).hexdigest()
    )
    print(
        f"\n  housing · file store: {info.name} ({info.media_type}), {len(data)} bytes in {len(chunks)} chunk(s),"
        f" saved to {out}"
    )
    print(f"  provenance: signed by the hub for {statement.consumer} at {statement.time}; the SHA-256 matches")
    return [CONTRACT_TEXT, "file store", f"{len(data)} bytes", "-", last.exchange_id]


def refusals(hub: HubClient) -> None:
    """What the registry's system may not have, and how the hub says so."""
    cases = (
        ("the home address, which was not granted", IDENTITY, FLAT_SALE, {"id_number": BUYER_ID}, ["address"]),
        ("identity for another matter (企业开办)", IDENTITY, "企业开办", {"id_number": BUYER_ID}, ["name"]),
        ("a lookup by name, which is not a declared filter", IDENTITY, FLAT_SALE, {"name": "林志强"}, ["name"]),
    )
    for what, code, purpose, filters, fields in cases:
        request = xpb.QueryRequest(resource_code=code, purpose=purpose, filters=filters, fields=fields)
        expect_refusal(what, lambda r=request: hub.call(hub.exchange.Query, r))  # type: ignore[misc]


def expect_refusal(what: str, call: Callable[[], Any]) -> None:
    """Makes a call the hub must refuse, and prints how it said so."""
    try:
        call()
    except grpc.RpcError as e:
        print(f"  {what}\n    -> {describe(e).replace(chr(10), chr(10) + '    ')}")
        return
    raise AssertionError(f"the hub answered: {what}")
