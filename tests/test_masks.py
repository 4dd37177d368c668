"""Masks: what each keeps, and that nothing outside the granted fields survives."""

from __future__ import annotations

import pytest

from exchange.models import MaskKind
from policy.masks import apply, mask


@pytest.mark.parametrize(
    ("value", "kind", "seen"),
    [
        ("350203198001012345", MaskKind.ID_NUMBER, "350203********2345"),
        ("35020319800101234X", MaskKind.ID_NUMBER, "350203********234X"),
        ("12345", MaskKind.ID_NUMBER, "*****"),
        ("张三丰", MaskKind.NAME, "张**"),
        ("欧阳修", MaskKind.NAME, "欧**"),
        ("李", MaskKind.NAME, "*"),
        ("13912345678", MaskKind.PHONE, "*******5678"),
        ("0592-1234567", MaskKind.PHONE, "*******4567"),
        ("123", MaskKind.PHONE, "***"),
        ("思明区湖滨南路1号", MaskKind.FULL, "*********"),
        ("不变", MaskKind.NONE, "不变"),
        (None, MaskKind.ID_NUMBER, None),
        (42, MaskKind.FULL, "**"),
    ],
)
def test_each_mask_keeps_only_what_it_should(value: object, kind: MaskKind, seen: object) -> None:
    assert mask(value, kind) == seen


def test_only_granted_fields_leave_and_masked_as_granted() -> None:
    row = {"name": "张三", "id_number": "350203198001012345", "address": "思明区", "salary": 9000}
    out = apply(row, ("name", "id_number"), (("id_number", MaskKind.ID_NUMBER), ("address", MaskKind.FULL)))
    assert out == {"name": "张三", "id_number": "350203********2345"}
