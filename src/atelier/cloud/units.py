"""The unit table: the unit types dedicated AI clusters are sized in, what each can do, its price.

The table is data, not code: the bundled ``units.json`` (package data), or the JSON file
named by ``Settings.units_file`` (``ATELIER_UNITS_FILE``). How many units of which type a
base model needs is the catalog's (``ModelSpec.sizing``). Money is ``Decimal``, never a
float. Knows nothing about HTTP, tenancies or the database.
"""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atelier.catalog import ModelSpec
from atelier.errors import InvalidInput

Capability = Literal["fine-tuning", "hosting", "embedding"]
"""``fine-tuning``: train chat models; ``hosting``: serve chat models; ``embedding``: serve embedding models."""
BUNDLED = "units.json"
MAX_UNITS = 1000
"""Most units of one type a limit, a cluster or an estimate line may name."""


class UnitType(BaseModel):
    """One unit type of the table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field("", max_length=400, description="What the unit is for.")
    capabilities: tuple[Capability, ...] = Field(min_length=1, description="What clusters of this unit type can do.")
    price_per_unit_hour: Decimal = Field(ge=0, max_digits=12, decimal_places=4, description="Price of one unit-hour.")


class UnitTable(BaseModel):
    """Unit type name → :class:`UnitType`, and the currency of the prices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of every price.")
    unit_types: dict[str, UnitType] = Field(min_length=1, description="The unit types by name.")

    @classmethod
    def load(cls, path: Path | None = None) -> UnitTable:
        """The table in ``path``, or the bundled one.

        Raises:
            InvalidInput: The file cannot be read or is not a valid table (``param="units_file"``).
        """
        try:
            if path is None:
                text = resources.files("atelier.cloud").joinpath(BUNDLED).read_text(encoding="utf-8")
            else:
                text = Path(path).expanduser().read_text(encoding="utf-8")
            table = cls.model_validate(json.loads(text))
        except (OSError, ValueError, ValidationError) as exc:
            raise InvalidInput(f"unit table {path or BUNDLED}: {exc}", param="units_file") from exc
        for name in table.unit_types:
            if not name or len(name) > 32 or not all(c.isalnum() or c == "-" for c in name) or name != name.lower():
                raise InvalidInput(f"unit table: bad unit type name {name!r}", param="units_file")
        return table

    def get(self, name: str, param: str = "unit_type") -> UnitType:
        """The unit type ``name``.

        Raises:
            InvalidInput: No such unit type (``param`` names the field at fault).
        """
        unit = self.unit_types.get(name)
        if unit is None:
            raise InvalidInput(f"unknown unit type {name!r}; expected one of {', '.join(self.unit_types)}",
                               param=param)
        return unit

    def names(self) -> list[str]:
        return list(self.unit_types)


def capability_for(cluster_type: str, spec: ModelSpec) -> Capability:
    """What a cluster of ``cluster_type`` over ``spec`` needs of its unit type."""
    if cluster_type == "fine-tuning":
        return "fine-tuning"
    return "embedding" if spec.kind == "embedding" else "hosting"


def parse_units(text: str, table: UnitTable, *, param: str = "units") -> dict[str, int]:
    """``"small=16,large=0"`` → ``{"small": 16, "large": 0}`` (spaces ignored, empty text → ``{}``).

    Raises:
        InvalidInput: A part is not ``<unit type>=<count>``, names an unknown unit type, or
            a count is not an integer from 0 to ``MAX_UNITS``.
    """
    units: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, count = (s.strip() for s in part.partition("="))
        if not sep or not count.isdigit():
            raise InvalidInput(f"{part!r} is not <unit type>=<count>, e.g. small=8", param=param)
        table.get(name, param=param)
        if int(count) > MAX_UNITS:
            raise InvalidInput(f"{name}: at most {MAX_UNITS} units", param=param)
        units[name] = int(count)
    return units
