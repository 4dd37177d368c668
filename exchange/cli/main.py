"""``exchange``: run the hub (init, migrate, serve, demo) and call it (registry, certificates, catalog)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from sqlalchemy.engine import make_url

from exchange import config, logs, models
from exchange.bootstrap import OperatorSeed, initialize, load_audit_signer
from exchange.cli import (
    audit,
    audit_index,
    audit_receipt,
    audit_search,
    commands,
    demo,
    evaluation,
    report,
    rights,
    userfiles,
)
from exchange.cli import exchange as exchange_verbs
from exchange.cli.backup import add_verbs as add_backup_verbs
from exchange.cli.certificates import add_verbs as add_certificate_verbs
from exchange.cli.client import describe
from exchange.cli.console import add_verbs as add_console_verbs
from exchange.cli.objections import add_verbs as add_objection_verbs
from exchange.cli.peers import add_verbs as add_peer_verbs
from exchange.cli.subscriptions import add_verbs as add_subscription_verbs
from exchange.errors import ExchangeError, InvalidArgument
from exchange.server import loop
from exchange.server.app import serve
from exchange.server.workers import supervise
from exchange.store import Store

Command = Callable[[argparse.Namespace, config.Settings], int]


def _init(args: argparse.Namespace, settings: config.Settings) -> int:
    seed = OperatorSeed(
        models.Department(
            args.department_code, args.department_name, args.division_code, models.AdministrativeLevel(args.level)
        ),
        args.operator,
        args.operator_name,
        args.operator_id_number or "",
    )
    identity = initialize(settings, seed)
    store_url = make_url(settings.effective_database_url).render_as_string(hide_password=True)
    report.emit(
        args,
        {"home": settings.home, "store": store_url, "operator": args.operator, "identity": identity.directory},
        f"hub initialized in {settings.home} (store: {store_url})",
        f"first operator {args.operator}: identity in {identity.directory}",
        f"next: exchange serve, then exchange --identity {identity.directory} whoami",
    )
    return 0


def _migrate(args: argparse.Namespace, settings: config.Settings) -> int:
    store = Store(settings.effective_database_url)
    try:
        store.db.migrate()
    finally:
        store.close()
    report.emit(args, {"schema": "current"}, "store schema is current")
    return 0


def _prune(args: argparse.Namespace, settings: config.Settings) -> int:
    signer = load_audit_signer(settings)
    made = dt.datetime.now(dt.UTC)
    store = Store(settings.effective_database_url)
    try:
        done = store.audit.prune(signer, made, settings.audit_retention_days)
    finally:
        store.close()
    cutoff = made - dt.timedelta(days=settings.audit_retention_days)
    lines = [
        f"pruned the detail of {done.entries} audit entries logged before {cutoff:%Y-%m-%d %H:%M:%S} UTC "
        f"(retention {settings.audit_retention_days} days); their leaf hashes stay, so the log still verifies"
    ]
    if done.statement is not None:
        lines.append(f"signed pruning statement: entries before {done.statement.up_to} pruned, carried by every export")
    up_to = done.statement.up_to if done.statement is not None else None
    data = {"pruned": done.entries, "cutoff": cutoff.isoformat(), "statement_up_to": up_to}
    report.emit(args, {**data, "retention_days": settings.audit_retention_days}, *lines)
    return 0


def _serve(args: argparse.Namespace, settings: config.Settings) -> int:
    if settings.workers > 1:  # a supervisor of worker processes, each a hub on the same port
        return supervise(settings)
    loop.run(settings, serve(settings))
    return 0


def _paged(p: argparse.ArgumentParser) -> None:
    p.add_argument("--page-size", type=int, default=0, help="items per page (default 50, at most 1000)")
    p.add_argument("--page-token", default="", help="token printed at the end of the previous page")


def _principal_choice(p: argparse.ArgumentParser, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--system", help="a system's code")
    group.add_argument("--person", help="a person's username")


def _verb(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, fn: Command, text: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text, description=text)
    p.set_defaults(func=fn)
    return p


def _registry_verbs(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    levels = [x.value for x in models.AdministrativeLevel]
    dept = top.add_parser("dept", help="departments").add_subparsers(dest="verb", required=True)
    p = _verb(dept, "create", commands.dept_create, "register a department (operator)")
    p.add_argument("--code", required=True, help="unified social credit code, 18 characters")
    p.add_argument("--name", required=True, help="the department's full name, e.g. 厦门市公安局")
    p.add_argument("--division-code", required=True, help="GB/T 2260 division code, e.g. 350200")
    p.add_argument("--level", required=True, choices=levels, help="administrative level")
    p.add_argument("--parent", help="code of the department above")
    _verb(dept, "get", commands.dept_get, "show a department").add_argument("code", help="the department's credit code")
    p = _verb(dept, "list", commands.dept_list, "list departments")
    p.add_argument("--parent", help="only the departments under this one (its code)")
    p.add_argument("--level", choices=levels, help="only departments of this level")
    _paged(p)

    system = top.add_parser("system", help="departmental systems").add_subparsers(dest="verb", required=True)
    p = _verb(system, "create", commands.system_create, "register a system (operator)")
    p.add_argument("--code", required=True, help="e.g. ga-rkxx")
    p.add_argument("--name", required=True, help="the system's name, e.g. 人口信息管理系统")
    p.add_argument("--department", required=True, help="owning department's code")
    p.add_argument("--description", default="", help="what the system does (optional)")
    _verb(system, "get", commands.system_get, "show a system").add_argument("code", help="the system's code")
    p = _verb(system, "list", commands.system_list, "list systems")
    p.add_argument("--department", help="only this department's systems (its code)")
    _paged(p)
    _person_verbs(top)


def _person_verbs(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    person = top.add_parser("person", help="people").add_subparsers(dest="verb", required=True)
    p = _verb(person, "create", commands.person_create, "register a person (operator)")
    p.add_argument("--username", required=True, help="login name, e.g. ga-steward")
    p.add_argument("--name", required=True, help="display name")
    p.add_argument("--department", required=True, help="the person's department (its code)")
    p.add_argument(
        "--id-number", required=True, help="citizen identity number (kept only as a keyed hash: one person, one key)"
    )
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=[r.value for r in models.Role],
        help="a role (repeat for more)",
    )
    for verb, text in (("assign-role", "give a person a role (operator)"), ("unassign-role", "take a role away")):
        p = _verb(person, verb, commands.person_role, text)
        p.add_argument("username", help="the person's username")
        p.add_argument("role", choices=[r.value for r in models.Role], help="the role")
        p.add_argument("--reason", default="", help="recorded in the audit log")
    _verb(person, "get", commands.person_get, "show a person").add_argument("username", help="the person's username")
    p = _verb(person, "list", commands.person_list, "list people")
    p.add_argument("--department", help="only this department's people (its code)")
    p.add_argument("--role", choices=[r.value for r in models.Role], help="only people with this role")
    _paged(p)

    cert = top.add_parser("cert", help="client certificates").add_subparsers(dest="verb", required=True)
    p = _verb(
        cert,
        "issue",
        commands.cert_issue,
        "make a key here and have the hub certify it (operator; a system: its department's owner steward)",
    )
    _principal_choice(p, required=True)
    p.add_argument("--out", type=Path, required=True, help="identity directory to write")
    p.add_argument("--days", type=int, default=0, help="validity in days (default: the hub's)")
    p = _verb(cert, "revoke", commands.cert_revoke, "revoke a certificate and its renewals (operator, or its holder)")
    p.add_argument("fingerprint", help="SHA-256 fingerprint, as `cert list` shows it")
    p.add_argument("--reason", required=True, help="e.g. 'key compromise'")
    p.add_argument(
        "--keep-renewals",
        action="store_true",
        help="leave the certificates renewed from it valid (retiring a certificate you renewed); "
        "by default they are revoked with it, as for a key that leaked",
    )
    p = _verb(cert, "list", commands.cert_list, "list issued certificates")
    _principal_choice(p, required=False)
    _paged(p)
    add_certificate_verbs(top, _verb, cert)
    add_console_verbs(top, _verb, cert)


def _catalog_verbs(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    catalog = top.add_parser("catalog", help="the resource catalog").add_subparsers(dest="verb", required=True)
    p = _verb(catalog, "load", commands.catalog_load, "create or update entries from a YAML/JSON file (steward)")
    p.add_argument("file", type=Path, help="a YAML or JSON file with a top-level `resources` list")
    p.add_argument("--draft", action="store_true", help="create new entries as drafts")
    p.add_argument("--reason", default="", help="recorded in each entry's history")
    p = _verb(catalog, "get", commands.catalog_get, "show an entry")
    p.add_argument("code", help="resource code, e.g. 10101/350200000001")
    p.add_argument("--version", type=int, default=0, help="a past version")
    p = _verb(catalog, "list", commands.catalog_list, "list and search entries")
    p.add_argument("--department", help="only this department's entries (its code)")
    p.add_argument("--share-type", choices=[x.value for x in models.ShareType], help="only entries shared this way")
    p.add_argument("--status", choices=[x.value for x in models.ResourceStatus], help="only entries in this status")
    p.add_argument("--text", help="words in code, name, summary or classification")
    p.add_argument("--field", help="entries with a data item of this name or title")
    p.add_argument("--subscribable", action="store_true", help="only entries that can be subscribed to")
    p.add_argument("--home-hub", help="only entries homed at this hub (its division code; federation)")
    p.add_argument(
        "--home-level", choices=config.HUB_LEVELS, help="only entries homed at hubs of this level (federation)"
    )
    _paged(p)
    p = _verb(catalog, "history", commands.catalog_history, "an entry's versions")
    p.add_argument("code", help="resource code")
    _paged(p)
    for verb in ("publish", "suspend", "retire"):
        p = _verb(catalog, verb, commands.catalog_status, f"{verb} an entry (steward)")
        p.add_argument("code", help="resource code")
        p.add_argument("--reason", default="", required=verb != "publish", help="recorded in the entry's history")
        p.add_argument(
            "--expected-version", type=int, default=0, help="refuse if the entry is no longer at this version"
        )


def _rights_verbs(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    request = top.add_parser("request", help="share requests").add_subparsers(dest="verb", required=True)
    p = _verb(request, "apply", rights.request_apply, "apply for a resource (consumer)")
    p.add_argument("--resource", required=True, help="resource code")
    p.add_argument("--purpose", required=True, help="the matter, e.g. 不动产转移登记")
    p.add_argument("--legal-basis", default="", help="required for conditional resources")
    p.add_argument("--field", action="append", required=True, help="a field needed (repeat; minimum necessary)")
    p.add_argument("--system", action="append", required=True, help="a system of yours that will read (repeat)")
    p.add_argument("--start", help="YYYY-MM-DD (default today)")
    p.add_argument("--end", help="YYYY-MM-DD (default a year after the start)")
    p.add_argument("--daily-calls", type=int, default=100, help="expected calls per day")
    _verb(request, "get", rights.request_get, "show a request and its history").add_argument(
        "id", help="the request's id"
    )
    p = _verb(request, "list", rights.request_list, "list requests")
    p.add_argument(
        "--view",
        choices=["all", "mine", "for-me"],
        default="all",
        help="mine: your department's requests; for-me: those awaiting your move (to decide, grant or settle; a"
        " consumer: refusals it may dispute, here or at another hub) (default all you may see)",
    )
    p.add_argument("--status", choices=[x.value for x in models.ShareRequestStatus], help="only in this status")
    p.add_argument("--resource", help="only requests for this resource (its code)")
    p.add_argument("--consumer", help="consumer department code")
    p.add_argument("--overdue", action="store_true", help="only requests past their 10-working-day due date")
    _paged(p)
    p = _verb(request, "approve", rights.request_approve, "approve a pending request (owner steward)")
    p.add_argument("id", help="the request's id")
    p.add_argument("--field", action="append", help="grant only these fields (repeat; default: all requested)")
    p.add_argument("--end", help="a shorter end date, YYYY-MM-DD")
    p.add_argument("--mask", action="append", help="FIELD=KIND, KIND one of none, id_number, name, phone, full")
    p.add_argument(
        "--verify-masked",
        action="append",
        metavar="FIELD",
        help="a masked field the consumer may filter on, to verify a value it holds (bounded lookups; repeatable)",
    )
    p.add_argument("--reason", default="", help="recorded in the request's history")
    for verb, fn, text in (
        ("refuse", rights.request_refuse, "refuse a pending request (owner steward)"),
        ("dispute", rights.request_dispute, "dispute a refusal (consumer)"),
    ):
        p = _verb(request, verb, fn, text)
        p.add_argument("id", help="the request's id")
        p.add_argument("--reason", required=True, help="why, for the other side and the audit log")
    p = _verb(request, "decide", rights.request_decide, "decide a dispute, finally (share manager)")
    p.add_argument("id", help="the request's id")
    p.add_argument("outcome", choices=["grant", "uphold"], help="grant the request, or uphold the refusal")
    p.add_argument("--reason", required=True, help="why, for both sides and the audit log")
    p.add_argument("--daily-quota", type=int, default=0, help="with grant: calls per day (default: the expected)")

    grant = top.add_parser("grant", help="grants").add_subparsers(dest="verb", required=True)
    p = _verb(grant, "issue", rights.grant_issue, "issue the grant for an approved request (share manager)")
    p.add_argument("request_id", help="the approved request's id")
    p.add_argument("--daily-quota", type=int, default=0, help="calls per day (default: the expected volume)")
    p.add_argument("--rate", type=int, default=0, help="calls per second (default: the hub's)")
    p.add_argument("--reason", default="", help="recorded in the grant's history")
    for verb in ("suspend", "resume", "revoke"):
        p = _verb(grant, verb, rights.grant_change, f"{verb} a grant (owner steward or share manager)")
        p.add_argument("id", help="the grant's id")
        p.add_argument("--reason", required=True, help="why, for the consumer and the audit log")
    _verb(grant, "get", rights.grant_get, "show a grant and its history").add_argument("id", help="the grant's id")
    p = _verb(grant, "list", rights.grant_list, "list grants")
    p.add_argument("--resource", help="only grants of this resource (its code)")
    p.add_argument("--consumer", help="only grants to this department (its code)")
    p.add_argument("--status", choices=[x.value for x in models.GrantStatus], help="only grants in this status")
    _paged(p)


SEARCH_FILTERS = {
    "since": "records logged at or after this time, ISO 8601: 2026-03-01 or 2026-03-01T08:00+08:00 (UTC if no zone)",
    "until": "records logged before this time, same format as --since",
    "department": "records by principals of this department (its code)",
    "actor": "records by this principal, e.g. person/ga-steward or system/ga-rkxx",
    "resource": "records about this resource (its code)",
    "purpose": "exchanges for this purpose",
    "outcome": "records with this outcome: ok, allowed, denied or failed",
    "exchange": "the record(s) of one exchange id, as an error or answer printed it",
}


def _audit_verbs(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = top.add_parser("audit", help="the audit log").add_subparsers(dest="verb", required=True)
    p = _verb(verbs, "checkpoint", audit.checkpoint, "the newest signed checkpoint (or one of --size)")
    p.add_argument("--size", type=int, default=0, help="the signed checkpoint of this many entries (default: newest)")
    p.add_argument("--out", type=Path, help="write the signed note alone to this file (for verify --checkpoint)")
    p.add_argument(
        "--witnessed", action="store_true", help="the newest checkpoint peer hubs cosigned, with their cosignatures"
    )
    p = _verb(verbs, "search", audit_search.search, "search records (auditors: all; owners, consumers: their own)")
    for flag, text in SEARCH_FILTERS.items():
        p.add_argument(f"--{flag}", help=text)
    p.add_argument("--subject", help="a data subject's ID number or code: who looked at this record")
    p.add_argument("--key", type=Path, help="the log's public key file (log.pub): check every hit's inclusion proof")
    p.add_argument(
        "--verify",
        action="store_true",
        help="with --subject or --resource (auditors): also read the log and report the records the answer left out",
    )
    p.add_argument("--log", type=Path, help="with --verify: an export to compare with (default: fetch the log)")
    _paged(p)
    for verb, fn, text in (
        ("proof", audit.proof_check, "check one record's inclusion proof here"),
        ("receipt", audit.receipt, "write a self-contained proof for one record"),
    ):
        p = _verb(verbs, verb, fn, text)
        p.add_argument("seq", type=int, help="the record's entry number (the seq column of audit search)")
        p.add_argument("--size", type=int, default=0, help="tree size (default: the newest checkpoint's)")
        if verb == "proof":
            p.add_argument("--key", type=Path, required=True, help="the log's public key file (log.pub)")
        else:
            p.add_argument("--out", type=Path, required=True, help="the receipt file to write (JSON)")
    p = _verb(
        verbs, "cross-receipt", audit_receipt.cross_receipt,
        "a cross-hub receipt of one exchange (the parts of every hub it crossed, fetched here), or --merge",
    )  # fmt: skip
    p.add_argument("exchange_id", nargs="?", default="", help="this hub's id of the exchange")
    p.add_argument("--own", action="store_true", help="only this hub's part (the other hubs' are not fetched)")
    p.add_argument("--merge", type=Path, nargs="+", help="join receipt parts (one per hub) into one receipt")
    p.add_argument("--out", type=Path, required=True, help="the receipt file to write (JSON)")
    p = _verb(verbs, "consistency", audit.consistency, "check that a newer checkpoint extends an older one")
    p.add_argument("from_size", type=int, help="size of the older checkpoint")
    p.add_argument("--to", dest="to_size", type=int, default=0, help="size of the newer (default: the newest)")
    p.add_argument("--key", type=Path, required=True, help="the log's public key file (log.pub)")
    p = _verb(
        verbs,
        "report",
        evaluation.offline,
        "recompute the evaluation report from an export, offline, after verifying it with the log's key",
    )
    evaluation.add_offline_arguments(p)
    p = _verb(verbs, "export", audit.export, "write the log (or its tail) for offline verification (auditors)")
    p.add_argument("--out", type=Path, required=True, help="the file to write, e.g. log.jsonl")
    p.add_argument("--from", dest="from_seq", type=int, default=0, help="first entry (default: the first)")
    p = _verb(
        verbs,
        "check-index",
        audit_index.check,
        "compare the search indexes with the verified records, here on the hub's home (operator)",
    )
    p.add_argument("--repair", action="store_true", help="rewrite the indexes from the records")
    for verb, fn, text in (
        ("verify", audit.verify, "verify an export offline"),
        ("verify-receipt", audit.verify_receipt_file, "verify a receipt offline"),
    ):
        p = _verb(verbs, verb, fn, text)
        p.add_argument("file", type=Path, help="the export (audit export --out)" if verb == "verify" else "the receipt")
        p.add_argument("--key", type=Path, required=verb == "verify", help="the log's public key file (log.pub)")
        if verb == "verify-receipt":
            p.add_argument(
                "--trust",
                type=Path,
                action="append",
                default=[],
                help="for a cross-hub receipt: a file of trusted keys, one a line: each hub's log key, and each "
                "witness key followed by the origin of the hub it belongs to (repeatable)",
            )
        if verb == "verify":
            p.add_argument(
                "--checkpoint",
                type=Path,
                help="a signed checkpoint note you already hold: the export must reach it and agree with it",
            )


OVERVIEW = """\
Run a data exchange hub, and call it.

