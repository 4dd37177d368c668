"""``exchange demo``: a hub with the flat-sale scenario's departments and catalog, shown step by step.

The demo runs in its own home (var/demo), rebuilt on every run, and calls the
hub exactly as departments would: over mutual TLS, each with its own
certificate. After the tour it keeps serving so the CLI can be tried against
it, until Ctrl-C (or at once with --once).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import logging
import shutil
import signal
from dataclasses import replace
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from audit.note import Verifier
from audit.verify import verify_export
from exchange import logs, pki, validation
from exchange import models as m
from exchange import wire as w
from exchange.auditlog.log import AuditLog
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli import commands, demo_federation, demo_subscriptions, evaluation, files, tables
from exchange.cli import demo_exchange as flat_sale
from exchange.cli import objections as objections_cli
from exchange.cli import rights as rights_cli
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import FailedPrecondition
from exchange.server import loop as event_loop
from exchange.server.app import Hub
from exchange.server.console import console_base_url
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import console_pb2 as cnpb
from exchange.v1 import objection_pb2 as opb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as rpb_r
from policy.decision import DecisionPoint, Question

DATA = Path(__file__).resolve().parent.parent / "demo"
MARKER = ".exchange-demo"
FLAT_SALE = "不动产转移登记"
# The demo's departments serve their backends on this machine.
LOOPBACK = ("127.0.0.0/8", "::1")
# Where the demo serves the web console unless told otherwise (--console-listen, or the console_listen setting).
CONSOLE_LISTEN = "127.0.0.1:7444"


def sample_id_number(name: str) -> str:
    """A made-up citizen identity number for a demo or test person: well-formed, derived from the name, nobody's."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    born = dt.date(1960, 1, 1) + dt.timedelta(days=h % 15000)
    body = f"350203{born:%Y%m%d}{h // 15000 % 1000:03d}"
    return body + validation.id_number_check(body)


