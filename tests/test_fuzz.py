"""Hostile input against every RPC the hub serves, over real mutual TLS, on one hub for the whole module.

The RPCs are found in the generated descriptors, so a new one is fuzzed without a change here.
Each call gets generated messages (odd text, extreme numbers, unknown enum values, bulk repeats),
mutated valid requests, raw bytes that are not a valid message at all, requests over the size
limit, and a fixed table of injection and traversal strings. Whatever comes, the hub must answer
within the deadline with a status a caller can act on (never UNKNOWN, INTERNAL), say nothing of its
insides, release no field outside the grant and no unmasked value, and go on serving; at the end
its audit log still verifies.

The default run is small and derandomized; ``pytest -m long tests/test_fuzz.py`` runs many more
examples (``EXCHANGE_FUZZ_EXAMPLES``, default 2000 per RPC) with fresh randomness.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import exchange.v1
from audit.note import Verifier
from audit.verify import verify_export
from exchange import models as m
from exchange import pki, wire
from exchange.auditlog.export import export_lines
from exchange.server.app import SERVICES
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import objection_pb2 as opb
from exchange.v1 import registry_pb2 as rgpb
from exchange.v1 import rights_pb2 as rpb
from tests.exchange_world import PURPOSE, World, make_world, query
from tests.harness import HOUSING, POLICE, RunningHub, base_settings, identity_spec, running_hub

RECORDS = "10101/350200000007"  # the granted, masked resource every exchange is checked against
DOCUMENTS = "10101/350200000006"  # a granted file-store resource, for FetchDocument
DECOY = "10101/350200009999"  # a draft that valid seeds of changing calls name: never the two above
PERSON_ID = "350203198001012345"
PERSON_NAME = "张三"
GRANTED = ("name", "id_number", "household", "birth_date", "amount", "active", "updated")
MASKED = {"name": rpb.MASK_KIND_NAME, "id_number": rpb.MASK_KIND_ID_NUMBER, "amount": rpb.MASK_KIND_FULL}
FILTERS = {  # every filter the resource declares, with a value that finds the one person
    "id_number": PERSON_ID,
    "household": "7",
    "birth_date": "1980-01-01",
    "amount": "12.50",
    "active": "true",
    "updated": "2026-01-02T03:04:05Z",
}
CONTRACT = "HT-2026-0001"
TIMEOUT = 20.0
BIG = 64 * 1024 * 1024  # our channels' limits: large enough that the hub's own limit is what refuses
DEFAULT_EXAMPLES = 25
LONG_EXAMPLES = int(os.environ.get("EXCHANGE_FUZZ_EXAMPLES", "2000"))

# Injection, traversal and odd text, fed to every filter, every document name and every string field.
HOSTILE = (
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DROP TABLE rk; --',
    "1; DROP TABLE rk",
    "' UNION SELECT sql FROM sqlite_master --",
    "%' OR '%'='",
    "*",
    "%",
    "_",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "..\\..\\windows\\win.ini",
    "\\..\\",
    "..",
    "/etc/passwd",
    "C:\\Windows\\System32\\config",
    "file:///etc/passwd",
    "x\x00y",
    "\x00",
    "%00",
    "\r\nX-Injected: 1",
    "a" * 5000,
    "张" * 3000,
    "abc\u202edcba",
    "\u202e\u202d",
    "\u200b",
    "\u200d\u200c\ufeff",
    "\uffff\U0010ffff",
    "${jndi:ldap://127.0.0.1/x}",
    "{0.__class__}",
    "{contract_no}",
    "%s%n%x",
    "NaN",
    "-Infinity",
    "1e999999999",
    "-1",
    "99999999999999999999999999999",
    "0x7fffffff",
    "9999-12-31T23:59:59Z",
    "0000-00-00",
    "",
    " ",
    "\t\n",
)
# What a status must never show unless the caller sent it: a trace, a source file, SQL, an exception class.
LEAKS = (
    "Traceback",
    '.py"',
    ".py:",
    "SELECT ",
    " FROM ",
    "sqlalchemy",
    "SQLAlchemy",
    "sqlite3",
    "psycopg",
    "<class ",
    "Error:",
    "KeyError",
    "ValueError",
    "TypeError",
    "AttributeError",
    "IndexError",
    "OverflowError",
    "UnicodeDecodeError",
    "DecodeError",
    "RuntimeError",
    "AssertionError",
)
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
HYPOTHESIS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,
}


@dataclass(frozen=True)
class Rpc:
    """One method of a service the hub serves."""

    service: d.ServiceDescriptor
    method: d.MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.method.name}"

    @property
    def request(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def _served_rpcs() -> list[Rpc]:
    """Every RPC of every service the hub serves, from the generated descriptors (the provider's are not the hub's)."""
    found: list[Rpc] = []
    for info in pkgutil.iter_modules(exchange.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"exchange.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name in SERVICES:
                found += [Rpc(service, method) for method in service.methods]
    assert {r.service.full_name for r in found} == set(SERVICES)
    assert not any(r.method.client_streaming for r in found), "a client-streaming RPC needs its own fuzzing"
    return sorted(found, key=lambda r: r.name)


RPCS = _served_rpcs()


# The world: one hub, its members, a masked records resource in a SQL front-end database, a document store.


@dataclass
class Fuzzed:
    """The hub under fuzzing, a channel per caller, and valid requests to start mutations from."""

    world: World
    channels: dict[str, grpc.Channel]
    seeds: dict[str, list[Message]] = field(default_factory=dict)

    @property
    def hub(self) -> RunningHub:
        return self.world.hub


def _channel(hub: RunningHub, identity: Path) -> grpc.Channel:
    files = pki.IdentityFiles(identity)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )
    options = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
    return grpc.secure_channel(hub.settings.hub_address, credentials, options=options)


def _records_resource(world: World, directory: Path) -> None:
    url = f"sqlite:///{directory / 'ga-qzk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text(
                "CREATE TABLE rk (xm TEXT, sfzh TEXT, hh INTEGER, csrq DATE, je NUMERIC, zt BOOLEAN, gx TEXT, dz TEXT)"
            )
        )
        c.execute(
            text(
                "INSERT INTO rk VALUES (:xm, :id, 7, '1980-01-01', 12.5, 1, '2026-01-02 03:04:05.000000', '湖滨南路')"
            ),
            {"xm": PERSON_NAME, "id": PERSON_ID},
        )
    engine.dispose()
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING, personal_information=True),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, personal_information=True, filterable=True),
        m.DataItem("household", "户号", m.FieldType.INTEGER, filterable=True),
        m.DataItem("birth_date", "出生日期", m.FieldType.DATE, filterable=True),
        m.DataItem("amount", "金额", m.FieldType.DECIMAL, filterable=True),
        m.DataItem("active", "有效", m.FieldType.BOOLEAN, filterable=True),
        m.DataItem("updated", "更新时间", m.FieldType.TIMESTAMP, filterable=True),
        m.DataItem("address", "户籍地址", m.FieldType.STRING),
    )
    world.publish("police", identity_spec(RECORDS, POLICE.code, data_items=items, name="模糊测试人口"))
    columns = {"name": "xm", "id_number": "sfzh", "household": "hh", "birth_date": "csrq", "amount": "je"}
    columns |= {"active": "zt", "updated": "gx", "address": "dz"}
    world.bind("police", cpb.Binding(resource_code=RECORDS, sql=cpb.SqlBackend(url=url, table="rk", columns=columns)))
    world.grant(RECORDS, GRANTED, "police", tuple(MASKED.items()), verify_masked=tuple(MASKED))
    world.hub.publish(world.people["police"], identity_spec(DECOY, POLICE.code, name="草稿"), publish=False)


def _documents_resource(world: World) -> None:
    root = world.hub.settings.effective_document_roots[0] / HOUSING.code / "contracts"
    root.mkdir(parents=True)
    (root / f"{CONTRACT}.pdf").write_bytes(b"%PDF-1.4 contract")
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("document", "合同文本", m.FieldType.BYTES),
    )
    spec = identity_spec(DOCUMENTS, HOUSING.code, data_items=items, name="合同", share_method=m.ShareMethod.DOCUMENT)
    world.publish("housing", spec)
    files = cpb.FileBackend(root=str(root.resolve()), name_template="{contract_no}.pdf")
    world.bind("housing", cpb.Binding(resource_code=DOCUMENTS, files=files))
    world.grant(DOCUMENTS, ("contract_no", "document"), "housing")


def _seeds() -> dict[str, list[Message]]:
    """Valid requests to mutate, by request type; a call that changes things names only the decoy or nothing."""
    spec = identity_spec("10101/350200001234", POLICE.code, name="新目录")
    application = rpb.ShareRequest(
        resource_code=RECORDS,
        system_codes=["bdc-djxt"],
        purpose=PURPOSE,
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=["name"],
        expected_daily_calls=10,
    )
    application.start_date.year, application.start_date.month, application.start_date.day = 2026, 1, 1
    application.end_date.year, application.end_date.month, application.end_date.day = 2026, 2, 1
    seeds: list[Message] = [
        query(RECORDS, FILTERS, list(GRANTED), page_size=10, provenance=True),
        query(RECORDS, {"id_number": PERSON_ID}, ["name", "id_number"], batch_size=1),
        xpb.FetchDocumentRequest(resource_code=DOCUMENTS, purpose=PURPOSE, filters={"contract_no": CONTRACT}),
        apb.SearchRecordsRequest(page_size=5, resource_code=RECORDS, outcome="ok", data_subject=PERSON_ID),
        apb.GetInclusionProofRequest(seq=1, tree_size=2),
        apb.GetConsistencyProofRequest(from_size=1, to_size=2),
        apb.ExportLogRequest(from_seq=0),
        apb.GetReportRequest(from_date=str(dt.date.today()), to_date=str(dt.date.today() + dt.timedelta(1))),
        apb.GetCheckpointRequest(size=0),
        cpb.CreateResourceRequest(resource=wire.spec_to_wire(spec), publish=False, reason="fuzz"),
        cpb.UpdateResourceRequest(resource=wire.spec_to_wire(identity_spec(DECOY, POLICE.code)), reason="fuzz"),
        cpb.ChangeResourceStatusRequest(code=DECOY, reason="fuzz"),
        cpb.GetResourceRequest(code=RECORDS),
        cpb.ListResourcesRequest(page_size=5, text="人口", field_name="name"),
        cpb.ListResourceVersionsRequest(code=RECORDS, page_size=2),
        cpb.SetBindingRequest(
            binding=cpb.Binding(resource_code=DECOY, sql=cpb.SqlBackend(url="sqlite:///x.db", table="t")),
            reason="fuzz",
        ),
        cpb.GetBindingRequest(resource_code=RECORDS),
        rpb.ApplyRequest(request=application),
        rpb.CheckAccessRequest(system_code="bdc-djxt", resource_code=RECORDS, purpose=PURPOSE, fields=["name"]),
        rpb.ListShareRequestsRequest(page_size=5, resource_code=RECORDS),
        rpb.ListGrantsRequest(page_size=5, resource_code=RECORDS),
        rpb.ApproveRequest(
            id="SR-0", fields=["name"], masks=[rpb.FieldMask(field="name", mask=rpb.MASK_KIND_NAME)], reason="x"
        ),
        rpb.ChangeGrantRequest(id="G-0", reason="fuzz"),
        rgpb.GetDepartmentRequest(code=POLICE.code),
        rgpb.ListPeopleRequest(page_size=5),
        rgpb.CreateDepartmentRequest(department=wire.department_to_wire(POLICE)),
        opb.RaiseObjectionRequest(resource_code=DECOY, fields=["name"], reason="fuzz", received_sha256="0" * 64),
        opb.AnswerObjectionRequest(id="OB-20260101-00000000", kind=opb.ANSWER_KIND_REJECTED, text="fuzz"),
        opb.ListObjectionsRequest(page_size=5, resource_code=RECORDS, overdue_only=True),
    ]
    by_type: dict[str, list[Message]] = {}
    for seed in seeds:
        by_type.setdefault(seed.DESCRIPTOR.full_name, []).append(seed)
    return by_type


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    home = tmp_path_factory.mktemp("fuzz")
    # Random lookups on the masked items miss again and again: allow them all, so that the fuzz reaches
    # the backends and the masks (the bound on guessing is tested in test_masked_filters).
    settings = base_settings(home / "hub", masked_filter_misses_per_day=1000, masked_filter_pattern_misses=100)
    with running_hub(settings) as hub:
        world = make_world(hub)
        _records_resource(world, home)
        _documents_resource(world)
        callers = {"operator": hub.operator, "system": world.consumer_system, **world.people}
        channels = {name: _channel(hub, identity) for name, identity in callers.items()}
        try:
            yield Fuzzed(world, channels, _seeds())
        finally:
            for channel in channels.values():
                channel.close()


# Messages from descriptors.

_INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Names the hub knows, so that generated messages also get past the first lookups. Not the two granted
# resources nor the members: a generated call may legitimately retire, suspend or take a role away from
# what it names, and the fuzzing needs them to last (near-valid queries name the resources).
KNOWN = (
    DECOY,
    PURPOSE,
    PERSON_ID,
    CONTRACT,
    POLICE.code,
    HOUSING.code,
    "system/bdc-djxt",
    "person/bdc-clerk",
    *GRANTED,
    *FILTERS.values(),
    "address",
    "contract_no",
    "ok",
    "denied",
)


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=40),
        st.sampled_from(HOSTILE),
        st.sampled_from(KNOWN),
        st.builds(lambda s, n: s * n, st.sampled_from(("x", "张", "\u202e", "9")), st.integers(200, 20_000)),
    )


def _integers(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[kind]
    edges = sorted({low, high, low + 1, high - 1, -1, 0, 1, 2, 5, 100, 1000, 1001, 5000, 5001, 2**31 - 1})
    return st.one_of(st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high))


def _scalar(f: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    simple: dict[int, st.SearchStrategy[Any]] = {
        d.FieldDescriptor.TYPE_STRING: _text(),
        d.FieldDescriptor.TYPE_BYTES: st.one_of(st.binary(max_size=64), st.sampled_from([h.encode() for h in HOSTILE])),
        d.FieldDescriptor.TYPE_BOOL: st.booleans(),
        d.FieldDescriptor.TYPE_DOUBLE: st.floats(),
        d.FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    }
    if f.type in simple:
        return simple[f.type]
    if f.type == d.FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))  # proto3 enums are open
    return _integers(f.type)


def _of(f: d.FieldDescriptor) -> d.Descriptor:
    """The message type of a message field."""
    assert f.message_type is not None
    return f.message_type


def _is_map(f: d.FieldDescriptor) -> bool:
    return f.type == d.FieldDescriptor.TYPE_MESSAGE and bool(_of(f).GetOptions().map_entry)


def _field(f: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Values for one field: a scalar or message, a list of them, or a dict for a map."""
    if _is_map(f):
        key, value = _of(f).fields_by_name["key"], _of(f).fields_by_name["value"]
        return st.dictionaries(_scalar(key), _value(value, depth + 1), max_size=6)
    if f.is_repeated:
        return st.lists(_value(f, depth + 1), max_size=5)
    return _value(f, depth + 1)


