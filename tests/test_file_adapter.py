"""The file-store adapter against a real directory: documents read in chunks, and every way out refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from adapters import files as files_adapter
from adapters.base import FetchRequest, OnThreads, ProviderUnavailable, Unsupported
from adapters.factory import BackendContext
from adapters.files import CHUNK_BYTES, FileAdapter, FileBinding, check
from exchange import models as m
from exchange.errors import InvalidArgument, NotFound
from tests.harness import identity_spec

SPEC = identity_spec(
    data_items=(
        m.DataItem("contract_no", "合同编号", m.FieldType.STRING, filterable=True),
        m.DataItem("uscc", "统一社会信用代码", m.FieldType.STRING, filterable=True),
        m.DataItem("holder", "持证主体", m.FieldType.STRING),
    ),
    share_method=m.ShareMethod.DOCUMENT,
)
USCC = "91350200MA2XXXXX0X"
CONTENT = os.urandom(3 * CHUNK_BYTES + 1234)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A department's document directory, inside the hub's document roots, with one contract and one licence."""
    directory = tmp_path / "roots" / "住建局"
    (directory / USCC).mkdir(parents=True)
    (directory / "HT-001.pdf").write_bytes(CONTENT)
    (directory / USCC / "营业执照.pdf").write_bytes(b"%PDF-1.7 licence")
    (tmp_path / "secret.pdf").write_bytes(b"outside the root")
    return directory


def _context(tmp_path: Path) -> BackendContext:
    return BackendContext(document_roots=(tmp_path / "roots",))


def _request(**filters: object) -> FetchRequest:
    return FetchRequest(SPEC, filters or {"contract_no": "HT-001"}, (), 1, 5.0)


def _adapter(root: Path, template: str = "{contract_no}.pdf", media_type: str = "") -> FileAdapter:
    return FileAdapter("住建档案库", FileBinding(str(root), template, media_type))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_document_is_read_lazily_in_chunks(root: Path) -> None:
    document = _adapter(root).document(_request())
    assert (document.name, document.media_type, document.size) == ("HT-001.pdf", "application/pdf", len(CONTENT))
    chunks = list(document.chunks)
    assert len(chunks) == 4 and all(len(c) <= CHUNK_BYTES for c in chunks)
    assert b"".join(chunks) == CONTENT
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(CONTENT).hexdigest()
    document.close()  # already closed at the end: closing again is harmless


def test_a_nested_template_and_the_media_type_option(root: Path) -> None:
    adapter = _adapter(root, "{uscc}/营业执照.pdf", "application/x-licence")
    document = adapter.document(_request(uscc=USCC))
    assert (document.name, document.media_type) == ("营业执照.pdf", "application/x-licence")
    assert b"".join(document.chunks) == b"%PDF-1.7 licence"
    (root / "HT-002.unknownext").write_bytes(b"x")
    unknown = _adapter(root, "{contract_no}.unknownext").document(_request(contract_no="HT-002"))
    assert unknown.media_type == "application/octet-stream"
    unknown.close()


@pytest.mark.parametrize(
    "value",
    ["../x", "..", ".", "a/b", "a\\b", "\x00", "x\x00y", "x\ny", "\x7f", ".hidden", "", "x" * 256, "张" * 86, "\ud800"],
)
def test_unsafe_filter_values_are_refused(root: Path, value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _adapter(root).document(_request(contract_no=value))
    assert [v.field for v in caught.value.violations] == ["filters.contract_no"]
    assert len(caught.value.message) < 200 and "x" * 41 not in caught.value.message


def test_a_long_value_is_echoed_cut_short(root: Path) -> None:
    with pytest.raises(InvalidArgument, match="longer than 255 bytes") as caught:
        _adapter(root).document(_request(contract_no="A" * 300))
    assert "A" * 40 + "…" in caught.value.message and "A" * 41 not in caught.value.message


def test_symlinks_leading_out_of_the_root_are_not_found(root: Path, tmp_path: Path) -> None:
    (root / "LINK.pdf").symlink_to(tmp_path / "secret.pdf")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "营业执照.pdf").write_bytes(b"outside the root")
    (root / "91350200LINK00000X").symlink_to(outside, target_is_directory=True)
    with pytest.raises(NotFound, match=r"LINK\.pdf"):
        _adapter(root).document(_request(contract_no="LINK"))
    with pytest.raises(NotFound):
        _adapter(root, "{uscc}/营业执照.pdf").document(_request(uscc="91350200LINK00000X"))


def test_a_symlink_within_the_root_is_served(root: Path) -> None:
    (root / "ALIAS.pdf").symlink_to(root / "HT-001.pdf")
    document = _adapter(root).document(_request(contract_no="ALIAS"))
    assert b"".join(document.chunks) == CONTENT


def test_what_is_not_a_regular_file_is_not_found(root: Path) -> None:
    with pytest.raises(NotFound, match=r"document 'HT-404.pdf' not found"):
        _adapter(root).document(_request(contract_no="HT-404"))
    (root / "DIR.pdf").mkdir()
    with pytest.raises(NotFound):
        _adapter(root).document(_request(contract_no="DIR"))
    os.mkfifo(root / "FIFO.pdf")  # opening must not wait for a writer
    with pytest.raises(NotFound):
        _adapter(root).document(_request(contract_no="FIFO"))
    with pytest.raises(NotFound):
        _adapter(root, "{uscc}/营业执照.pdf").document(_request(uscc="HT-001.pdf"))  # a file where a directory is
    outside = root.parent / "elsewhere.pdf"
    outside.write_bytes(b"another department's file")
    os.link(outside, root / "LINK.pdf")  # a hard link gives no sign of where the file lives: refused
    with pytest.raises(NotFound):
        _adapter(root).document(_request(contract_no="LINK"))


