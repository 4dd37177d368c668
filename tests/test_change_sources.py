"""Changes at the source, for subscriptions: the SQL change column and the file store's new files.

Against real front-end databases (SQLite and PostgreSQL) and a real directory. The provider kit's
change stream is tested over loopback gRPC in ``test_change_providers``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from adapters import files, sql_backend
from adapters.base import ChangeBatch, ChangeRequest, ProviderContractError, SourceWentBack, Unsupported
from adapters.factory import BackendContext
from adapters.file_changes import FileChanges
from adapters.files import FileAdapter, FileBinding
from adapters.sql import SqlAdapter, SqlBinding
from adapters.sql_changes import ChangeColumns, decode, encode
from exchange import models as m
from exchange.cli.commands import resource_detail
from exchange.errors import InvalidArgument
from exchange.models import NEW_FILES
from exchange.v1 import catalog_pb2 as cpb
from tests.console_support import console_hub, web_client
from tests.harness import POLICE, identity_spec

SPEC = identity_spec(
    data_items=(
        m.DataItem("licence_no", "许可证号", m.FieldType.STRING, filterable=True),
        m.DataItem("holder", "持证人", m.FieldType.STRING),
        m.DataItem("district", "所在区", m.FieldType.STRING, filterable=True),
        m.DataItem("revision", "版本", m.FieldType.INTEGER),
        m.DataItem("changed_at", "更新时间", m.FieldType.TIMESTAMP),
    )
)
FIELDS = ("licence_no", "holder", "district")
# (revision, licence_no, holder, district): three rows share revision 2, to cross a page boundary inside the tie.
ROWS = [(1, "L-01", "甲", "思明"), (2, "L-02", "乙", "湖里"), (2, "L-03", "丙", "思明"), (2, "L-04", "丁", "思明")]
ROWS += [(3, "L-05", "戊", "湖里")]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def frontend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A front-end database with a table ``xk`` whose ``bb`` grows and whose ``gxsj`` is an update time."""
    sqlite = request.param == "sqlite"
    url = f"sqlite:///{tmp_path / 'frontend.db'}" if sqlite else request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    stamp = "TIMESTAMP" if sqlite else "TIMESTAMPTZ"
    with engine.begin() as c:
        c.execute(text(f"CREATE TABLE xk (xkzh TEXT PRIMARY KEY, czr TEXT, qx TEXT, bb INTEGER, gxsj {stamp})"))
        for revision, number, holder, district in ROWS:
            # Every row an hour old (settled), except L-05, stamped an hour ahead: as if just written.
            when = NOW + dt.timedelta(hours=1 if number == "L-05" else -1)
            c.execute(
                text("INSERT INTO xk VALUES (:n, :h, :d, :r, :t)"),
                {"n": number, "h": holder, "d": district, "r": revision, "t": _stamp(when, sqlite)},
            )
    engine.dispose()
    yield url


def _stamp(when: dt.datetime, sqlite: bool) -> object:
    """A time as each database stores it: SQLite as SQLAlchemy's naive UTC text, PostgreSQL as timestamptz."""
    return when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else when


COLUMNS = {"licence_no": "xkzh", "holder": "czr", "district": "qx", "revision": "bb", "changed_at": "gxsj"}


BY_REVISION = ChangeColumns("bb", "xkzh")
OTHER = "10101/350200000009"


def _adapter(url: str, changes: ChangeColumns | None = BY_REVISION) -> SqlAdapter:
    return SqlAdapter("市场监管前置库", SqlBinding(url, "xk", COLUMNS, changes=changes))


def _ask(after: str | None, limit: int = 10, filters: dict[str, object] | None = None) -> ChangeRequest:
    return ChangeRequest(SPEC, filters or {}, FIELDS, after, limit, 5.0)


def _all(adapter: SqlAdapter, after: str, limit: int, **filters: object) -> tuple[list[str], str]:
    """Every change after ``after``, page by page: their licence numbers and the last cursor."""
    seen: list[str] = []
    while (batch := adapter.changes(_ask(after, limit, filters))).changes:
        assert decode(batch.cursor) >= decode(batch.changes[-1].cursor)
        assert filters or batch.cursor == batch.changes[-1].cursor
        assert after == "" or decode(batch.cursor) > decode(after)
        seen += [str(c.row["licence_no"]) for c in batch.changes]
        after = batch.cursor
    assert batch.cursor == after or (filters and decode(batch.cursor) > decode(after))
    return seen, batch.cursor