def _value(f: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.type == d.FieldDescriptor.TYPE_MESSAGE:
        return messages(_of(f), depth)
    return _scalar(f)


def messages(descriptor: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``: every field optional, nested messages down to a few levels."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 4:
        return st.just(cls())
    fields = {f.name: st.deferred(lambda f=f: _field(f, depth)) for f in descriptor.fields}  # type: ignore[misc]
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        f = cast(d.FieldDescriptor, message.DESCRIPTOR.fields_by_name[name])
        target: Any = getattr(message, name) if f.is_repeated or f.type == d.FieldDescriptor.TYPE_MESSAGE else None
        if _is_map(f):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif f.is_repeated:
            for item in value:
                if isinstance(item, Message):
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


# Raw bytes: the wire format by hand, for what a well-behaved client cannot send.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_paths(descriptor: d.Descriptor, depth: int = 0) -> list[list[d.FieldDescriptor]]:
    """Every string field, as the path of fields to it (a map's key and value count), a few levels deep."""
    paths: list[list[d.FieldDescriptor]] = []
    for f in descriptor.fields:
        if f.type == d.FieldDescriptor.TYPE_STRING:
            paths.append([f])
        elif f.type == d.FieldDescriptor.TYPE_MESSAGE and depth < 3:
            paths += [[f, *rest] for rest in _string_paths(_of(f), depth + 1)]
    return paths


def _nested(path: list[d.FieldDescriptor], payload: bytes) -> bytes:
    """Bytes that put ``payload`` as the (string) field at the end of ``path``, whatever it holds."""
    for f in reversed(path):
        payload = _delimited(f.number, payload)
    return payload


INVALID_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"ab\xfe\xfecd", b"\xf4\x90\x80\x80", b"\x80" * 50)


@st.composite
def _bad_text(draw: st.DrawFn, rpc: Rpc) -> bytes:
    """A request whose string field carries invalid UTF-8: surrogates and stray bytes the proto3 type forbids."""
    paths = _string_paths(rpc.method.input_type)
    seed = draw(st.sampled_from(_seed_bytes(rpc)))
    if not paths:
        return seed + _delimited(draw(st.integers(1, 50)), draw(st.sampled_from(INVALID_UTF8)))
    return seed + _nested(draw(st.sampled_from(paths)), draw(st.sampled_from(INVALID_UTF8)))


@st.composite
def _deep(draw: st.DrawFn, rpc: Rpc) -> bytes:
    """Groups nested far past any parser's recursion limit, or a nested field repeated in bulk."""
    depth = draw(st.integers(10, 20_000))
    number = draw(st.integers(1, 2000))
    groups = _varint(number << 3 | 3) * depth + _varint(number << 3 | 4) * depth
    return draw(st.sampled_from(_seed_bytes(rpc))) + groups


@st.composite
def _bulk(draw: st.DrawFn, rpc: Rpc) -> bytes:
    """A repeated or map field with tens of thousands of entries, still under the size limit."""
    repeated = [f for f in rpc.method.input_type.fields if f.is_repeated]
    count = draw(st.integers(1000, 60_000))
    if not repeated:
        return draw(st.sampled_from(_seed_bytes(rpc))) + _delimited(7, b"x") * count
    f = draw(st.sampled_from(repeated))
    item = draw(_value(f, 3) if not _is_map(f) else messages(_of(f), 3))
    one = item.SerializeToString() if isinstance(item, Message) else _scalar_bytes(f, item)
    return _delimited(f.number, one) * count if isinstance(item, Message) else one * count


def _scalar_bytes(f: d.FieldDescriptor, value: Any) -> bytes:
    """One repeated scalar element as a field of its own (unpacked, which parsers accept for packable types too)."""
    assert f.containing_type is not None
    holder = message_factory.GetMessageClass(f.containing_type)()
    getattr(holder, f.name).append(value)
    return holder.SerializeToString()


@st.composite
def _mutated(draw: st.DrawFn, rpc: Rpc) -> bytes:
    """A valid request with bytes flipped, replaced, cut, inserted or repeated."""
    raw = bytearray(draw(st.sampled_from(_seed_bytes(rpc))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "cut", "insert", "repeat")))
        at = draw(st.integers(0, len(raw)))
        if op == "flip" and at < len(raw):
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "cut":
            raw = raw[:at]
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "repeat":
            raw += raw[at:]
    return bytes(raw)


