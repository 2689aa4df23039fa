"""The unit table as data (bundled or from a file), ``small=8`` specs, and the catalog's sizing defaults."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec, Sizing
from atelier.cloud.units import UnitTable, capability_for, parse_units
from atelier.errors import InvalidInput

TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"))


def test_the_bundled_table():
    table = UnitTable.load()
    assert table.currency == "USD" and table.names() == ["small", "large", "embed"]
    assert table.get("small").price_per_unit_hour == Decimal("6.50")
    assert set(table.get("small").capabilities) == {"fine-tuning", "hosting"}
    assert table.get("embed").capabilities == ("embedding",)
    with pytest.raises(InvalidInput) as caught:
        table.get("huge", param="hosting[0].unit_type")
    assert caught.value.param == "hosting[0].unit_type" and "small, large, embed" in caught.value.message


def test_a_table_from_a_file_replaces_the_bundled_one(tmp_path):
    path = tmp_path / "units.json"
    path.write_text(json.dumps({"currency": "EUR", "unit_types": {
        "gpu-a10": {"capabilities": ["fine-tuning", "hosting"], "price_per_unit_hour": "2.125"}}}))
    table = UnitTable.load(path)
    assert table.currency == "EUR" and table.names() == ["gpu-a10"]
    assert table.get("gpu-a10").price_per_unit_hour == Decimal("2.125")


@pytest.mark.parametrize("content", [
    "not json",
    json.dumps({"unit_types": {}}),
    json.dumps({"unit_types": {"small": {"capabilities": ["flying"], "price_per_unit_hour": "1"}}}),
    json.dumps({"unit_types": {"small": {"capabilities": ["hosting"], "price_per_unit_hour": "-1"}}}),
    json.dumps({"unit_types": {"Small": {"capabilities": ["hosting"], "price_per_unit_hour": "1"}}}),
])  # fmt: skip
def test_a_bad_table_is_refused(tmp_path, content):
    path = tmp_path / "units.json"
    path.write_text(content)
    with pytest.raises(InvalidInput) as caught:
        UnitTable.load(path)
    assert caught.value.param == "units_file"


@pytest.mark.parametrize(("text", "expected"), [
    ("small=16,large=0,embed=2", {"small": 16, "large": 0, "embed": 2}),
    (" small = 8 ", {"small": 8}),
    ("", {}),
])  # fmt: skip
def test_parse_units(text, expected):
    assert parse_units(text, UnitTable.load()) == expected


@pytest.mark.parametrize("text", ["small", "small=-1", "small=x", "tiny=2", "small=1001"])
def test_parse_units_refuses(text):
    with pytest.raises(InvalidInput) as caught:
        parse_units(text, UnitTable.load(), param="default_tenancy_units")
    assert caught.value.param == "default_tenancy_units"


def test_catalog_sizing_defaults_and_overrides():
    assert TINY.sizing == Sizing(unit_type="small", fine_tuning_units=2, hosting_units=1, max_custom_models=50)
    embedding = next(spec for spec in BUILTIN if spec.kind == "embedding")
    assert embedding.sizing.unit_type == "embed" and embedding.sizing.fine_tuning_units == 0
    big = ModelSpec.model_validate({"name": "big", "kind": "chat", "source": {"path": "/x"},
                                    "sizing": {"unit_type": "large", "fine_tuning_units": 8, "hosting_units": 2}})
    assert big.sizing.max_custom_models == 50 and big.sizing.fine_tuning_units == 8
    assert Catalog([TINY]).get("tiny").sizing.hosting_units == 1


def test_capability_for():
    embedding = next(spec for spec in BUILTIN if spec.kind == "embedding")
    assert capability_for("fine-tuning", TINY) == "fine-tuning"
    assert capability_for("hosting", TINY) == "hosting"
    assert capability_for("hosting", embedding) == "embedding"
