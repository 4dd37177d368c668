"""``exchange audit search``: the hub's answer, checked here.

Every hit is checked from its own bytes: the record hashes to its leaf and matches the filter asked
for (and, with ``--key log.pub``, its inclusion proof leads to the answer's signed checkpoint).
``--verify`` also reads the log itself (an export, fetched or given) and reports the records that
match but were not returned: the hub's search indexes are not covered by the log, so only this, or
``exchange audit check-index`` on the hub's side, shows an answer is complete.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from google.protobuf.timestamp_pb2 import Timestamp

from audit.matching import PENDING, PROVED, HitError, RecordFilter, check_hit, compare, matches_in_log
from audit.merkle import ProofError
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.verify import VerifyError
from exchange.cli import tables, userfiles
from exchange.cli.audit import read_verifier
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.v1 import audit_pb2 as pb

VERIFY_PAGE = 1000


def _when(value: str | None, flag: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument.of([FieldViolation(flag, f"{value!r} is not a date or time (ISO 8601)")]) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _asked(args: argparse.Namespace) -> tuple[pb.SearchRecordsRequest, RecordFilter]:
    """The request to send and the filter its hits must match (the subject's hash comes with the answer)."""
    f = RecordFilter(
        since=_when(args.since, "--since"),
        until=_when(args.until, "--until"),
        department=args.department or "",
        actor=args.actor or "",
        resource=args.resource or "",
        purpose=args.purpose or "",
        outcome=args.outcome or "",
        exchange_id=args.exchange or "",
    )
    request = pb.SearchRecordsRequest(
        page_size=args.page_size,
        page_token=args.page_token,
        department_code=f.department,
        actor=f.actor,
        resource_code=f.resource,
        purpose=f.purpose,
        outcome=f.outcome,
        exchange_id=f.exchange_id,
        data_subject=args.subject or "",
    )
    for name, when in (("since", f.since), ("until", f.until)):
        if when is not None:
            stamp = Timestamp()
            stamp.FromDatetime(when)
            getattr(request, name).CopyFrom(stamp)
    return request, f


@dataclass
class Checked:
    """What the checks of an answer's pages found."""

    rows: list[list[str]] = field(default_factory=list)
    entries: list[dict[str, object]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    proved: int = 0
    pending: int = 0
    # The smallest checkpoint size among the pages: entries below it are provable in every page.
    bound: int | None = None


def _head(response: pb.SearchRecordsResponse, verifier: Verifier | None, checked: Checked) -> Checkpoint | None:
    if verifier is None:
        return None
    size = response.checkpoint.size if response.HasField("checkpoint") else 0
    checked.bound = size if checked.bound is None else min(checked.bound, size)
    if not response.HasField("checkpoint"):
        return Checkpoint(verifier.name, 0, b"")  # nothing signed yet: every hit is pending
    try:
        return Checkpoint.parse(open_note(response.checkpoint.note, verifier))
    except NoteError as e:
        checked.problems.append(f"the answer's checkpoint does not verify with the log's key: {e}")
        checked.bound = 0
        return None


def _check_page(
    response: pb.SearchRecordsResponse, args: argparse.Namespace, f: RecordFilter, verifier: Verifier | None
) -> tuple[RecordFilter, Checked]:
    """Checks one page's hits into a fresh Checked; returns the filter completed with the subject's hash."""
    checked = Checked()
    if args.subject:
        if not response.subject_hash:
            checked.problems.append("the hub did not say which keyed subject hash it searched for")
        f = replace(f, subject_hash=response.subject_hash or "?")
    head = _head(response, verifier, checked)
    for e in response.entries:
        try:
            status = check_hit(e.seq, e.leaf_hash, e.record, list(e.proof), head=head, f=f)
        except HitError as problem:
            checked.problems.append(str(problem))
            status = "DOES NOT CHECK"
        checked.proved += status == PROVED
        checked.pending += status == PENDING
        checked.seqs.append(e.seq)
        checked.rows.append(_row(e, status))
        checked.entries.append(_entry(e, status))
    return f, checked


def _row(e: pb.AuditEntry, status: str) -> list[str]:
    r = json.loads(e.record) if e.record else {}
    if not isinstance(r, dict):
        r = {}
    subject = r.get("subject", "") or r.get("resource", "")
    actor = str(r.get("actor", ""))
    if r.get("key_holder"):  # a system's exchange: who holds its key
        actor += f" (key held by {r['key_holder']})"
    cells = (r.get("time", "(pruned)"), actor, r.get("action", ""), subject, r.get("outcome", ""))
    return [str(e.seq), *map(str, cells), str(r.get("reason", "")), status]


def _entry(e: pb.AuditEntry, status: str) -> dict[str, object]:
    """One hit for ``--json``: its record as the log holds it (text: its bytes hash to the leaf), hashes in hex."""
    return {
        "seq": e.seq,
        "record": e.record or None,
        "leaf_hash": e.leaf_hash.hex(),
        "proof": [h.hex() for h in e.proof],
        "status": status,
    }


def _summary(checked: Checked) -> dict[str, object]:
    return {"checked": not checked.problems, "proved": checked.proved, "pending": checked.pending}


def _report(args: argparse.Namespace, checked: Checked, verifier: Verifier | None) -> int:
    for problem in checked.problems:
        print(f"error: SEARCH ANSWER DOES NOT CHECK: {problem}", file=sys.stderr)
    if checked.problems:
        return 1
    if args.json:
        return 0
    if verifier is None:
        print("every record matches the search; proofs not checked (add --key log.pub)")
    else:
        note = f", {checked.pending} newer than the signed checkpoint (not yet provable)" if checked.pending else ""
        print(f"every record matches the search; {checked.proved} proved in the signed log{note}")
    return 0


def search(args: argparse.Namespace, settings: Settings) -> int:
    verifier = read_verifier(args.key) if args.key else None
    if args.log is not None:
        userfiles.check_readable(args.log, "the export")
    if args.verify:
        return _search_verified(args, settings, verifier)
    request, f = _asked(args)
    with HubClient(settings, args.identity) as hub:
        response = hub.call(hub.audit.SearchRecords, request)
    _, checked = _check_page(response, args, f, verifier)
    if args.json:
        data = {"entries": checked.entries, "next_page_token": response.next_page_token, **_summary(checked)}
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return _report(args, checked, verifier)
    headers = ["seq", "time", "actor", "action", "subject", "outcome", "reason", "proof"]
    print(tables.render(headers, checked.rows))
    if response.next_page_token:
        print(f"(more: add --page-token {response.next_page_token})")
    return _report(args, checked, verifier)


def _search_verified(args: argparse.Namespace, settings: Settings, verifier: Verifier | None) -> int:
    """Every page of the answer checked, then compared with the verified log: what is missing, what is extra."""
    if verifier is None:
        raise InvalidArgument.of([FieldViolation("--key", "--verify checks with the log's public key (log.pub)")])
    if not (args.subject or args.resource):
        raise InvalidArgument.of([FieldViolation("--verify", "needs --subject or --resource")])
    request, f = _asked(args)
    request.page_size, request.page_token = VERIFY_PAGE, ""
    with HubClient(settings, args.identity) as hub:
        f, checked = _all_pages(hub, request, args, f, verifier)
        with _log_lines(args, hub) as lines:
            try:
                log = matches_in_log(lines, verifier, f)
            except (VerifyError, ProofError) as e:
                where = f"the log in {args.log}" if args.log is not None else "the log fetched"
                print(
                    f"error: {where} does NOT verify, so it cannot show what the search left out: {e}", file=sys.stderr
                )
                return 1
            except UnicodeError:
                raise InvalidArgument(f"{args.log} is not an export of the audit log: not UTF-8 text") from None
    found = compare(log, checked.seqs, checked.bound or 0)
    for seq in found.missing:
        checked.problems.append(f"entry {seq} matches the search in the verified log, but the answer left it out")
    for seq in found.extra:
        checked.problems.append(f"entry {seq} is in the answer, but does not match the search in the verified log")
    if args.json:
        data = {
            "answer": checked.seqs,
            "compared": {"start": found.start, "end": found.end},
            "left_out": list(found.missing),
            "extra": list(found.extra),
            **_summary(checked),
        }
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(
            f"{len(checked.seqs)} records in the answer; compared with the verified log over entries "
            f"{found.start}..{found.end - 1}: {len(found.missing)} left out, {len(found.extra)} extra"
        )
    return _report(args, checked, verifier)


def _all_pages(
    hub: HubClient, request: pb.SearchRecordsRequest, args: argparse.Namespace, f: RecordFilter, verifier: Verifier
) -> tuple[RecordFilter, Checked]:
    total = Checked()
    while True:
        response = hub.call(hub.audit.SearchRecords, request)
        f, page = _check_page(response, args, f, verifier)
        total.seqs += page.seqs
        total.problems += page.problems
        total.proved += page.proved
        total.pending += page.pending
        total.bound = page.bound if total.bound is None else min(total.bound, page.bound or 0)
        if not response.next_page_token:
            return f, total
        request.page_token = response.next_page_token


@contextmanager
def _log_lines(args: argparse.Namespace, hub: HubClient) -> Iterator[Iterator[str]]:
    """The log's lines: from the export file given, or fetched from the hub (auditors)."""
    if args.log is not None:
        with args.log.open(encoding="utf-8") as lines:
            yield lines
        return
    yield _fetched(hub)


def _fetched(hub: HubClient) -> Iterator[str]:
    for chunk in hub.audit.ExportLog(pb.ExportLogRequest(), timeout=max(hub.timeout, 3600)):
        for line in chunk.lines.split("\n")[:-1]:
            yield line + "\n"
