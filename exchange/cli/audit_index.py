"""``exchange audit check-index``: the audit log's search indexes compared with its verified records.

A local command on the hub's home, like ``prune-audit``: it reads the store directly and checks the
log with the hub's public key (``log.pub`` in the home). ``--repair`` rewrites the indexes from the
records.
"""

from __future__ import annotations

import argparse
import sys

from exchange import pki
from exchange.auditlog.indexes import Difference, LogDoesNotVerify, check_index
from exchange.cli import report as out
from exchange.cli.audit import read_verifier
from exchange.config import Settings
from exchange.store import Store


def _print(difference: Difference) -> None:
    print(difference)


def check(args: argparse.Namespace, settings: Settings) -> int:
    verifier = read_verifier(pki.HubFiles(settings.home).audit_verifier)
    store = Store(settings.effective_database_url)
    found: list[Difference] = []
    try:
        report = check_index(store, verifier, repair=args.repair, found=found.append if args.json else _print)
    except LogDoesNotVerify as e:
        print(
            f"error: the audit log does NOT verify, so its indexes cannot be checked against it: {e.message}",
            file=sys.stderr,
        )
        return 1
    finally:
        store.close()
    checked = f"{report.size} entries checked against the signed log ({report.pruned} pruned)"
    data: dict[str, object] = {"entries": report.size, "pruned": report.pruned, "differences": report.differences}
    data |= {"entries_differing": report.entries_differing, "repaired": report.repaired}
    data["found"] = [str(d) for d in found]
    if not report.differences:
        out.emit(args, data, f"{checked}: the search indexes match the records")
        return 0
    if report.repaired:
        out.emit(args, data, f"{checked}: rewrote the indexes of {report.entries_differing} entries from their records")
        return 0
    out.emit(args, data)
    print(
        f"error: {checked}: {report.differences} differences in {report.entries_differing} entries; "
        "`exchange audit check-index --repair` rewrites the indexes from the records",
        file=sys.stderr,
    )
    return 1
