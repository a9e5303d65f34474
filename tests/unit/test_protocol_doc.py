"""docs/protocol.md stays true to the contract in schemas/.

Every fenced JSON example is validated as the gateway would validate it (or refused with the
reason its info string names), the generated tables equal what the models say, and every
message kind, event type and rejection reason has an example.

Example fences carry their kind and, for dead letters, the expected reason::

    ```json telemetry                          accepted on the telemetry topic of its own VIN
    ```json events reject=clock_skew           refused with that RejectionReason
    ```json telemetry reject=vin_mismatch topic=tgw/v1/vehicles/<VIN>/telemetry
    ```json telemetry reject=oversized max_payload_bytes=200
    ```json telemetry reject=schema_violation path=samples.0.signals.speed

Regenerate the generated sections (signal and limits tables) with
`.venv/bin/python tests/unit/test_protocol_doc.py --write`.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel

from schemas import (
    REJECTION_REASONS,
    SIGNAL_CATALOG,
    Accepted,
    CommandAction,
    CommandMessage,
    CommandOutcome,
    CommandReason,
    CommandResultMessage,
    Door,
    EventType,
    InboundLimits,
    LockSource,
    Precondition,
    Rejected,
    RejectionReason,
    SignalSpec,
    StatusMessage,
    StatusReason,
    TelemetryMessage,
    TelemetrySample,
    TopicKind,
    decode_uplink,
    ms_to_datetime,
    vehicle_topic,
)
from schemas import limits as protocol_limits
from schemas.events import (
    BacklogOverflowEvent,
    DoorEvent,
    IgnitionEvent,
    LockEvent,
    LowFuelEvent,
    LowVoltageEvent,
    SignalOutOfRangeEvent,
)
from schemas.topics import Direction

pytestmark = pytest.mark.unit

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
# The document's "as received at": 2025-06-02T08:00:00Z.
RECEIVED_AT_MS = 1_748_851_200_000
RECEIVED_AT_TEXT = "2025-06-02T08:00:00Z"
# RFC 8032 section 7.1 TEST 1: the doc's commands are signed with its (public) private key.
EXAMPLE_PUBLIC_KEY_HEX = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
WRITE_HINT = "run `.venv/bin/python tests/unit/test_protocol_doc.py --write`"


# --------------------------------------------------------------------------------------------
# Reading the examples
# --------------------------------------------------------------------------------------------


class DocFormatError(ValueError):
    """docs/protocol.md has a fence the example reader cannot understand."""


@dataclass(frozen=True, slots=True)
class Example:
    """One fenced JSON example: what it is for and what the gateway must make of it."""

    line: int  # 1-based line of the opening fence
    kind: TopicKind
    text: str
    attrs: dict[str, str]

    @property
    def reject(self) -> RejectionReason | None:
        value = self.attrs.get("reject")
        return None if value is None else RejectionReason(value)

    @property
    def payload(self) -> bytes:
        return self.text.encode()

    def document(self) -> dict[str, Any]:
        parsed = json.loads(self.text)
        assert isinstance(parsed, dict)
        return parsed

    def topic(self) -> str:
        if "topic" in self.attrs:
            return self.attrs["topic"]
        return vehicle_topic(str(self.document()["vin"]), self.kind)

    def limits(self) -> InboundLimits:
        if "max_payload_bytes" in self.attrs:
            return InboundLimits(max_payload_bytes=int(self.attrs["max_payload_bytes"]))
        return InboundLimits()

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.kind}" + (f"-{self.reject}" if self.reject else "")


@dataclass(frozen=True, slots=True)
class Fence:
    line: int
    info: list[str]
    body: str


_KNOWN_ATTRS = frozenset({"reject", "topic", "max_payload_bytes", "path"})


def read_fences(text: str) -> list[Fence]:
    """Every fenced block, with its info string split into words."""
    fences: list[Fence] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            start = index
            index += 1
            while index < len(lines) and lines[index].rstrip() != "```":
                index += 1
            if index == len(lines):
                raise DocFormatError(f"line {start + 1}: fence is never closed")
            body = "\n".join(lines[start + 1 : index]) + "\n"
            fences.append(Fence(line=start + 1, info=line[3:].split(), body=body))
        index += 1
    return fences


def parse_examples(text: str) -> list[Example]:
    """The ```json <kind> [key=value ...]``` examples of the document."""
    examples = []
    for fence in read_fences(text):
        if not fence.info or fence.info[0] != "json":
            continue
        if len(fence.info) < 2 or fence.info[1] not in {kind.value for kind in TopicKind}:
            raise DocFormatError(
                f"line {fence.line}: a json example names its kind, one of "
                f"{', '.join(kind.value for kind in TopicKind)} (```json telemetry)"
            )
        attrs = {}
        for word in fence.info[2:]:
            key, sep, value = word.partition("=")
            if not sep or key not in _KNOWN_ATTRS:
                raise DocFormatError(f"line {fence.line}: unknown fence attribute {word!r}")
            attrs[key] = value
        if "reject" in attrs and attrs["reject"] not in {r.value for r in RejectionReason}:
            raise DocFormatError(f"line {fence.line}: unknown rejection {attrs['reject']!r}")
        examples.append(Example(fence.line, TopicKind(fence.info[1]), fence.body, attrs))
    return examples


DOC_TEXT = DOC_PATH.read_text(encoding="utf-8")
EXAMPLES = parse_examples(DOC_TEXT)
ACCEPTED = [example for example in EXAMPLES if example.reject is None]


# --------------------------------------------------------------------------------------------
# Generated sections
# --------------------------------------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _signal_range(spec: SignalSpec) -> str:
    if spec.type is bool:
        return "`true`, `false`"
    if spec.minimum is None and spec.maximum is None:
        return "any"
    low = "" if spec.minimum is None else f"{_number(spec.minimum)} "
    if spec.maximum is None:
        return f"{low}or more"
    high = f"below {_number(spec.maximum)}" if spec.maximum_exclusive else _number(spec.maximum)
    return f"{low}to {high}"


def render_signal_table() -> str:
    rows = [
        "| Wire name | VSS path | Unit | JSON type | Range | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for spec in SIGNAL_CATALOG:
        json_type = "boolean" if spec.type is bool else "number"
        rows.append(
            f"| `{spec.name}` | `{spec.vss_path}` | {spec.unit} | {json_type} "
            f"| {_signal_range(spec)} | {spec.description} |"
        )
    return "\n".join(rows) + "\n"


def _duration(ms: int) -> str:
    for unit_ms, unit in ((86_400_000, "days"), (3_600_000, "h"), (60_000, "min"), (1000, "s")):
        if ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"


def _utc(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_limits_table() -> str:
    limits = protocol_limits
    rows = [
        "| Limit | Value | When broken | Constant in `schemas/limits.py` |",
        "|---|---|---|---|",
        f"| Payload size (bytes as published) | {limits.MAX_PAYLOAD_BYTES} bytes "
        f"({limits.MAX_PAYLOAD_BYTES // 1024} KiB) | `oversized` | `MAX_PAYLOAD_BYTES` |",
        f"| Samples in one telemetry message | {limits.MAX_SAMPLES_PER_MESSAGE} "
        "| `schema_violation` | `MAX_SAMPLES_PER_MESSAGE` |",
        f"| A timestamp ahead of the gateway's clock | at most "
        f"{_duration(limits.MAX_FUTURE_SKEW_MS)} ({limits.MAX_FUTURE_SKEW_MS} ms) "
        "| `clock_skew` | `MAX_FUTURE_SKEW_MS` |",
        f"| Age of a sample, event or result on arrival | at most "
        f"{_duration(limits.MAX_PAST_AGE_MS)} ({limits.MAX_PAST_AGE_MS} ms) "
        "| `clock_skew` | `MAX_PAST_AGE_MS` |",
        f"| Command lifetime (`expires_at` - `issued_at`) | at most "
        f"{_duration(limits.MAX_COMMAND_TTL_MS)} ({limits.MAX_COMMAND_TTL_MS} ms) "
        "| the gateway never sends a longer one | `MAX_COMMAND_TTL_MS` |",
        f"| Length of `boot_id` | 1 to {limits.MAX_BOOT_ID_LENGTH} characters "
        "| `schema_violation` | `MAX_BOOT_ID_LENGTH` |",
        f"| `seq` | 0 to {limits.MAX_SEQ} (2^53 - 1) | `schema_violation` | `MAX_SEQ` |",
        f"| Timestamps (`ts`, `issued_at`, ...) | {limits.MIN_TIMESTAMP_MS} "
        f"({_utc(limits.MIN_TIMESTAMP_MS)}) to {limits.MAX_TIMESTAMP_MS} "
        f"({_utc(limits.MAX_TIMESTAMP_MS)}) | `schema_violation` "
        "| `MIN_TIMESTAMP_MS`, `MAX_TIMESTAMP_MS` |",
        f"| Protocol version (`v`) | {limits.PROTOCOL_VERSION} | `unknown_version` "
        "| `PROTOCOL_VERSION` |",
    ]
    return "\n".join(rows) + "\n"


GENERATED: dict[str, Callable[[], str]] = {
    "signal-table": render_signal_table,
    "limits-table": render_limits_table,
}


def regenerate(text: str) -> str:
    """`text` with every generated section replaced by what the models say now."""
    for name, render in GENERATED.items():
        pattern = re.compile(
            rf"(^<!-- BEGIN GENERATED {re.escape(name)}\b[^\n]*-->\n)(.*?)"
            rf"(^<!-- END GENERATED {re.escape(name)} -->$)",
            re.MULTILINE | re.DOTALL,
        )
        matches = list(pattern.finditer(text))
        if len(matches) != 1:
            raise DocFormatError(f"docs/protocol.md needs exactly one generated {name} section")
        body = matches[0].span(2)
        text = text[: body[0]] + render() + text[body[1] :]
    return text


# --------------------------------------------------------------------------------------------
# The examples are what the gateway says they are
# --------------------------------------------------------------------------------------------


def verify_command_signature(command: CommandMessage) -> None:
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(EXAMPLE_PUBLIC_KEY_HEX))
    public_key.verify(base64.b64decode(command.signature, validate=True), command.signing_bytes())


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_example_is_accepted_or_refused_as_marked(example: Example) -> None:
    if example.kind is TopicKind.COMMANDS:
        assert example.reject is None, "command examples are downlink: no dead-letter marks"
        command = CommandMessage.model_validate_json(example.payload)
        try:
            verify_command_signature(command)
        except InvalidSignature:
            pytest.fail(f"line {example.line}: the signature does not verify with RFC 8032 TEST 1")
        return
    result = decode_uplink(
        example.topic(), example.payload, received_at_ms=RECEIVED_AT_MS, limits=example.limits()
    )
    expected = example.reject
    if expected is None or expected is RejectionReason.UNKNOWN_VEHICLE:
        # unknown_vehicle is the gateway's registration check, after decode_uplink accepted it.
        assert isinstance(result, Accepted), f"line {example.line}: {result}"
        assert result.topic.kind is example.kind
        return
    assert isinstance(result, Rejected), f"line {example.line}: accepted, expected {expected}"
    assert result.reason is expected, f"line {example.line}: {result.reason}: {result.detail}"
    if "path" in example.attrs:
        assert f"{example.attrs['path']}: " in result.detail, result.detail


def test_oversized_example_is_only_oversized_by_its_lowered_limit() -> None:
    (example,) = [e for e in EXAMPLES if e.reject is RejectionReason.OVERSIZED]
    result = decode_uplink(example.topic(), example.payload, received_at_ms=RECEIVED_AT_MS)
    assert isinstance(result, Accepted), result


def test_signing_bytes_blocks_equal_the_commands_signing_bytes() -> None:
    last_command: CommandMessage | None = None
    checked = 0
    for fence in read_fences(DOC_TEXT):
        if fence.info[:2] == ["json", "commands"]:
            last_command = CommandMessage.model_validate_json(fence.body)
        elif fence.info[:2] == ["text", "signing-bytes"]:
            assert last_command is not None, f"line {fence.line}: no command example before it"
            assert fence.body.strip().encode() == last_command.signing_bytes()
            checked += 1
    assert checked >= 1


def test_doc_names_the_example_key_and_clock() -> None:
    assert EXAMPLE_PUBLIC_KEY_HEX in DOC_TEXT
    assert str(RECEIVED_AT_MS) in DOC_TEXT
    assert RECEIVED_AT_TEXT in DOC_TEXT


# --------------------------------------------------------------------------------------------
# Coverage: an example for everything a vendor must send or may meet
# --------------------------------------------------------------------------------------------


def _accepted_documents(kind: TopicKind) -> list[dict[str, Any]]:
    return [example.document() for example in ACCEPTED if example.kind is kind]


def test_every_kind_has_an_accepted_example() -> None:
    assert {example.kind for example in ACCEPTED} == set(TopicKind)


def test_every_rejection_reason_has_an_example() -> None:
    marked = {example.reject for example in EXAMPLES if example.reject is not None}
    assert marked == set(RejectionReason), set(RejectionReason) - marked


def test_every_event_type_has_an_example() -> None:
    types = {document["type"] for document in _accepted_documents(TopicKind.EVENTS)}
    assert types == {event_type.value for event_type in EventType}


def test_telemetry_examples_show_a_single_sample_and_a_batch() -> None:
    sizes = {len(document["samples"]) for document in _accepted_documents(TopicKind.TELEMETRY)}
    assert 1 in sizes
    assert max(sizes) > 1


def test_telemetry_examples_use_every_signal() -> None:
    used = {
        name
        for document in _accepted_documents(TopicKind.TELEMETRY)
        for sample in document["samples"]
        for name in sample["signals"]
    }
    assert used == {spec.name for spec in SIGNAL_CATALOG}


def test_status_examples_show_birth_will_and_orderly_disconnect() -> None:
    reasons = {document["reason"] for document in _accepted_documents(TopicKind.STATUS)}
    assert reasons == {reason.value for reason in StatusReason}


def test_command_result_examples_show_every_outcome_and_a_failed_precondition() -> None:
    documents = _accepted_documents(TopicKind.COMMAND_RESULTS)
    assert {document["outcome"] for document in documents} == set(CommandOutcome)
    assert any(document.get("failed_preconditions") for document in documents)
    assert any(document.get("state") for document in documents)


def test_doc_has_as_many_examples_as_it_promises() -> None:
    # Five kinds, ten event types, eight rejection reasons: a floor, so that examples are not
    # deleted unnoticed.
    minimum = len(TopicKind) + len(EventType) + len(RejectionReason)
    assert len(EXAMPLES) >= minimum


# --------------------------------------------------------------------------------------------
# The prose names every field and every value of the contract
# --------------------------------------------------------------------------------------------

_ENUMS: tuple[type[StrEnum], ...] = (
    TopicKind,
    EventType,
    Door,
    LockSource,
    CommandAction,
    CommandOutcome,
    CommandReason,
    Precondition,
    StatusReason,
    RejectionReason,
)
_MODELS: tuple[type[BaseModel], ...] = (
    TelemetryMessage,
    TelemetrySample,
    DoorEvent,
    IgnitionEvent,
    LockEvent,
    LowFuelEvent,
    LowVoltageEvent,
    SignalOutOfRangeEvent,
    BacklogOverflowEvent,
    StatusMessage,
    CommandMessage,
    CommandResultMessage,
)


def _missing(names: Iterable[str]) -> list[str]:
    return [name for name in names if f"`{name}`" not in DOC_TEXT]


@pytest.mark.parametrize("enum", _ENUMS, ids=[enum.__name__ for enum in _ENUMS])
def test_every_enum_value_is_documented(enum: type[StrEnum]) -> None:
    assert _missing(member.value for member in enum) == []


@pytest.mark.parametrize("model", _MODELS, ids=[model.__name__ for model in _MODELS])
def test_every_field_is_documented(model: type[BaseModel]) -> None:
    assert _missing(model.model_fields) == []


def test_reason_table_matches_which_reasons_may_reject() -> None:
    rows = dict(
        re.findall(r"^\| `(\w+)` \| (rejected|failed|rejected or failed) \|", DOC_TEXT, re.M)
    )
    assert set(rows) == {reason.value for reason in CommandReason}
    for reason in CommandReason:
        assert ("rejected" in rows[reason.value]) == (reason in REJECTION_REASONS), reason


def test_topic_table_matches_the_topic_kinds() -> None:
    for kind in TopicKind:
        direction = "box → gateway" if kind.direction is Direction.UPLINK else "gateway → box"
        row = f"| `{kind.value}` | `tgw/v1/vehicles/{{VIN}}/{kind.value}` | {direction} |"
        assert row in DOC_TEXT, row


def test_generated_sections_are_current() -> None:
    expected = regenerate(DOC_TEXT)
    if expected != DOC_TEXT:
        diff = "".join(
            difflib.unified_diff(
                DOC_TEXT.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/protocol.md",
                "generated",
            )
        )
        pytest.fail(f"docs/protocol.md is out of date with schemas/; {WRITE_HINT}\n{diff}")


def test_doc_format_errors_are_reported() -> None:
    with pytest.raises(DocFormatError, match="names its kind"):
        parse_examples("```json\n{}\n```\n")
    with pytest.raises(DocFormatError, match="unknown fence attribute"):
        parse_examples("```json telemetry rejected=x\n{}\n```\n")
    with pytest.raises(DocFormatError, match="never closed"):
        read_fences("```json telemetry\n{}\n")


def main(argv: list[str]) -> int:
    """`--write`: rewrite the generated sections of docs/protocol.md in place."""
    if argv != ["--write"]:
        print("usage: python tests/unit/test_protocol_doc.py --write", file=sys.stderr)
        return 2
    text = DOC_PATH.read_text(encoding="utf-8")
    updated = regenerate(text)
    if updated == text:
        print(f"{DOC_PATH} is up to date")
    else:
        DOC_PATH.write_text(updated, encoding="utf-8")
        print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