def test_an_integer_column_is_read_in_order_ties_broken_by_the_key(frontend: str) -> None:
    adapter = _adapter(frontend)
    first = adapter.changes(_ask("", 2))
    assert [c.row for c in first.changes] == [
        {"licence_no": "L-01", "holder": "甲", "district": "思明"},
        {"licence_no": "L-02", "holder": "乙", "district": "湖里"},
    ]
    assert decode(first.cursor) == (2, "L-02") and all(c.kind == "upsert" for c in first.changes)
    for limit in (1, 2, 3, 10):  # a page may end anywhere inside the tie at revision 2
        assert _all(adapter, "", limit)[0] == ["L-01", "L-02", "L-03", "L-04", "L-05"]


def test_from_now_gives_the_position_and_later_rows_follow_it(frontend: str) -> None:
    adapter = _adapter(frontend)
    now = adapter.changes(_ask(None))
    assert now.changes == [] and decode(now.cursor) == (3, "L-05")
    assert adapter.changes(_ask(now.cursor)) == ChangeBatch([], now.cursor)
    engine = create_engine(frontend)
    with engine.begin() as c:
        c.execute(text("INSERT INTO xk (xkzh, czr, qx, bb) VALUES ('L-00', '己', '思明', 4)"))
        c.execute(text("UPDATE xk SET czr = '甲二', bb = 4 WHERE xkzh = 'L-01'"))
    engine.dispose()
    later = adapter.changes(_ask(now.cursor))
    assert [(c.row["licence_no"], c.row["holder"]) for c in later.changes] == [("L-00", "己"), ("L-01", "甲二")]


def test_filters_apply_as_in_a_fetch_and_only_filterable_items(frontend: str) -> None:
    adapter = _adapter(frontend)
    assert _all(adapter, "", 1, district="思明")[0] == ["L-01", "L-03", "L-04"]
    assert adapter.changes(_ask("", filters={"district": "' OR '1'='1"})).changes == []


def test_a_filtered_read_moves_past_the_rows_its_filters_leave_out(frontend: str) -> None:
    adapter = _adapter(frontend)
    first = adapter.changes(_ask("", 10, {"district": "思明"}))
    assert [c.row["licence_no"] for c in first.changes] == ["L-01", "L-03", "L-04"]
    assert decode(first.cursor) == (3, "L-05")  # L-05 (湖里) is not read again at the next poll
    assert adapter.changes(_ask(first.cursor, 10, {"district": "湖里"})) == ChangeBatch([], first.cursor)
    engine = create_engine(frontend)
    with engine.begin() as c:
        c.execute(text("INSERT INTO xk (xkzh, czr, qx, bb) VALUES ('L-06', '庚', '思明', 5)"))
    engine.dispose()
    later = adapter.changes(_ask(first.cursor, 10, {"district": "思明"}))
    assert [c.row["licence_no"] for c in later.changes] == ["L-06"] and decode(later.cursor) == (5, "L-06")
    page = adapter.changes(_ask("", 2, {"district": "思明"}))  # a full page stops at its last change
    assert decode(page.cursor) == (2, "L-03")
    with pytest.raises(InvalidArgument, match="holder cannot be filtered on"):
        adapter.changes(_ask("", filters={"holder": "甲"}))


def test_only_the_fields_asked_for_typed_as_declared(frontend: str) -> None:
    adapter = _adapter(frontend)
    request = ChangeRequest(SPEC, {}, ("revision", "changed_at"), "", 1, 5.0)
    row = adapter.changes(request).changes[0].row
    assert set(row) == {"revision", "changed_at"} and row["revision"] == 1
    assert isinstance(row["changed_at"], dt.datetime)
    wrong = SqlAdapter("前置库", SqlBinding(frontend, "xk", {**COLUMNS, "holder": "nope"}, changes=ChangeColumns("bb")))
    with pytest.raises(ProviderContractError, match="no column 'nope'"):
        wrong.changes(ChangeRequest(SPEC, {}, ("holder",), "", 1, 5.0))


