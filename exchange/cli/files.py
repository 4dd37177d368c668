"""Reading catalog entries and registry members from YAML or JSON files.

Every problem is reported with its path in the file (``resources[2].data_items[0].type``),
all at once, before anything is sent to the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from exchange import models as m
from exchange.cli import userfiles
from exchange.errors import FieldViolation, InvalidArgument

E = TypeVar("E", bound=StrEnum)


def load_document(path: Path) -> dict[str, Any]:
    """A YAML (or JSON, which YAML reads too) file whose top level is a mapping."""
    text = userfiles.read_text(path, "the file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{path} is not valid YAML or JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: the top level must be a mapping")
    return data


class _Reader:
    """Typed access to one mapping of a file, collecting violations."""

    def __init__(self, data: Any, path: str, out: list[FieldViolation]) -> None:
        self.path = path
        self.out = out
        if not isinstance(data, dict):
            out.append(FieldViolation(path, "must be a mapping"))
            data = {}
        self.data: dict[str, Any] = data

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            self.out.append(FieldViolation(f"{self.path}.{key}", "is required"))
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.out.append(FieldViolation(f"{self.path}.{key}", "must be text"))
            return ""
        return str(value).strip()

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            self.out.append(FieldViolation(f"{self.path}.{key}", "must be true or false"))
            return False
        return value

    def choice(self, key: str, kind: type[E], default: E | None = None) -> E:
        raw = self.data.get(key)
        if raw is None and default is not None:
            return default
        try:
            return kind(str(raw))
        except ValueError:
            allowed = ", ".join(k.value for k in kind)
            self.out.append(FieldViolation(f"{self.path}.{key}", f"{raw!r} is not one of {allowed}"))
            return next(iter(kind))

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            self.out.append(FieldViolation(f"{self.path}.{key}", "must be a list"))
            return []
        return value


def _raise_for(path: Path, out: list[FieldViolation]) -> None:
    if out:
        raise InvalidArgument.of([FieldViolation(f"{path.name}: {v.field}", v.description) for v in out])


def _data_item(r: _Reader) -> m.DataItem:
    return m.DataItem(
        name=r.text("name"),
        title=r.text("title"),
        type=r.choice("type", m.FieldType),
        description=r.text("description", ""),
        sensitivity=r.choice("sensitivity", m.SensitivityGrade, m.SensitivityGrade.GENERAL),
        personal_information=r.flag("personal"),
        filterable=r.flag("filterable"),
    )


def _resource(r: _Reader) -> m.ResourceSpec:
    return m.ResourceSpec(
        code=r.text("code"),
        name=r.text("name"),
        department_code=r.text("department"),
        data_items=tuple(
            _data_item(_Reader(d, f"{r.path}.data_items[{i}]", r.out)) for i, d in enumerate(r.items("data_items"))
        ),
        share_type=r.choice("share_type", m.ShareType),
        share_method=r.choice("share_method", m.ShareMethod),
        update_cycle=r.choice("update_cycle", m.UpdateCycle),
        summary=r.text("summary", ""),
        classification=r.text("classification", ""),
        format=r.text("format", ""),
        share_conditions=r.text("share_conditions", ""),
        legal_basis=r.text("legal_basis", ""),
        open_to_public=r.flag("open_to_public"),
        open_conditions=r.text("open_conditions", ""),
        related_resource_codes=tuple(str(c) for c in r.items("related")),
    )


def read_catalog(path: Path) -> list[m.ResourceSpec]:
    """Catalog entries from a file with a top-level ``resources`` list."""
    out: list[FieldViolation] = []
    top = _Reader(load_document(path), "", out)
    specs = [_resource(_Reader(d, f"resources[{i}]", out)) for i, d in enumerate(top.items("resources"))]
    if not specs and not out:
        out.append(FieldViolation("resources", "no entries"))
    _raise_for(path, out)
    return specs


@dataclass(frozen=True)
class Members:
    authority: m.Department
    operator: m.Person
    departments: list[m.Department]
    systems: list[m.System]
    people: list[m.Person]


def _department(r: _Reader) -> m.Department:
    return m.Department(
        code=r.text("code"),
        name=r.text("name"),
        division_code=r.text("division_code"),
        level=r.choice("level", m.AdministrativeLevel),
        parent_code=r.text("parent", "") or None,
    )


def read_members(path: Path) -> Members:
    """Departments, systems and people to register, with the hub's own authority and operator."""
    out: list[FieldViolation] = []
    top = _Reader(load_document(path), "", out)
    authority = _department(_Reader(top.data.get("authority"), "authority", out))
    op = _Reader(top.data.get("operator"), "operator", out)
    operator = m.Person(op.text("username"), op.text("display_name"), authority.code, frozenset({m.Role.OPERATOR}))
    departments = [_department(_Reader(d, f"departments[{i}]", out)) for i, d in enumerate(top.items("departments"))]
    systems = []
    for i, d in enumerate(top.items("systems")):
        r = _Reader(d, f"systems[{i}]", out)
        systems.append(m.System(r.text("code"), r.text("name"), r.text("department"), r.text("description", "")))
    people = []
    for i, d in enumerate(top.items("people")):
        r = _Reader(d, f"people[{i}]", out)
        roles = frozenset(
            _Reader({"role": x}, f"{r.path}.roles[{n}]", out).choice("role", m.Role)
            for n, x in enumerate(r.items("roles"))
        )
        people.append(m.Person(r.text("username"), r.text("display_name"), r.text("department"), roles))
    _raise_for(path, out)
    return Members(authority, operator, departments, systems, people)
