"""Vehicle identification numbers (ISO 3779): the vehicle id of protocol v1."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

__all__ = ["VIN_PATTERN", "Vin", "VinError", "parse_vin"]

VIN_LENGTH = 17
# ISO 3779: digits and capital Latin letters except I, O and Q (too easily read as 1 and 0).
VIN_PATTERN = r"^[A-HJ-NPR-Z0-9]{17}$"
_VIN_RE = re.compile(VIN_PATTERN)
_FORBIDDEN_LETTERS = frozenset("IOQ")


class VinError(ValueError):
    """A string is not a valid VIN; the message says which rule it breaks."""


def parse_vin(value: str) -> str:
    """Return `value` if it is a valid VIN, else raise `VinError` naming the broken rule.

    The check digit (position 9) is not enforced: it is mandatory in North America only,
    and European cars (this fleet's home) do not carry one.
    """
    if _VIN_RE.fullmatch(value):
        return value
    if len(value) != VIN_LENGTH:
        raise VinError(f"a VIN has {VIN_LENGTH} characters, got {len(value)}")
    bad = sorted({c for c in value if c in _FORBIDDEN_LETTERS or c.upper() in _FORBIDDEN_LETTERS})
    if bad:
        raise VinError(f"a VIN never contains I, O or Q, got {''.join(bad)!r}")
    if value != value.upper():
        raise VinError("a VIN is written in capital letters")
    raise VinError("a VIN holds only digits and the letters A-Z except I, O, Q")


def _validate_vin(value: str) -> str:
    return parse_vin(value)


Vin = Annotated[
    str,
    AfterValidator(_validate_vin),
    # JSON Schema cannot see the validator; spell the rule out for vendors' offline checks.
    WithJsonSchema(
        {
            "type": "string",
            "pattern": VIN_PATTERN,
            "description": "VIN (ISO 3779): 17 digits and capital letters, never I, O or Q.",
        }
    ),
]
"""A VIN as a pydantic field type: 17 characters of the ISO 3779 alphabet."""
