"""Checks on the shape of registry and catalog input.

Each check appends ``FieldViolation``s rather than raising at the first, so
that a caller learns every problem of a request at once. Formats come from
public standards: the unified social credit code (GB 32100-2015) and the
administrative division code (GB/T 2260, GB/T 10114 for townships).
"""

from __future__ import annotations

import re

from exchange.errors import FieldViolation, InvalidArgument
from exchange.models import (
    AdministrativeLevel,
    Department,
    Person,
    ResourceSpec,
    ShareType,
    System,
)

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_USCC = re.compile(rf"^[{USCC_ALPHABET}]{{18}}$")
SYSTEM_CODE = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")
RESOURCE_CODE = re.compile(r"^[0-9]{1,9}/[0-9]{6,12}$")
# What RESOURCE_CODE asks for, in words: every message about a malformed resource code gives it.
RESOURCE_CODE_FORMAT = "a resource code: 1-9 digits, '/', 6-12 digits (like '10101/350200000001')"
ITEM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_NAME = 200
MAX_TEXT = 4000
MAX_DATA_ITEMS = 500
MAX_RELATED = 100


def uscc_check_character(first17: str) -> str:
    """The 18th character of a unified social credit code, from the first 17."""
    total = sum(USCC_ALPHABET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def is_uscc(code: str) -> bool:
    return bool(_USCC.match(code)) and uscc_check_character(code[:17]) == code[17]


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument.of(violations)


def check_text(out: list[FieldViolation], path: str, value: str, *, required: bool, limit: int) -> None:
    """A human-readable string: present if required, bounded, free of control characters."""
    if not value.strip():
        if required:
            out.append(FieldViolation(path, "is required"))
        return
    if len(value) > limit:
        out.append(FieldViolation(path, f"is longer than {limit} characters"))
    if _CONTROL.search(value.replace("\n", "").replace("\t", "")):
        out.append(FieldViolation(path, "contains control characters"))


def check_pattern(out: list[FieldViolation], path: str, value: str, pattern: re.Pattern[str], hint: str) -> None:
    if not value:
        out.append(FieldViolation(path, "is required"))
    elif not pattern.match(value):
        out.append(FieldViolation(path, f"{value[:80]!r} is not {hint}"))


def check_department_code(out: list[FieldViolation], path: str, code: str) -> None:
    if not code:
        out.append(FieldViolation(path, "is required"))
    elif not is_uscc(code):
        out.append(
            FieldViolation(path, f"{code[:40]!r} is not a unified social credit code (18 characters, valid check)")
        )


def _division_fits_level(code: str, level: AdministrativeLevel) -> bool:
    if level is AdministrativeLevel.TOWNSHIP:
        return len(code) == 9
    if len(code) != 6:
        return False
    if level is AdministrativeLevel.PROVINCE:
        return code.endswith("0000")
    if level is AdministrativeLevel.CITY:
        return code.endswith("00") and not code.endswith("0000")
    return not code.endswith("00")


def validate_department(d: Department) -> None:
    out: list[FieldViolation] = []
    check_department_code(out, "department.code", d.code)
    check_text(out, "department.name", d.name, required=True, limit=MAX_NAME)
    if not re.fullmatch(r"[1-8][0-9]{5}([0-9]{3})?", d.division_code):
        out.append(FieldViolation("department.division_code", "must be a 6-digit (or 9-digit township) division code"))
    elif not _division_fits_level(d.division_code, d.level):
        out.append(
            FieldViolation(
                "department.division_code",
                f"{d.division_code} is not a {d.level.value}-level division code",
            )
        )
    if d.parent_code is not None:
        if d.parent_code == d.code:
            out.append(FieldViolation("department.parent_code", "a department cannot be its own parent"))
        else:
            check_department_code(out, "department.parent_code", d.parent_code)
    raise_if(out)


def validate_system(s: System) -> None:
    out: list[FieldViolation] = []
    check_pattern(out, "system.code", s.code, SYSTEM_CODE, "a system code (a-z, 0-9, '-', 2-63 characters)")
    check_text(out, "system.name", s.name, required=True, limit=MAX_NAME)
    check_department_code(out, "system.department_code", s.department_code)
    check_text(out, "system.description", s.description, required=False, limit=MAX_TEXT)
    raise_if(out)


_ID_NUMBER = re.compile(r"^[0-9]{17}[0-9X]$")
# GB 11643-1999: weights 2^(17-i) mod 11 of the first 17 digits; the sum mod 11 picks the check character.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_number_check(first17: str) -> str:
    """The check character GB 11643 gives 17 digits."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def check_id_number(out: list[FieldViolation], path: str, value: str) -> None:
    """A citizen identity number: 18 characters, the last its GB 11643 check character."""
    text = value.strip().upper()
    if not _ID_NUMBER.match(text):
        out.append(FieldViolation(path, "must be an 18-character citizen identity number (17 digits, then 0-9 or X)"))
    elif id_number_check(text[:17]) != text[17]:
        out.append(FieldViolation(path, "its check character is wrong: look for a mistyped digit"))


def validate_person(p: Person) -> None:
    out: list[FieldViolation] = []
    check_pattern(out, "person.username", p.username, USERNAME, "a username (a-z, 0-9, '.', '_', '-')")
    check_text(out, "person.display_name", p.display_name, required=True, limit=MAX_NAME)
    check_department_code(out, "person.department_code", p.department_code)
    if not p.roles:
        out.append(FieldViolation("person.roles", "at least one role is required"))
    raise_if(out)


def validate_resource_spec(r: ResourceSpec) -> None:
    """Everything about a catalog entry that can be checked without the store."""
    out: list[FieldViolation] = []
    check_pattern(out, "resource.code", r.code, RESOURCE_CODE, RESOURCE_CODE_FORMAT)
    check_text(out, "resource.name", r.name, required=True, limit=MAX_NAME)
    check_department_code(out, "resource.department_code", r.department_code)
    for path, value in (
        ("summary", r.summary),
        ("classification", r.classification),
        ("format", r.format),
        ("share_conditions", r.share_conditions),
        ("legal_basis", r.legal_basis),
        ("open_conditions", r.open_conditions),
    ):
        check_text(out, f"resource.{path}", value, required=False, limit=MAX_TEXT)
    _check_share_terms(out, r)
    _check_data_items(out, r)
    _check_related(out, r)
    raise_if(out)


def _check_share_terms(out: list[FieldViolation], r: ResourceSpec) -> None:
    if r.share_type is not ShareType.UNCONDITIONAL and not r.legal_basis.strip():
        out.append(
            FieldViolation("resource.legal_basis", f"is required for a {r.share_type.value.replace('_', '-')} resource")
        )
    if r.share_type is ShareType.CONDITIONAL and not r.share_conditions.strip():
        out.append(FieldViolation("resource.share_conditions", "is required for a conditional resource"))


def _check_data_items(out: list[FieldViolation], r: ResourceSpec) -> None:
    if not r.data_items:
        out.append(FieldViolation("resource.data_items", "at least one data item is required"))
    if len(r.data_items) > MAX_DATA_ITEMS:
        out.append(FieldViolation("resource.data_items", f"more than {MAX_DATA_ITEMS} data items"))
    seen: set[str] = set()
    for i, item in enumerate(r.data_items[:MAX_DATA_ITEMS]):
        path = f"resource.data_items[{i}]"
        check_pattern(out, f"{path}.name", item.name, ITEM_NAME, "a field name (a-z, 0-9, '_')")
        check_text(out, f"{path}.title", item.title, required=True, limit=MAX_NAME)
        check_text(out, f"{path}.description", item.description, required=False, limit=MAX_TEXT)
        if item.name in seen:
            out.append(FieldViolation(f"{path}.name", f"{item.name!r} appears twice"))
        seen.add(item.name)


def _check_related(out: list[FieldViolation], r: ResourceSpec) -> None:
    if len(r.related_resource_codes) > MAX_RELATED:
        out.append(FieldViolation("resource.related_resource_codes", f"more than {MAX_RELATED} codes"))
    for i, code in enumerate(r.related_resource_codes[:MAX_RELATED]):
        path = f"resource.related_resource_codes[{i}]"
        if code == r.code:
            out.append(FieldViolation(path, "a resource cannot relate to itself"))
        else:
            check_pattern(out, path, code, RESOURCE_CODE, RESOURCE_CODE_FORMAT)


_KEYS = {
    "system": (SYSTEM_CODE, "a system code"),
    "person": (USERNAME, "a username"),
    "resource": (RESOURCE_CODE, RESOURCE_CODE_FORMAT),
}


def validate_key(field: str, value: str, kind: str, *, optional: bool = False) -> None:
    """A code used to find something must have its format: a typo is INVALID_ARGUMENT, not NOT_FOUND.

    ``kind`` is "department", "system", "person" or "resource"; empty passes when ``optional``.
    """
    if optional and not value:
        return
    out: list[FieldViolation] = []
    if kind == "department":
        check_department_code(out, field, value)
    else:
        pattern, hint = _KEYS[kind]
        check_pattern(out, field, value, pattern, hint)
    raise_if(out)


def validate_free_text(field: str, value: str, limit: int = MAX_TEXT) -> None:
    """Optional text such as a reason or a search string: bounded, no control characters."""
    out: list[FieldViolation] = []
    check_text(out, field, value, required=False, limit=limit)
    raise_if(out)
