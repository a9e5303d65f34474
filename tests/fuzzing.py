"""Hypothesis strategies that break protocol messages: shared by the unit fuzz tests and the
integration test that pushes fuzzed payloads through the real broker and gateway."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from schemas import TopicKind

__all__ = ["NOW", "OTHER_VIN", "VIN", "dumps", "json_values", "mutated", "valid_uplink"]

NOW = 1_748_851_200_000
VIN = "WBAUF11080E123456"
OTHER_VIN = "WBA3A5C51CF256985"

# -- JSON documents and how to break them ----------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "1", "true", "null", VIN, OTHER_VIN, "\u0000", "é" * 3, "x" * 600])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def valid_uplink(kind: TopicKind, ts: int = NOW - 1000, vin: str = VIN) -> dict[str, Any]:
    """A valid message of `kind` (what the mutations start from)."""
    if kind is TopicKind.TELEMETRY:
        signals = {"speed": 12.5, "locked": True, "lat": 48.1, "lon": 11.5, "fuel": 40.0}
        samples = [{"seq": n, "ts": ts - n, "signals": signals} for n in range(3)]
        return {"v": 1, "vin": vin, "boot_id": "b00t", "samples": samples}
    if kind is TopicKind.EVENTS:
        return {
            "v": 1,
            "vin": vin,
            "boot_id": "b00t",
            "seq": 4,
            "ts": ts,
            "type": "door_opened",
            "door": "fl",
        }
    if kind is TopicKind.STATUS:
        return {"v": 1, "vin": vin, "online": True, "reason": "birth", "ts": ts, "boot_id": "b00t",
                "model": "tgw_generic", "capabilities": ["lock", "unlock"]}  # fmt: skip
    return {"v": 1, "command_id": str(uuid.uuid4()), "vin": vin, "ts": ts, "outcome": "executed",
            "state": {"locked": True}}  # fmt: skip


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (the root is ()), 40 levels deep at most."""
    found = [prefix]
    if len(prefix) >= 40:
        return found
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*prefix, index))
    return found


def _replace(document: Any, path: tuple[Any, ...], change: Callable[[Any], Any]) -> Any:
    if not path:
        return change(document)
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        copy = dict(document)
        new = _replace(document[head], rest, change)
        if new is _DELETE:
            del copy[head]
        else:
            copy[head] = new
        return copy
    copy_list = list(document)
    new = _replace(document[head], rest, change)
    if new is _DELETE:
        del copy_list[head]
    else:
        copy_list[head] = new
    return copy_list


_DELETE = object()


def _change(draw: st.DrawFn, operation: str) -> Callable[[Any], Any]:  # noqa: PLR0911  # one per operation
    """One way to break a value: what it becomes, given what it was."""
    if operation == "delete":
        return lambda _old: _DELETE
    if operation == "wrap":
        return lambda old: [old]
    if operation == "nest":
        # Deeper than the JSON parser's limit; deeper still: test_uplink_deeply_nested.
        depth = draw(st.integers(2, 400))

        def nest(old: Any) -> Any:
            for _ in range(depth):
                old = {"x": old}
            return old

        return nest
    if operation == "huge":
        size = draw(st.integers(1000, 80_000))
        return lambda _old: "A" * size
    if operation == "number":
        number = draw(st.sampled_from([2**63, -(2**63) - 1, 10**400, 1e308, -1e-320, 0, -1]))
        return lambda _old: number
    if operation == "add":
        key, added = draw(st.text(max_size=8)), draw(json_values)
        return lambda old: {**old, key: added} if isinstance(old, dict) else old
    value = draw(json_values)
    return lambda _old: value


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """`document` with one to three values somewhere inside it replaced, deleted, wrapped,
    nested deep, made huge or given an extra key."""
    operations = ["replace", "delete", "wrap", "nest", "huge", "number", "add"]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)))
        operation = draw(st.sampled_from(operations))
        if operation == "delete" and not path:
            continue
        document = _replace(document, path, _change(draw, operation))
    return document


def dumps(document: Any) -> bytes:
    """JSON bytes; numbers JSON cannot write (10**400) raw, as a hostile box would send them."""
    try:
        return json.dumps(document).encode()
    except ValueError:
        return repr(document).encode()