def test_an_update_time_column_reads_only_settled_rows(frontend: str) -> None:
    settled = _adapter(frontend, ChangeColumns("gxsj", "xkzh"))  # default settle for a time column
    assert _all(settled, "", 2)[0] == ["L-01", "L-02", "L-03", "L-04"]  # L-05 is not settled yet
    assert decode(settled.changes(_ask(None)).cursor)[1] == "L-04"
    at_once = _adapter(frontend, ChangeColumns("gxsj", "xkzh", settle_seconds=0))
    assert _all(at_once, "", 2)[0] == ["L-01", "L-02", "L-03", "L-04", "L-05"]
    with pytest.raises(ProviderContractError, match="change_settle_seconds needs a time column"):
        _adapter(frontend, ChangeColumns("bb", "xkzh", settle_seconds=5)).changes(_ask(""))
    with pytest.raises(ProviderContractError, match="the change column 'czr' is TEXT, not an integer"):
        _adapter(frontend, ChangeColumns("czr", "xkzh")).changes(_ask(""))


def test_a_column_that_went_backwards_is_refused_naming_both_values(frontend: str) -> None:
    adapter = _adapter(frontend)
    _, last = _all(adapter, "", 10)
    engine = create_engine(frontend)
    with engine.begin() as c:  # the table restored from an older copy: revision 3 is gone
        c.execute(text("DELETE FROM xk WHERE bb >= 3"))
    engine.dispose()
    with pytest.raises(SourceWentBack) as refused:
        adapter.changes(_ask(last))
    message = str(refused.value)
    assert SPEC.code in message and "bb" in message and "at most 2" in message and "position's 3" in message
    assert refused.value.kind == "CHANGES_BACKWARDS"
    with pytest.raises(SourceWentBack, match="not one this table handed out"):
        adapter.changes(_ask("[1,2]"))


def test_a_table_without_a_change_column_has_no_changes(frontend: str) -> None:
    with pytest.raises(Unsupported, match="does not serve changes"):
        _adapter(frontend, None).changes(_ask(""))


def test_the_change_key_defaults_to_the_first_filterable_item(frontend: str) -> None:
    assert _all(_adapter(frontend, ChangeColumns("bb")), "", 1)[0] == ["L-01", "L-02", "L-03", "L-04", "L-05"]


def test_cursors_are_typed_and_stable() -> None:
    moment = dt.datetime(2026, 12, 4, 8, 30, tzinfo=dt.UTC)
    assert encode(7, "L-01") == '["i",7,"s","L-01"]'
    for value, key in ((7, "L-01"), (moment, 12), (dt.date(2026, 1, 2), "甲")):
        assert decode(encode(value, key)) == (value, key)
    for bad in ("", "7", '["x",1,"s","a"]', '["i","q","s","a"]', '["i",true,"s","a"]'):
        with pytest.raises(ValueError):
            decode(bad)


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"change_column": "gx sj"}, "binding.change_column"),
        ({"change_column": "gxsj", "change_key": "id;drop"}, "binding.change_key"),
        ({"change_key": "xkzh"}, "binding.change_column"),
        ({"change_column": "gxsj", "change_settle_seconds": "-1"}, "binding.change_settle_seconds"),
        ({"change_column": "gxsj", "change_settle_seconds": "soon"}, "binding.change_settle_seconds"),
        ({"change_column": "gxsj", "change_settle_seconds": 90000.0}, "binding.change_settle_seconds"),
        ({"change_column": "gxsj", "change_settle_seconds": True}, "binding.change_settle_seconds"),
    ],
)
def test_bad_change_options_are_named(options: dict[str, object], path: str) -> None:
    base: dict[str, object] = {"url": "sqlite:///x.db", "table": "xk"}
    assert [v.field for v in sql_backend.check({**base, **options}, BackendContext())] == [path]
    for settle in ("2.5", 0.0, 60):
        good = {**base, "change_column": "gxsj", "change_settle_seconds": settle}
        assert sql_backend.check(good, BackendContext()) == []


def test_the_opened_binding_reads_changes_on_a_lane_thread(frontend: str) -> None:
    options: dict[str, object] = {"url": frontend, "table": "xk", "columns": COLUMNS, "change_column": "bb"}
    binding = m.Binding(SPEC.code, m.BackendKind.SQL, options)
    assert binding.subscribable and not m.Binding(SPEC.code, m.BackendKind.SQL, {"url": frontend}).subscribable

    async def read() -> ChangeBatch:
        backend = sql_backend.open("市场监管前置库", binding, BackendContext())
        try:
            return await backend.changes(_ask("", 3))
        finally:
            await backend.aclose()

    assert [c.row["licence_no"] for c in asyncio.run(read()).changes] == ["L-01", "L-02", "L-03"]