on the hub's host (with its --home):
  init, migrate, serve, demo, backup, restore, prune-audit, ca, audit check-index
calling the hub (with --identity, as a person or a system):
  whoami, dept, system, person, cert, console, catalog, request, grant, objection, audit,
  report, query, stream, document, subscribe, bind, binding, peer
offline, with the audit log's public key (log.pub):
  audit verify, audit verify-receipt, audit report, verify-provenance

Responses print as tables; add --json (before the command) for JSON.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange",
        description=OVERVIEW,
        epilog="`exchange COMMAND --help` shows a command's own verbs and options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (default: exchange.toml if present)")
    parser.add_argument("--home", type=Path, help="the hub's home directory (EXCHANGE_HOME)")
    parser.add_argument("--hub", dest="hub_address", help="host:port of the hub (EXCHANGE_HUB_ADDRESS)")
    parser.add_argument("--identity", type=Path, help="identity directory to call with (EXCHANGE_IDENTITY)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print what the command reports as JSON instead of tables (all but serve and demo, which run on)",
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _verb(top, "init", _init, "create the hub's CA, server certificate, schema and first operator")
    p.add_argument("--department-code", required=True, help="the operating authority's credit code")
    p.add_argument("--department-name", required=True, help="the operating authority's name, e.g. 厦门市大数据管理局")
    p.add_argument("--division-code", required=True, help="its GB/T 2260 division code, e.g. 350200")
    p.add_argument(
        "--level",
        default="city",
        help="its administrative level (default city)",
        choices=[x.value for x in models.AdministrativeLevel],
    )
    p.add_argument("--operator", default="operator", help="the first operator's username")
    p.add_argument("--operator-name", default="Hub operator", help="the first operator's display name")
    p.add_argument("--operator-id-number", help="the first operator's citizen identity number (kept as a keyed hash)")
    _verb(top, "migrate", _migrate, "bring the store's schema up to date")
    _verb(
        top,
        "prune-audit",
        _prune,
        "drop audit detail older than audit_retention_days (leaf hashes stay), under a signed pruning statement",
    )
    # Backup and restore of the store (exchange/cli/backup.py).
    add_backup_verbs(top, _verb)
    p = _verb(top, "serve", _serve, "run the hub until SIGTERM or Ctrl-C")
    p.add_argument("--listen", help="host:port (EXCHANGE_LISTEN)")
    p.add_argument("--metrics-listen", help="host:port for /metrics, /healthz, /readyz (EXCHANGE_METRICS_LISTEN)")
    p.add_argument(
        "--insecure-dev", action="store_true", default=None, help="plaintext, no certificates: development only"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="hub processes on the one port, under a supervisor (EXCHANGE_WORKERS, default 1; "
        "more than 1 needs PostgreSQL and a fixed port)",
    )
    p = _verb(top, "demo", demo.run, "start a hub with demo departments and catalog, and show them")
    p.add_argument("--once", action="store_true", help="stop after the tour instead of serving on")
    p.add_argument("--listen", help="host:port (default 127.0.0.1:7443)")
    p.add_argument("--metrics-listen", help="host:port for /metrics, /healthz, /readyz (default 127.0.0.1:9464)")
    p.add_argument("--console-listen", help="host:port for the web console (default 127.0.0.1:7444)")
    _verb(top, "whoami", commands.whoami, "who the hub takes you to be")
    _registry_verbs(top)
    _catalog_verbs(top)
    _rights_verbs(top)
    add_objection_verbs(top, _verb)
    add_subscription_verbs(top, _verb)
    add_peer_verbs(top, _verb)
    _audit_verbs(top)
    p = _verb(
        top, "report", evaluation.report, "the evaluation report of a period, per department (auditors, share manager)"
    )
    evaluation.add_arguments(p)
    exchange_verbs.add_verbs(top, _verb)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {
            k: getattr(args, k, None)
            for k in ("home", "hub_address", "identity", "listen", "metrics_listen", "insecure_dev", "workers")
        }
        settings = config.load(args.config, overrides=overrides)
        logs.configure(settings.log_level, settings.log_format)
        code: int = args.func(args, settings)
        return code
    except KeyboardInterrupt:
        return 130
    except (ExchangeError, grpc.RpcError, OSError, ValueError) as e:
        message, status = _explain(e)
        print(f"error: {message}", file=sys.stderr)
        return status


def _explain(e: Exception) -> tuple[str, int]:
    """The CLI's one boundary for failures: what to print after ``error:``, and the exit code.

    1 is the hub's refusal; 2 is a mistake on this side: bad input, a file that cannot be read or written
    (OSError), a file's content that cannot be decoded (ValueError) where the verb said nothing more precise.
    """
    if isinstance(e, InvalidArgument):
        lines = [f"  - {v.field}: {v.description}" for v in e.violations]
        return ("\n".join(["invalid input:", *lines]) if lines else e.message), 2
    if isinstance(e, ExchangeError):
        return e.message, 2
    if isinstance(e, grpc.RpcError):
        return describe(e), 1
    if isinstance(e, OSError):
        return userfiles.os_problem(e), 2
    return f"cannot use the input given: {e}", 2


if __name__ == "__main__":
    sys.exit(main())