def test_filters_must_be_declared_and_name_the_document(root: Path) -> None:
    adapter = _adapter(root)
    with pytest.raises(InvalidArgument, match="holder cannot be filtered on"):
        adapter.document(_request(holder="张三"))
    with pytest.raises(InvalidArgument, match="missing contract_no"):
        adapter.document(_request(uscc=USCC))
    with pytest.raises(InvalidArgument, match="uscc does not name the document") as caught:
        adapter.document(_request(contract_no="HT-001", uscc=USCC))
    assert [v.field for v in caught.value.violations] == ["filters"]


def test_records_are_not_served(root: Path) -> None:
    with pytest.raises(Unsupported, match="records"):
        _adapter(root).fetch(_request())
    with pytest.raises(Unsupported, match="records"):
        _adapter(root).stream(_request(), 10)


def test_close_mid_read_releases_the_file(root: Path) -> None:
    before = _open_fds()
    document = _adapter(root).document(_request())
    assert _open_fds() == before + 1
    assert len(next(document.chunks)) == CHUNK_BYTES
    document.close()
    assert _open_fds() == before
    assert next(document.chunks, None) is None
    document.close()
    assert _open_fds() == before


def test_a_read_error_is_unavailable(root: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    document = _adapter(root).document(_request())
    (fd,) = {int(f) for f in set(os.listdir("/proc/self/fd")) - before}
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    os.dup2(directory, fd)  # reading a directory fails, as a failing disk would
    os.close(directory)
    with pytest.raises(ProviderUnavailable, match="住建档案库"):
        next(document.chunks)
    document.close()


def test_open_checks_the_options(root: Path, tmp_path: Path) -> None:
    options: dict[str, object] = {"root": str(root), "name_template": "{uscc}/营业执照.pdf"}
    backend = files_adapter.open("住建档案库", m.Binding("R1", m.BackendKind.FILES, options), _context(tmp_path))
    assert isinstance(backend, OnThreads) and isinstance(backend.blocking, FileAdapter)  # it blocks: on a lane
    assert backend.blocking.binding == FileBinding(str(root), "{uscc}/营业执照.pdf")
    with pytest.raises(InvalidArgument, match="document roots"):
        files_adapter.open("住建档案库", m.Binding("R1", m.BackendKind.FILES, options), BackendContext())


def test_check_refuses_roots_outside_the_document_roots(root: Path, tmp_path: Path) -> None:
    context = _context(tmp_path)
    template = "{contract_no}.pdf"

    def problems(path: str) -> list[str]:
        return [v.description for v in check({"root": path, "name_template": template}, context)]

    assert problems(str(root)) == []
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "roots" / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "via").symlink_to(root, target_is_directory=True)
    assert problems(str(tmp_path / "via")) == []  # judged by where it leads
    assert problems(str(tmp_path / "elsewhere")) == ["must lie inside one of the hub's document roots"]
    assert problems(str(tmp_path / "roots" / "escape")) == ["must lie inside one of the hub's document roots"]
    assert problems(str(tmp_path / "roots" / ".." / "elsewhere")) == ["must lie inside one of the hub's document roots"]
    assert problems("roots/住建局") == ["must be an absolute path"]
    assert problems(str(tmp_path / "roots" / "missing")) == ["must be an existing directory"]
    assert problems(str(root / "HT-001.pdf")) == ["must be an existing directory"]
    assert [v.field for v in check({"name_template": template}, context)] == ["binding.root"]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("", "is required"),
        ("/srv/docs/{contract_no}.pdf", "relative"),
        ("../{contract_no}.pdf", "'..'"),
        ("{contract_no}/../x.pdf", "'..'"),
        ("a//{contract_no}", "empty"),
        ("./{contract_no}", "'.'"),
        ("a\\{contract_no}", "backslash"),
        ("a\x00{contract_no}", "control"),
        ("{contract_no.__class__}", "plain"),
        ("{contract_no[0]}", "plain"),
        ("{contract_no!r}", "plain"),
        ("{contract_no:>20}", "plain"),
        ("{}.pdf", "plain"),
        ("{contract_no", "braces"),
        ("fixed.pdf", "at least one"),
    ],
)
def test_check_refuses_bad_templates(root: Path, tmp_path: Path, template: str, problem: str) -> None:
    violations = check({"root": str(root), "name_template": template}, _context(tmp_path))
    assert [v.field for v in violations] == ["binding.name_template"]
    assert problem in violations[0].description


def test_check_reads_media_type_and_unknown_options(root: Path, tmp_path: Path) -> None:
    base: dict[str, object] = {"root": str(root), "name_template": "{{literal}}-{contract_no}.pdf"}
    context = _context(tmp_path)
    assert check({**base, "media_type": "application/pdf"}, context) == []
    assert [v.field for v in check({**base, "media_type": "pdf"}, context)] == ["binding.media_type"]
    assert [v.field for v in check({**base, "media_type": "text/plain; x"}, context)] == ["binding.media_type"]
    assert [v.field for v in check({**base, "url": "x"}, context)] == ["binding.url"]
    assert [v.field for v in check({**base, "root": 3}, context)] == ["binding.root"]
    assert FileBinding("/r", "{a}/{b}.pdf").placeholders == {"a", "b"}


def test_a_file_growing_while_read_is_cut_at_its_announced_size(root: Path) -> None:
    document = _adapter(root).document(_request(contract_no="HT-001"))
    with (root / "HT-001.pdf").open("ab") as grown:
        grown.write(b"appended after the document was opened")
    assert b"".join(document.chunks) == CONTENT and document.size == len(CONTENT)