def _fresh_home(home: Path) -> None:
    """Empties the demo's home, refusing to touch a directory the demo did not make."""
    if home.exists():
        if not (home / MARKER).exists():
            raise FailedPrecondition(f"{home} exists and is not a demo home; choose another with --home")
        shutil.rmtree(home)
    home.mkdir(parents=True, mode=0o700)
    (home / MARKER).write_text("made by `exchange demo`; rebuilt on every run\n")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # The tour prints what happens; the hub's per-exchange and per-change log lines would repeat it.
    logs.configure(settings.log_level, "text")
    quiet = [logging.getLogger(name) for name in ("exchange.services.exchange", "exchange.store.recorded")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        return _run(args, settings)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    home = args.home or Path("var/demo")
    settings = replace(settings, home=home, database_url="", listen=args.listen or settings.listen)
    console = getattr(args, "console_listen", None) or settings.console_listen or CONSOLE_LISTEN
    settings = replace(settings, console_listen=console)
    # The departments' demo backends run on this machine, and the tax bureau's REST endpoint speaks plain http.
    settings = replace(
        settings,
        backend_hosts=(*settings.backend_hosts, *LOOPBACK),
        allow_plain_http=True,
        allow_sqlite_backends=True,  # the public security bureau's front-end database is a SQLite file here
        subscription_poll_seconds=0.25,  # the tour waits for changes to arrive: the hub looks at the sources often
    )
    settings = demo_federation.city_settings(settings)  # the city hub of a federation, with a county beside it
    _fresh_home(home)
    members = files.read_members(DATA / "members.yaml")
    specs = files.read_catalog(DATA / "catalog.yaml")
    undo = logs.to_file(home / "hub.log")
    print(f"(the hub's own log goes to {home / 'hub.log'}; only its errors show here)")
    try:
        operator = initialize(
            settings, OperatorSeed(members.authority, members.operator.username, members.operator.display_name)
        )
        county = demo_federation.county_settings(settings)
        seed = OperatorSeed(demo_federation.COUNTY_AUTHORITY, "smop-admin", "何运维")
        county_operator = initialize(county, seed).directory
        tour = _serve_tour(settings, members, specs, (operator.directory, county_operator), args.once)
        return event_loop.run(settings, tour)
    finally:
        undo()


async def _serve_tour(
    settings: Settings, members: files.Members, specs: list[m.ResourceSpec], operators: tuple[Path, Path], once: bool
) -> int:
    operator, county_operator = operators
    hub = Hub(settings)
    port = await hub.start()
    settings = replace(settings, hub_address=f"localhost:{port}")
    tour = Tour(settings, members, operator, hub.decisions, hub.audit)
    county = Hub(demo_federation.county_settings(settings))
    try:
        county_port = await county.start()
        await asyncio.to_thread(tour.run, specs)
        city_side = demo_federation.Side(settings, operator, _federation_port(hub), hub.audit.flush)
        county_settings = replace(county.settings, hub_address=f"localhost:{county_port}")
        county_side = demo_federation.Side(
            county_settings, county_operator, _federation_port(county), county.audit.flush
        )
        federation = demo_federation.FederationTour(city_side, county_side, tour.identity_of, sample_id_number)
        await asyncio.to_thread(federation.run, 17)
        await asyncio.to_thread(tour.console_links, port, hub.console_port)
        if not once:
            print(f"\nThe hub is serving on localhost:{port}. In another terminal, for example:")
            print(f"  .venv/bin/exchange --hub localhost:{port} --identity {operator} catalog list")
            print(f"  .venv/bin/exchange --hub localhost:{port} --identity {operator} dept list")
            system = settings.home / "identities" / "system-bdc-djxt"
            print(
                f"  .venv/bin/exchange --hub localhost:{port} --identity {system} query 10101/350200000001"
                f" --purpose {FLAT_SALE} --filter id_number={flat_sale.BUYER_ID} --field name --field id_number"
            )
            print("Follow the tax bureau's subscription to new companies (one registration waits for it):")
            print(tour.subscriptions.follow_hint(port))
            print("Press Ctrl-C to stop.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        await county.stop(grace=2)
        await hub.stop(grace=2)
        await asyncio.to_thread(tour.backends.stop)
    return 0


def _federation_port(hub: Hub) -> int:
    assert hub.federation is not None, "the demo's hubs federate"
    return hub.federation.port


def _step(title: str) -> None:
    print(f"\n== {title}")


class Tour:
    """The demo's story, told through real calls to the hub."""

    def __init__(
        self,
        settings: Settings,
        members: files.Members,
        operator: Path,
        decisions: DecisionPoint,
        audit_log: AuditLog,
    ) -> None:
        self.settings = settings
        self.audit_log = audit_log
        self.decisions = decisions
        self.members = members
        self.operator = operator
        self.home = pki.HubFiles(settings.home)
        self.ca_pem = pki.IdentityFiles(operator).ca.read_bytes()
        # The departments' backends, serving for as long as the demo hub does.
        self.backends = flat_sale.Backends(settings.home)
        # What the registry's system received, per resource: what it may object to.
        self.receipts: dict[str, flat_sale.Receipt] = {}
        # Market regulation's and the registry's tables that tell their changes, and the tour's subscriptions.
        self.subscriptions = demo_subscriptions.SubscriptionTour(self, demo_subscriptions.Sources(settings.home))

    def client(self, identity: Path) -> HubClient:
        return HubClient(self.settings, identity)

    def identity_of(self, username: str) -> Path:
        return self.home.identity(m.PrincipalRef(m.PrincipalKind.PERSON, username)).directory

    def run(self, specs: list[m.ResourceSpec]) -> None:
        self.register()
        self.publish(specs)
        self.browse()
        self.refusals()
        self.history()
        self.rights()
        self.exchange()
        self.objection()
        self.subscriptions.run(first_step=12)
        self.audit()
        self.report()

    def register(self) -> None:
        _step(
            "1. The operator registers the departments, their systems and people, and certifies the people;\n"
            "   each department's steward certifies its own systems (an operator never does: it reads no data)"
        )
        with self.client(self.operator) as hub:
            for d in self.members.departments:
                hub.call(hub.registry.CreateDepartment, rpb.CreateDepartmentRequest(department=w.department_to_wire(d)))
            for p in self.members.people:
                request = rpb.CreatePersonRequest(person=w.person_to_wire(p), id_number=sample_id_number(p.username))
                hub.call(hub.registry.CreatePerson, request)
                ref = m.PrincipalRef(m.PrincipalKind.PERSON, p.username)
                commands.issue_identity(hub, ref, self.home.identity(ref).directory, self.ca_pem)
            for s in self.members.systems:
                hub.call(hub.registry.CreateSystem, rpb.CreateSystemRequest(system=w.system_to_wire(s)))
            departments = hub.call(hub.registry.ListDepartments, rpb.ListDepartmentsRequest()).departments
            people = hub.call(hub.registry.ListPeople, rpb.ListPeopleRequest()).people
        for s in self.members.systems:
            with self.client(self.identity_of(self.steward_of(s.department_code))) as hub:
                ref = m.PrincipalRef(m.PrincipalKind.SYSTEM, s.code)
                commands.issue_identity(hub, ref, self.home.identity(ref).directory, self.ca_pem)
        print(tables.render(commands.DEPARTMENT_HEADERS, commands.department_rows(list(departments))))
        print()
        print(tables.render(commands.PERSON_HEADERS, commands.person_rows(list(people))))
        print(
            f"\n{len(self.members.systems)} systems and {len(self.members.people)} people hold certificates "
            f"in {self.home.home / 'identities'} (keys made locally, mode 0600)."
        )

    def steward_of(self, department: str) -> str:
        return next(
            p.username
            for p in self.members.people
            if p.department_code == department and m.Role.OWNER_STEWARD in p.roles
        )

    def publish(self, specs: list[m.ResourceSpec]) -> None:
        _step("2. Each department's steward publishes its own catalog entries")
        for department in dict.fromkeys(s.department_code for s in specs):
            steward = self.steward_of(department)
            own = [s for s in specs if s.department_code == department]
            with self.client(self.identity_of(steward)) as hub:
                commands.load_catalog(hub, own, publish=True, reason="首次编目")
            print(f"  {steward:<14} published {len(own)} entr{'y' if len(own) == 1 else 'ies'} of {department}")

    def browse(self) -> None:
        clerk = self.identity_of("bdc-clerk")
        with self.client(clerk) as hub:
            _step("3. The catalog, as the real-estate registry's clerk sees it")
            self._list(hub, cpb.ListResourcesRequest())
            _step("4. Search: entries with an ID-number field (data item 公民身份号码)")
            self._list(hub, cpb.ListResourcesRequest(field_name="公民身份号码"))
            _step("4b. Search: conditional entries mentioning 不动产")
            conditional = w.SHARE_TYPE.wire(m.ShareType.CONDITIONAL)
            self._list(hub, cpb.ListResourcesRequest(text="不动产", share_type=conditional))
            _step("5. One entry in full: public security's resident identity")
            entry = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code="10101/350200000001"))
            print(tables.render(["field", "value"], commands.resource_detail(entry), max_column=90))

    @staticmethod
    def _list(hub: HubClient, request: cpb.ListResourcesRequest) -> None:
        response = hub.call(hub.catalog.ListResources, request)
        print(tables.render(commands.RESOURCE_HEADERS, commands.resource_rows(list(response.resources))))

    def refusals(self) -> None:
        _step("6. What the hub refuses, and how it says so")
        housing = self.identity_of("zj-steward")
        with self.client(housing) as hub:
            request = cpb.ChangeResourceStatusRequest(code="10101/350200000001", reason="试图停用他人目录")
            flat_sale.expect_refusal(
                "housing's steward suspends public security's entry",
                lambda: hub.call(hub.catalog.SuspendResource, request),
            )
            bad = w.spec_to_wire(
                m.ResourceSpec(
                    code="20301/350200000009",
                    name="购房资格审核结果",
                    department_code="11350200MB0034567G",
                    data_items=(m.DataItem("buyer_id_number", "购房人证件号码", m.FieldType.STRING),),
                    share_type=m.ShareType.CONDITIONAL,
                    share_method=m.ShareMethod.QUERY,
                    update_cycle=m.UpdateCycle.DAILY,
                )
            )
            flat_sale.expect_refusal(
                "a conditional entry with no conditions or legal basis",
                lambda: hub.call(hub.catalog.CreateResource, cpb.CreateResourceRequest(resource=bad)),
            )
        with self.client(self.operator) as hub:
            duplicate = self.members.departments[0]
            flat_sale.expect_refusal(
                f"registering {duplicate.name} a second time",
                lambda: hub.call(
                    hub.registry.CreateDepartment,
                    rpb.CreateDepartmentRequest(department=w.department_to_wire(duplicate)),
                ),
            )

    def history(self) -> None:
        _step("7. Every change is a version: public security suspends, then republishes, its entry")
        code = "10101/350200000001"
        with self.client(self.identity_of("ga-steward")) as hub:
            hub.call(
                hub.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=code, reason="系统升级，暂停共享")
            )
            hub.call(hub.catalog.PublishResource, cpb.ChangeResourceStatusRequest(code=code, reason="升级完成"))
            versions = hub.call(hub.catalog.ListResourceVersions, cpb.ListResourceVersionsRequest(code=code))
        rows = [
            [str(v.version), w.CHANGE.label(v.change), v.actor.code, w.STATUS.label(v.resource.status), v.reason]
            for v in versions.versions
        ]
        print(tables.render(["version", "change", "by", "status", "reason"], rows))

    def _apply(
        self, hub: HubClient, resource: str, fields: tuple[str, ...], purpose: str = FLAT_SALE
    ) -> rpb_r.ShareRequest:
        today = dt.date.today()
        application = m.Application(
            resource,
            "",
            ("bdc-djxt",),
            purpose,
            "《不动产登记暂行条例实施细则》第十一条",
            fields,
            today,
            today + dt.timedelta(days=180),
            300,
        )
        request = rpb_r.ApplyRequest(request=w.application_to_wire(application))
        return hub.call(hub.rights.Apply, request)

    def rights(self) -> None:
        _step("8. Three separated rights: the registry applies, each owner decides, the share manager grants")
        with self.client(self.identity_of("bdc-clerk")) as clerk:
            identity = self._apply(clerk, "10101/350200000001", ("name", "id_number"))
            contract = self._apply(clerk, "20301/350200000001", ("contract_no", "property_address", "price"))
            tax_fields = ("voucher_no", "taxpayer_id_number", "tax_kind", "amount", "paid_on")
            tax = self._apply(clerk, "20501/350200000001", tax_fields)
            text = self._apply(clerk, "20301/350200000002", ("contract_no", "document"))
            self._apply(clerk, "10101/350200000001", ("birth_date",), "抵押权登记")  # left pending
            record = self._apply(clerk, "10101/350200000002", ("record_type",))  # not shared: refused at once
            clerk.call(clerk.rights.Dispute, rpb_r.DisputeRequest(id=record.id, reason="办理登记需核实有无查封限制"))
        masked = [rpb_r.FieldMask(field="id_number", mask=rpb_r.MASK_KIND_ID_NUMBER)]
        taxpayer = [rpb_r.FieldMask(field="taxpayer_id_number", mask=rpb_r.MASK_KIND_ID_NUMBER)]
        for steward, request, masks in (
            ("ga-steward", identity, masked),
            ("zj-steward", contract, []),
            ("zj-steward", text, []),
            ("sw-steward", tax, taxpayer),
        ):
            # The registry verifies the ID number it holds: each masked item may be filtered on, boundedly.
            verify = [x.field for x in masks]
            approval = rpb_r.ApproveRequest(id=request.id, masks=masks, reason="同意", verify_masked=verify)
            with self.client(self.identity_of(steward)) as owner:
                owner.call(owner.rights.Approve, approval)
        with self.client(self.identity_of("sm-lin")) as manager:
            for request in (identity, contract, text, tax):
                manager.call(manager.rights.IssueGrant, rpb_r.IssueGrantRequest(request_id=request.id))
            listed = manager.call(manager.rights.ListShareRequests, rpb_r.ListShareRequestsRequest())
            waiting = manager.call(
                manager.rights.ListShareRequests, rpb_r.ListShareRequestsRequest(view=rpb_r.SHARE_REQUEST_VIEW_FOR_ME)
            )
            grants = manager.call(manager.rights.ListGrants, rpb_r.ListGrantsRequest())
        print(tables.render(rights_cli.REQUEST_HEADERS, rights_cli.request_rows(list(listed.requests))))
        print()
        print(tables.render(rights_cli.GRANT_HEADERS, rights_cli.grant_rows(list(grants.grants))))
        print(f"\nawaiting the share manager: {', '.join(r.id for r in waiting.requests)} (the disputed refusal)")
        pending = [r.id for r in listed.requests if r.status == rpb_r.SHARE_REQUEST_STATUS_PENDING]
        print(f"awaiting public security's decision (due in 10 working days): {', '.join(pending)}")
        _step("9. The data plane's decision for the registry's system bdc-djxt")
        for purpose, fields in ((FLAT_SALE, ("id_number",)), (FLAT_SALE, ("address",)), ("企业开办", ("id_number",))):
            question = Question("bdc-djxt", "11350200MB00456789", "10101/350200000001", purpose, fields)
            today = dt.datetime.now(dt.UTC).date()
            d = self.decisions.decide(question, m.ResourceStatus.PUBLISHED, today, consume=False)
            shown = ", ".join(f"{f}={k.value}" for f, k in d.masks) or "none"
            answer = f"allowed by {d.grant_id}, masks {shown}" if d.allowed else f"denied: {d.message}"
            print(f"  {purpose} {', '.join(fields)} -> {answer}")

    def exchange(self) -> None:
        _step("10. The flat sale through the hub: each owner binds its backend, the registry's system asks")
        housing = self.home.identity(m.PrincipalRef(m.PrincipalKind.SYSTEM, "zj-wqba")).directory
        for code, (steward, binding) in flat_sale.bindings(self.backends, housing).items():
            with self.client(self.identity_of(steward)) as hub:
                hub.call(hub.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入共享平台"))
            print(f"  {steward:<11} bound {code} to its {binding.WhichOneof('backend')} backend")
        consumer = self.home.identity(m.PrincipalRef(m.PrincipalKind.SYSTEM, "bdc-djxt")).directory
        with self.client(consumer) as hub:
            summary = flat_sale.queries(hub, self.receipts)
            out = self.settings.home / "contract-XM2026-000123.pdf"
            summary.append(flat_sale.document(hub, self.home.audit_verifier, out))
            print("\n  What the registry's system may not have:")
            flat_sale.refusals(hub)
        print()
        print(tables.render(["resource", "backend", "returned", "masked", "exchange id"], summary))

    def objection(self) -> None:
        _step("11. The registry doubts the tax amount it received: it objects, the tax bureau corrects and answers")
        tax = self.receipts[flat_sale.TAX]
        raising = opb.RaiseObjectionRequest(
            resource_code=flat_sale.TAX,
            exchange_id=tax.exchange_id,
            fields=["amount"],
            reason="契税税额与合同价款不符，请核实",
            received_sha256=tax.sha256,
        )
        with self.client(self.home.identity(m.PrincipalRef(m.PrincipalKind.SYSTEM, "bdc-djxt")).directory) as hub:
            raised = hub.call(hub.objections.RaiseObjection, raising)
        effective = Timestamp()
        effective.FromDatetime(dt.datetime.now(dt.UTC).replace(microsecond=0))
        answer = opb.AnswerObjectionRequest(
            id=raised.id, kind=opb.ANSWER_KIND_CORRECTED, text="已按合同价款重新核定税额", effective_time=effective
        )
        with self.client(self.identity_of("sw-steward")) as steward:
            answered = steward.call(steward.objections.AnswerObjection, answer)
        print(tables.render(objections_cli.HEADERS, objections_cli.rows([answered])))
        print(f"\n  raised by {raised.raised_by} against exchange {raised.exchange_id}: {raised.reason}")
        print(f"  it cites the SHA-256 of what it received ({tax.sha256[:16]}…), never the values")
        print(
            f"  answered by {answered.answered_by}: corrected, effective "
            f"{answered.effective_time.ToDatetime(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: {answered.answer_text}"
        )

    def audit(self) -> None:
        _step("15. The audit log: every change and exchange above, verified offline with the log's public key")
        self.audit_log.flush()  # the hub signs a checkpoint every few seconds; the demo does not wait
        with self.client(self.identity_of("au-chen")) as auditor:
            head = auditor.call(auditor.audit.GetCheckpoint, apb.GetCheckpointRequest())
            found = auditor.call(
                auditor.audit.SearchRecords, apb.SearchRecordsRequest(actor="system/bdc-djxt", page_size=10)
            )
            export = "".join(c.lines for c in auditor.audit.ExportLog(apb.ExportLogRequest(), timeout=60))
        rows = [
            [str(e.seq), *(str(json.loads(e.record)[k]) for k in ("logged", "action", "resource", "outcome", "rows"))]
            for e in found.entries
        ]
        print(tables.render(["seq", "logged", "action", "resource", "outcome", "rows"], rows))
        verifier = Verifier.parse(self.home.audit_verifier.read_text())
        report = verify_export(export.splitlines(), verifier)
        print(f"\ncheckpoint: {head.size} entries, root {head.root_hash.hex()[:16]}…, signed by {verifier.name}")
        print(
            f"offline verification of the export: {report.entries} entries and {report.checkpoints} signed "
            "checkpoints check out"
        )

    def report(self) -> None:
        """The evaluation report of today, as the share manager asks for it: every figure drawn from the log."""
        today = dt.datetime.now(dt.UTC).date()
        _step(
            f"16. The evaluation report for {today} (UTC), computed from the signed log, as the share manager sees it"
        )
        self.audit_log.flush()
        period = apb.GetReportRequest(from_date=today.isoformat(), to_date=(today + dt.timedelta(days=1)).isoformat())
        with self.client(self.identity_of("sm-lin")) as manager:
            answer = manager.call(manager.audit.GetReport, period)
        evaluation.print_table(json.loads(answer.report_json))
        print(
            f"\nAn auditor recomputes it offline: exchange audit report --from-export EXPORT --key LOG.pub"
            f" --from {period.from_date} --to {period.to_date}"
        )

    def console_links(self, port: int, console_port: int) -> None:
        """The web console's address, and a one-time sign-in link for each person, asked for with their certificate."""
        address = console_base_url(self.settings, console_port)
        _step(f"23. The web console for people, at {address}: a sign-in link for each")
        people = [(self.members.operator.username, self.operator)]
        people += [(p.username, self.identity_of(p.username)) for p in self.members.people]
        rows = []
        for username, identity in people:
            with self.client(identity) as hub:
                link = hub.call(hub.console.CreateSignInLink, cnpb.CreateSignInLinkRequest())
            rows.append([username, link.url])
        print(tables.render(["person", "sign-in link"], rows, max_column=120))
        minutes = f"{self.settings.console_link_minutes:g}"
        example = people[-1][1]
        print(f"\nEach link opens one session, once, and expires in {minutes} minutes. A fresh one:")
        print(f"  .venv/bin/exchange --hub localhost:{port} --identity {example} console login")
        print("Or import a certificate into the browser: exchange --identity DIR cert export --out me.p12")