_SEEDS: dict[str, list[Message]] = {}


def _seed_bytes(rpc: Rpc) -> list[bytes]:
    found = _SEEDS.get(rpc.method.input_type.full_name) or [rpc.request()]
    return [s.SerializeToString() for s in found]


def _mostly(valid: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), other)


@st.composite
def _plausible_query(draw: st.DrawFn, document: bool) -> Message:
    """A query close to a valid one, so that random values reach the decision, the backend and the masks."""
    names = st.sampled_from((*FILTERS, "contract_no", "address", "nope"))
    values = st.one_of(st.sampled_from((*FILTERS.values(), CONTRACT)), _text())
    filters = draw(_mostly({"id_number": PERSON_ID}, st.dictionaries(names, values, max_size=4)))
    purpose = draw(_mostly(PURPOSE, _text()))
    provenance = draw(st.booleans())
    if document:
        contract = draw(_mostly({"contract_no": CONTRACT}, st.just(filters)))
        resource = draw(_mostly(DOCUMENTS, st.just(RECORDS)))
        return xpb.FetchDocumentRequest(
            resource_code=resource, purpose=purpose, filters=contract, provenance=provenance
        )
    return xpb.QueryRequest(
        resource_code=draw(_mostly(RECORDS, st.just(DOCUMENTS))),
        purpose=purpose,
        filters=filters,
        fields=draw(st.lists(st.sampled_from((*GRANTED, *GRANTED, "address", "contract_no")), min_size=1, max_size=8)),
        page_size=draw(_mostly(0, _integers(d.FieldDescriptor.TYPE_INT32))),
        page_token=draw(_mostly("", _text())),
        provenance=provenance,
        batch_size=draw(_mostly(0, _integers(d.FieldDescriptor.TYPE_INT32))),
    )