def _sql_binding(**changes: object) -> cpb.Binding:
    backend = cpb.SqlBackend(url="sqlite:///xk.db", table="xk", columns=COLUMNS, **changes)  # type: ignore[arg-type]
    return cpb.Binding(resource_code=SPEC.code, sql=backend)


def test_the_catalog_shows_an_entry_subscribable_once_its_binding_declares_changes(tmp_path: Path) -> None:
    with console_hub(tmp_path / "hub") as hub:
        hub.add_department(POLICE)
        owner = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
        hub.publish(owner, SPEC)
        hub.publish(owner, identity_spec(OTHER, name="户籍证明"))  # never bound
        with hub.client(owner) as c:

            def entry() -> cpb.Resource:
                return c.call(c.catalog.GetResource, cpb.GetResourceRequest(code=SPEC.code))

            def bind(binding: cpb.Binding) -> cpb.Binding:
                return c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入前置库"))

            bind(_sql_binding())
            assert not entry().subscribable and ("subscribable", "no") in resource_detail(entry())
            for bad, named in (
                (_sql_binding(change_column="gx sj"), "binding.change_column"),
                (_sql_binding(change_column="bb", change_settle_seconds=-1), "binding.change_settle_seconds"),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    bind(bad)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert named in str(refused.value.details())
            assert not entry().subscribable
            shown = bind(_sql_binding(change_column="bb", change_key="xkzh", change_settle_seconds=0))
            assert shown.sql.change_column == "bb" and shown.sql.HasField("change_settle_seconds")
            assert entry().subscribable and ("subscribable", "yes") in resource_detail(entry())
            listed = c.call(c.catalog.ListResources, cpb.ListResourcesRequest())
            assert [(r.code, r.subscribable) for r in listed.resources] == [(SPEC.code, True), (OTHER, False)]
            only = c.call(c.catalog.ListResources, cpb.ListResourcesRequest(subscribable=True))
            assert [r.code for r in only.resources] == [SPEC.code]
            history = c.call(c.catalog.ListResourceVersions, cpb.ListResourceVersionsRequest(code=SPEC.code))
            assert [v.version for v in history.versions] == [1]  # binding is not an edit of the entry
        with web_client(hub, owner) as web:
            assert "可订阅" in web.get(f"/catalog/{SPEC.code}").text
            assert "是：可订阅此资源的变更" in web.get(f"/catalog/{SPEC.code}").text
        hub.add_system("ga-xkxt", POLICE.code)
        with hub.client(owner) as c:
            c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=_sql_binding(), reason="停用订阅"))
            assert not c.call(c.catalog.GetResource, cpb.GetResourceRequest(code=SPEC.code)).subscribable
            provider = cpb.GrpcBackend(target="127.0.0.1:7600", system_code="ga-xkxt", changes=True)
            grpc_binding = cpb.Binding(resource_code=SPEC.code, grpc=provider)
            shown = c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=grpc_binding, reason="接入提供服务"))
            assert shown.grpc.changes
            assert c.call(c.catalog.GetResource, cpb.GetResourceRequest(code=SPEC.code)).subscribable


# The file store: new documents under a root, named by a template.

TEXTS = identity_spec(
    code="20301/350200000002",
    name="房屋买卖合同文本",
    share_method=m.ShareMethod.DOCUMENT,
    data_items=(
        m.DataItem("year", "年份", m.FieldType.STRING, filterable=True),
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("file_name", "文件名", m.FieldType.STRING),
        m.DataItem("file_size", "文件大小", m.FieldType.INTEGER),
        m.DataItem("file_modified", "文件时间", m.FieldType.TIMESTAMP),
        m.DataItem("document", "合同文本", m.FieldType.BYTES),
    ),
)
HOUR_AGO = (int(NOW.timestamp()) - 3600) * 10**9


