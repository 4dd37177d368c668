"""The tax bureau's REST endpoint for tax clearance (完税信息), as the hub's HTTP adapter reads it.

A stand-in for a department's existing JSON service: ``GET /clearance?taxpayer=<ID number>``
answers ``{"data": [...]}`` with the bureau's own key names, which the resource's binding maps to
the catalog's data items. Run it with ``python -m adapters.examples.tax --port 0``; it prints the
port it bound and serves until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

RESOURCE = "20501/350200000001"
# The bureau's own names for the fields (its system predates the catalog).
_PAYER = {"nsrmc": "林志强", "nsrsbh": "350203198507154313", "zl": "思明区湖滨南路88号2梯1203室"}
PAYMENTS: tuple[dict[str, object], ...] = (
    {"pzh": "335026260300012345", **_PAYER, "sz": "契税", "sjje": "97500.00", "jkrq": "2026-03-09"},
    {"pzh": "335026260300012346", **_PAYER, "sz": "印花税", "sjje": "1625.00", "jkrq": "2026-03-09"},
)
# How the hub's binding maps catalog items to these names.
FIELD_MAP = {
    "voucher_no": "pzh",
    "taxpayer_name": "nsrmc",
    "taxpayer_id_number": "nsrsbh",
    "property_address": "zl",
    "tax_kind": "sz",
    "amount": "sjje",
    "paid_on": "jkrq",
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/clearance":
            self.send_error(404)
            return
        taxpayer = parse_qs(url.query).get("taxpayer", [""])[0]
        body = json.dumps({"data": [p for p in PAYMENTS if p["nsrsbh"] == taxpayer]}, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the hub audits every call; this stand-in keeps no log of its own."""


def start(port: int = 0) -> tuple[ThreadingHTTPServer, int]:
    """Serves on 127.0.0.1 in a background thread; returns the server (``shutdown()`` stops it) and its port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, name="tax-endpoint", daemon=True).start()
    return server, server.server_address[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server, port = start(args.port)
    print(f"tax clearance endpoint on http://127.0.0.1:{port}/clearance", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