def payloads(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Request bodies that parse: generated messages, mutated valid ones, near-valid queries for the exchange."""
    kinds = [messages(rpc.method.input_type), _mutated(rpc)]
    if rpc.method.input_type is xpb.QueryRequest.DESCRIPTOR:
        kinds.append(_plausible_query(False))
    if rpc.method.input_type is xpb.FetchDocumentRequest.DESCRIPTOR:
        kinds.append(_plausible_query(True))
    return st.one_of(*kinds).map(lambda m: m if isinstance(m, bytes) else m.SerializeToString())


def raw_payloads(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Bodies a well-behaved client cannot send: invalid UTF-8, nesting past any limit, bulk repeats."""
    return st.one_of(_bad_text(rpc), _deep(rpc), _bulk(rpc))


# Calling, and what every answer must be.


@dataclass(frozen=True)
class Answer:
    messages: list[Message]
    error: grpc.Call | None


def _same(raw: bytes) -> bytes:
    return raw


def call(channel: grpc.Channel, rpc: Rpc, payload: bytes) -> Answer:
    """Sends ``payload`` as it is; the answer, or the status it ended with."""
    try:
        if rpc.method.server_streaming:
            stream = channel.unary_stream(rpc.path, request_serializer=_same, response_deserializer=_same)
            raws = list(stream(payload, timeout=TIMEOUT))
        else:
            unary = channel.unary_unary(rpc.path, request_serializer=_same, response_deserializer=_same)
            raws = [unary(payload, timeout=TIMEOUT)]
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return Answer([], e)
    return Answer([rpc.response.FromString(r) for r in raws], None)


def _status_texts(error: grpc.Call) -> list[str]:
    """The status message and every text its details carry."""
    texts = [error.details() or ""]
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ErrorInfo,
            error_details_pb2.ResourceInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                unpacked = kind()
                detail.Unpack(unpacked)
                texts.append(str(unpacked))
    return texts


def check(rpc: Rpc, payload: bytes, answer: Answer) -> None:
    """The invariants of every answer: an actionable status, nothing internal, nothing ungranted or unmasked."""
    sent = payload.decode("utf-8", errors="replace")
    error = answer.error
    if error is not None:
        assert error.code() not in BAD_CODES, f"{rpc.name}: {error.code()}: {error.details()}"
        for said in _status_texts(error):
            leaked = [marker for marker in LEAKS if marker in said and marker not in sent]
            assert not leaked, f"{rpc.name} says {leaked}: {said[:500]}"
        return
    for message in answer.messages:
        if isinstance(message, xpb.QueryResponse | xpb.QueryBatch):
            _check_records(message)


def _check_records(message: xpb.QueryResponse | xpb.QueryBatch) -> None:
    for record in message.records:
        assert set(record.fields) <= set(GRANTED), f"ungranted fields: {set(record.fields) - set(GRANTED)}"
        for name in set(record.fields) & set(MASKED):
            value = record.fields[name]
            kind = value.WhichOneof("kind")
            assert kind in {None, "string_value"}, f"{name} left unmasked as {kind}"
            assert kind is None or "*" in value.string_value, f"{name} left unmasked: {value.string_value}"
        shown = [value.string_value for value in record.fields.values()]
        assert PERSON_ID not in shown and PERSON_NAME not in shown, "an unmasked value left the hub"


def serves(fuzzed: Fuzzed) -> None:
    """The hub still answers a normal exchange, masked, and a normal registry call."""
    request = query(RECORDS, {"id_number": PERSON_ID}, ["name", "id_number", "household"])
    answer = xpb.QueryResponse.FromString(
        fuzzed.channels["system"].unary_unary(
            "/exchange.v1.ExchangeService/Query", request_serializer=_same, response_deserializer=_same
        )(request.SerializeToString(), timeout=TIMEOUT)
    )
    assert len(answer.records) == 1
    fields = answer.records[0].fields
    assert set(fields) == {"name", "id_number", "household"}
    assert (fields["name"].string_value, fields["id_number"].string_value) == ("张*", "350203********2345")
    assert fields["household"].integer_value == 7
    who = rgpb.WhoAmIResponse.FromString(
        fuzzed.channels["operator"].unary_unary(
            "/exchange.v1.RegistryService/WhoAmI", request_serializer=_same, response_deserializer=_same
        )(b"", timeout=TIMEOUT)
    )
    assert who.principal.code == "op-admin"


NATURAL = {  # who gets furthest into each service
    "RegistryService": ("operator",),
    "CatalogService": ("police",),
    "RightsService": ("consumer", "police", "manager"),
    "AuditService": ("auditor", "police"),
    "ExchangeService": ("system", "system"),
    "ConsoleService": ("police", "system"),
    "ObjectionService": ("consumer", "police", "manager"),
    "SubscriptionService": ("system", "police"),
    "FederationService": ("operator",),
}


def _fuzz(fuzzed: Fuzzed, rpc: Rpc, examples: int, derandomize: bool) -> None:
    _SEEDS.update(fuzzed.seeds)
    callers = (*NATURAL[rpc.service.name] * 2, "operator", "system", "consumer")

    for strategy, count in ((payloads(rpc), examples), (raw_payloads(rpc), max(1, examples // 3))):

        @settings(max_examples=count, derandomize=derandomize, **HYPOTHESIS)  # type: ignore[arg-type]
        @given(caller=st.sampled_from(callers), payload=strategy)
        def one(caller: str, payload: bytes) -> None:
            check(rpc, payload, call(fuzzed.channels[caller], rpc, payload))

        one()
    serves(fuzzed)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_every_rpc_takes_hostile_messages(fuzzed: Fuzzed, rpc: Rpc) -> None:
    _fuzz(fuzzed, rpc, DEFAULT_EXAMPLES, derandomize=True)


@pytest.mark.long
@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_every_rpc_takes_hostile_messages_at_length(fuzzed: Fuzzed, rpc: Rpc) -> None:
    _fuzz(fuzzed, rpc, LONG_EXAMPLES, derandomize=False)


def _with_text(message: Message, value: str) -> Message:
    """A copy of ``message`` with every string field and map key, at every level, set to ``value``."""
    changed = type(message)()
    changed.CopyFrom(message)
    _fill(changed, value, 0)
    return changed


def _fill(message: Message, value: str, depth: int) -> None:
    for f in cast(list[d.FieldDescriptor], message.DESCRIPTOR.fields):
        if _is_map(f):
            entries = getattr(message, f.name)
            key, item = _of(f).fields_by_name["key"], _of(f).fields_by_name["value"]
            if key.type == d.FieldDescriptor.TYPE_STRING and item.type == d.FieldDescriptor.TYPE_STRING:
                entries[value] = value
        elif f.type == d.FieldDescriptor.TYPE_STRING:
            if f.is_repeated:
                getattr(message, f.name).append(value)
            else:
                setattr(message, f.name, value)
        elif f.type == d.FieldDescriptor.TYPE_MESSAGE and depth < 3:
            if f.is_repeated:
                _fill(getattr(message, f.name).add(), value, depth + 1)
            elif f.containing_oneof is None or message.WhichOneof(f.containing_oneof.name) in {None, f.name}:
                _fill(getattr(message, f.name), value, depth + 1)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_injection_and_traversal_strings_in_every_string_field(fuzzed: Fuzzed, rpc: Rpc) -> None:
    seeds = fuzzed.seeds.get(rpc.method.input_type.full_name) or [rpc.request()]
    for caller in NATURAL[rpc.service.name]:
        for value in HOSTILE:
            payload = _with_text(seeds[0], value).SerializeToString()
            check(rpc, payload, call(fuzzed.channels[caller], rpc, payload))
    serves(fuzzed)


EXCHANGE = next(r for r in RPCS if r.name == "ExchangeService.Query").service


@pytest.mark.parametrize("method", ["Query", "StreamQuery"])
def test_every_filter_of_a_query_takes_every_hostile_string(fuzzed: Fuzzed, method: str) -> None:
    rpc = Rpc(EXCHANGE, EXCHANGE.methods_by_name[method])
    for name in (*FILTERS, "address", "nope"):
        for value in (*HOSTILE, "9" * 30, "-" + "9" * 30):  # and whole numbers no backend column can hold
            payload = query(RECORDS, {name: value}, ["name", "id_number"]).SerializeToString()
            answer = call(fuzzed.channels["system"], rpc, payload)
            check(rpc, payload, answer)
            if answer.error is None:  # an injection finds nothing: the value is only ever a bound parameter
                assert not [r for a in answer.messages for r in a.records], (name, value)  # type: ignore[attr-defined]
            else:  # the backend is healthy: a refusal is the caller's input, never "try again later"
                refused = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
                assert answer.error.code() in refused, (name, value, answer.error.code(), answer.error.details())
    hostile_name = query(RECORDS, {value: PERSON_ID for value in HOSTILE[:16]}, ["name"]).SerializeToString()
    check(rpc, hostile_name, call(fuzzed.channels["system"], rpc, hostile_name))
    serves(fuzzed)


def test_every_document_name_takes_every_hostile_string(fuzzed: Fuzzed) -> None:
    rpc = Rpc(EXCHANGE, EXCHANGE.methods_by_name["FetchDocument"])
    for value in (*HOSTILE, f"../contracts/{CONTRACT}", f"{CONTRACT}.pdf\x00", f"./{CONTRACT}"):
        request = xpb.FetchDocumentRequest(resource_code=DOCUMENTS, purpose=PURPOSE, filters={"contract_no": value})
        answer = call(fuzzed.channels["system"], rpc, request.SerializeToString())
        check(rpc, request.SerializeToString(), answer)
        assert answer.error is not None, f"{value!r} named a document"
        assert answer.error.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, value
    request = xpb.FetchDocumentRequest(resource_code=DOCUMENTS, purpose=PURPOSE, filters={"contract_no": CONTRACT})
    chunks = call(fuzzed.channels["system"], rpc, request.SerializeToString())
    assert chunks.error is None and b"".join(c.data for c in chunks.messages) == b"%PDF-1.4 contract"  # type: ignore[attr-defined]


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_a_request_over_the_size_limit_is_refused_by_grpc(fuzzed: Fuzzed, rpc: Rpc) -> None:
    limit = fuzzed.hub.settings.max_message_bytes
    seed = (fuzzed.seeds.get(rpc.method.input_type.full_name) or [rpc.request()])[0].SerializeToString()
    payload = seed + _delimited(9999, b"\x00" * (limit + 1))  # an unknown field: valid, only too big
    answer = call(fuzzed.channels["system"], rpc, payload)
    assert answer.error is not None and answer.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    serves(fuzzed)


@pytest.mark.parametrize("method", ["RegistryService.GetDepartment", "ExchangeService.Query"])
def test_a_body_that_is_not_a_message_is_an_invalid_argument(fuzzed: Fuzzed, method: str) -> None:
    rpc = next(r for r in RPCS if r.name == method)
    for payload in (_delimited(1, b"\xff\xfe"), b"\x0a\x05ab", _varint(1 << 3 | 3) * 500):
        answer = call(fuzzed.channels["operator"], rpc, payload)
        assert answer.error is not None and answer.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "DecodeError" not in (answer.error.details() or "")
        assert rpc.method.input_type.full_name in (answer.error.details() or "")


def test_the_audit_log_verifies_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    serves(fuzzed)
    audit_log = fuzzed.hub.hub.audit
    audit_log.flush()
    verifier = Verifier.parse(fuzzed.hub.files.audit_verifier.read_text())
    report = verify_export(export_lines(audit_log.store, verifier), verifier)
    assert report.entries == audit_log.store.size() > 0