def _put(root: Path, name: str, when: int, data: bytes = b"%PDF") -> None:
    """A file written ``when`` (ns since the epoch)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(when, when))


def _new_files(root: Path, after: str | None, limit: int = 10, **filters: object) -> ChangeBatch:
    files = FileAdapter("住建文件库", FileBinding(str(root), "{year}/{contract_no}.pdf", changes=True))
    fields = ("contract_no", "year", "file_name", "file_size", "file_modified")
    return files.changes(ChangeRequest(TEXTS, filters, fields, after, limit, 5.0))


def test_new_files_come_in_time_order_ties_broken_by_name(tmp_path: Path) -> None:
    for name in ("2026/XM-3.pdf", "2026/XM-1.pdf", "2025/XM-2.pdf"):  # the same time: ordered by name
        _put(tmp_path, name, HOUR_AGO)
    _put(tmp_path, "2025/XM-0.pdf", HOUR_AGO - 1, b"older")
    _put(tmp_path, "2026/notes.txt", HOUR_AGO)  # not a document of the resource
    first = _new_files(tmp_path, "", 2)
    assert first.changes[0].row == {
        "contract_no": "XM-0",
        "year": "2025",
        "file_name": "2025/XM-0.pdf",
        "file_size": 5,
        "file_modified": dt.datetime.fromtimestamp((HOUR_AGO - 1) / 1e9, dt.UTC),
    }
    rest = _new_files(tmp_path, first.cursor, 2)
    names = [c.row["file_name"] for c in first.changes + rest.changes]
    assert names == ["2025/XM-0.pdf", "2025/XM-2.pdf", "2026/XM-1.pdf", "2026/XM-3.pdf"]
    assert _new_files(tmp_path, rest.cursor) == ChangeBatch([], rest.cursor)
    assert _new_files(tmp_path, None).cursor == rest.cursor
    _put(tmp_path, "2026/XM-1.pdf", HOUR_AGO + 1, b"signed")  # written again: it comes again
    assert [c.row["file_size"] for c in _new_files(tmp_path, rest.cursor).changes] == [6]
    assert [c.row["contract_no"] for c in _new_files(tmp_path, "", year="2025").changes] == ["XM-0", "XM-2"]


def test_a_file_still_being_written_waits_until_it_settles(tmp_path: Path) -> None:
    _put(tmp_path, "2026/XM-1.pdf", HOUR_AGO)
    _put(tmp_path, "2026/XM-2.pdf", (int(NOW.timestamp()) + 3600) * 10**9)  # as if written this instant
    assert [c.row["contract_no"] for c in _new_files(tmp_path, "").changes] == ["XM-1"]
    now = FileChanges("住建文件库", str(tmp_path), "{year}/{contract_no}.pdf", settle_seconds=-7200)
    assert len(now.read(ChangeRequest(TEXTS, {}, ("contract_no",), "", 10, 5.0)).changes) == 2


def test_symlinks_are_not_followed_and_nothing_outside_the_root_is_told(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _put(outside, "2026/XM-9.pdf", HOUR_AGO)
    _put(root, "2026/XM-1.pdf", HOUR_AGO)
    (root / "2027").symlink_to(outside / "2026")  # a directory link
    (root / "2026" / "XM-8.pdf").symlink_to(outside / "2026" / "XM-9.pdf")  # a file link
    os.link(outside / "2026" / "XM-9.pdf", root / "2026" / "XM-7.pdf")  # a hard link to a file outside
    assert [c.row["file_name"] for c in _new_files(root, "").changes] == ["2026/XM-1.pdf"]


def test_a_file_store_without_changes_or_with_a_foreign_cursor(tmp_path: Path) -> None:
    plain = FileAdapter("住建文件库", FileBinding(str(tmp_path), "{year}/{contract_no}.pdf"))
    with pytest.raises(Unsupported, match="does not serve changes"):
        plain.changes(ChangeRequest(TEXTS, {}, ("contract_no",), "", 10, 5.0))
    with pytest.raises(SourceWentBack, match="not one this file store handed out"):
        _new_files(tmp_path, '["i",7,"s","L-01"]')
    with pytest.raises(InvalidArgument, match="file_name cannot be filtered on"):
        _new_files(tmp_path, "", file_name="x")
    options: dict[str, object] = {"root": str(tmp_path), "name_template": "{contract_no}.pdf"}
    context = BackendContext(document_roots=(tmp_path,))
    assert files.check({**options, "changes": NEW_FILES}, context) == []
    assert [v.field for v in files.check({**options, "changes": "all"}, context)] == ["binding.changes"]
    assert m.Binding(TEXTS.code, m.BackendKind.FILES, {**options, "changes": NEW_FILES}).subscribable
