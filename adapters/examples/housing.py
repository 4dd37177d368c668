"""The housing department's provider (住房和建设局, system zj-wqba), as a department would write it.

It serves the filed sale contracts (20301/350200000001) from a table of its front-end database,
and each contract's text as a document (20301/350200000002). A new database is created and
seeded with a few demo contracts. Run it with the system's identity directory::

    python -m adapters.examples.housing --identity DIR --listen 127.0.0.1:0 --database sqlite:///housing.db

It prints the port it bound, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from types import FrameType

import grpc
from sqlalchemy import Column, Date, MetaData, Numeric, String, Table, create_engine, inspect

from adapters.provider import Provider, ProviderDocument, ProviderQuery, QueryRefused, Row, serve

CONTRACTS = "20301/350200000001"
CONTRACT_TEXTS = "20301/350200000002"
TABLE = "contracts"
FIELDS = ("contract_no", "property_address", "seller_name", "buyer_name", "buyer_id_number", "price", "filed_on")
DEMO_CONTRACTS: tuple[dict[str, object], ...] = (
    {
        "contract_no": "XM2026-000123",
        "property_address": "思明区湖滨南路88号2梯1203室",
        "seller_name": "陈美玲",
        "buyer_name": "林志强",
        "buyer_id_number": "350203198507154313",
        "price": Decimal("3250000.00"),
        "filed_on": dt.date(2026, 3, 2),
    },
    {
        "contract_no": "XM2026-000124",
        "property_address": "湖里区枋湖北二路156号701室",
        "seller_name": "黄建国",
        "buyer_name": "郑晓燕",
        "buyer_id_number": "350206199003082428",
        "price": Decimal("2180000.00"),
        "filed_on": dt.date(2026, 3, 5),
    },
)


def seed(database_url: str) -> None:
    """Creates the contracts table with the demo contracts, unless the database already has it."""
    engine = create_engine(database_url)
    try:
        if inspect(engine).has_table(TABLE):
            return
        metadata = MetaData()
        table = Table(
            TABLE,
            metadata,
            Column("contract_no", String(32), primary_key=True),
            *(Column(name, String(200)) for name in FIELDS[1:5]),
            Column("price", Numeric(14, 2)),
            Column("filed_on", Date),
        )
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(table.insert(), list(DEMO_CONTRACTS))
    finally:
        engine.dispose()


def build(database_url: str) -> Provider:
    """The housing provider: contracts looked up by number or buyer, and their texts by number."""
    seed(database_url)
    provider = Provider()
    contracts = provider.table(
        CONTRACTS, database_url, TABLE, columns=FIELDS, filters=("contract_no", "buyer_id_number")
    )

    @provider.document(CONTRACT_TEXTS)
    def contract_text(query: ProviderQuery) -> ProviderDocument | None:
        number = query.filters.get("contract_no")
        if not isinstance(number, str):
            raise QueryRefused("a contract text is looked up by contract_no")
        found = list(contracts(ProviderQuery(CONTRACTS, {"contract_no": number}, FIELDS, limit=1)))
        if not found:
            return None
        body = contract_pdf(found[0])
        return ProviderDocument(f"{number}.pdf", "application/pdf", len(body), _pieces(body, 1024))

    return provider


def _text(lines: Sequence[str]) -> bytes:
    """A PDF content stream showing ASCII lines of text, one under another."""
    escaped = [line.encode("ascii", "replace").replace(b"\\", b"\\\\").replace(b"(", b"\\(") for line in lines]
    shown = b" ".join(b"(" + line.replace(b")", b"\\)") + b") '" for line in escaped)
    return b"BT /F1 12 Tf 16 TL 72 780 Td " + shown + b" ET"


def contract_pdf(contract: Row) -> bytes:
    """A one-page PDF summarizing a filed contract (ASCII only, as the standard fonts have no Chinese)."""
    content = _text(
        [
            f"Housing sale contract {contract['contract_no']}",
            f"Filed on {contract['filed_on']}",
            f"Price (CNY) {contract['price']}",
            "Issued by the housing department's provider (demonstration data).",
        ]
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%b\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%b\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def start(identity: Path, database_url: str, listen: str = "127.0.0.1:0") -> tuple[grpc.Server, int]:
    """Serves the housing provider in this process; returns the started server and its port."""
    return serve(build(database_url), listen, identity)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--identity", type=Path, required=True, help="the system's identity directory")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: any free port)")
    parser.add_argument("--database", required=True, help="the front-end database URL, e.g. sqlite:///housing.db")
    args = parser.parse_args(argv)
    server, port = start(args.identity, args.database, args.listen)
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopping.wait()
    server.stop(grace=5).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
