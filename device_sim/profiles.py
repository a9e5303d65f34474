"""Vehicle signal profiles: one declarative TOML file per vehicle model.

A profile names the DBC files of a model and maps DBC messages and signals to the
canonical wire signals of protocol v1 (schemas.signals), with scaling, enumerations
and "not available" values. It also names the frames the telematics unit writes for
central locking and the immobilizer. Adding a vehicle model means adding a profile
file; see docs/device_sim.md for the format.

DBC sources in a profile:
  ``tgw:NAME.dbc``      a DBC shipped with device_sim (device_sim/dbc/)
  ``opendbc:NAME.dbc``  a DBC from the `opendbc` package on PyPI (opendbc/dbc/)
  a path                relative to the profile file, or absolute
"""

from __future__ import annotations

import functools
import importlib.util
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cantools
from cantools.database import Database, Message, Signal
from cantools.database.errors import Error as CantoolsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from device_sim.errors import ProfileError
from schemas.commands import CommandAction
from schemas.signals import SIGNAL_CATALOG, SignalSpec

__all__ = [
    "BUILTIN_PROFILE_DIR",
    "CentralLocking",
    "Immobilizer",
    "SignalMapping",
    "SignalProfile",
    "builtin_profile_names",
    "load_profile",
]

BUILTIN_PROFILE_DIR = Path(__file__).with_name("profiles")
_TGW_DBC_DIR = Path(__file__).with_name("dbc")
_CATALOG: dict[str, SignalSpec] = {spec.name: spec for spec in SIGNAL_CATALOG}
_DEFAULT_PERIOD_MS = 100

# A value in a profile: a raw integer, or the name of one of the signal's DBC choices.
RawOrChoice = int | str


# -- the file format (validated with pydantic, then resolved against the DBCs) ----------------


class _FileModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _SignalEntry(_FileModel):
    message: str = Field(min_length=1)
    signal: str = Field(min_length=1)
    dbc: str | None = Field(default=None, description="Which DBC, when the name is ambiguous.")
    # Numbers: wire value = DBC physical value * scale + offset (unit conversion).
    scale: float = 1.0
    offset: float = 0.0
    # Booleans: raw values (or choice names) meaning true; false_values, when given, are the
    # only values meaning false (anything else is out of range), else all others are false.
    true_values: tuple[RawOrChoice, ...] = ()
    false_values: tuple[RawOrChoice, ...] = ()
    # Raw values (or choice names) meaning "not available": the signal is absent, not wrong.
    invalid: tuple[RawOrChoice, ...] = ()
    # Narrow the DBC's own range (physical units of the DBC signal).
    minimum: float | None = None
    maximum: float | None = None


class _CentralLockingEntry(_FileModel):
    message: str
    signal: str
    dbc: str | None = None
    lock: RawOrChoice
    unlock: RawOrChoice
    counter: str | None = Field(default=None, description="Alive counter signal, if any.")


class _ImmobilizerEntry(_FileModel):
    message: str
    signal: str
    dbc: str | None = None
    immobilize: RawOrChoice
    release: RawOrChoice
    counter: str | None = None
    status_message: str
    status_signal: str
    status_dbc: str | None = None
    immobilized_values: tuple[RawOrChoice, ...] = Field(min_length=1)


class _MessageEntry(_FileModel):
    period_ms: int = Field(ge=1, le=60_000)


class _ProfileFile(_FileModel):
    name: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    description: str = ""
    energy: Literal["fuel", "soc"] = "fuel"
    dbc: tuple[str, ...] = Field(min_length=1)
    signals: dict[str, _SignalEntry]
    central_locking: _CentralLockingEntry | None = None
    immobilizer: _ImmobilizerEntry | None = None
    messages: dict[str, _MessageEntry] = {}

    @model_validator(mode="after")
    def _check_signal_names(self) -> _ProfileFile:
        unknown = sorted(set(self.signals) - set(_CATALOG))
        if unknown:
            known = ", ".join(_CATALOG)
            raise ValueError(f"unknown wire signals {unknown} (known: {known})")
        if ("lat" in self.signals) != ("lon" in self.signals):
            raise ValueError("lat and lon are mapped together or not at all")
        return self


# -- the resolved profile ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalMapping:
    """How one wire signal is read from one DBC signal."""

    wire: str
    message: Message
    signal: Signal
    is_bool: bool
    scale: float
    offset: float
    true_raw: frozenset[int]
    false_raw: frozenset[int] | None  # None: every raw value not in true_raw means false
    invalid_raw: frozenset[int]
    dbc_minimum: float | None  # physical range of the DBC signal (profile may narrow it)
    dbc_maximum: float | None
    spec: SignalSpec
    # Read from `signal` once: cantools computes them on every access, and a fleet converts
    # thousands of values a second.
    _dbc_scale: float = field(init=False, repr=False, compare=False)
    _dbc_offset: float = field(init=False, repr=False, compare=False)
    _dbc_float: bool = field(init=False, repr=False, compare=False)
    _raw_true: int = field(init=False, repr=False, compare=False)
    _raw_false: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signal = self.signal
        put = object.__setattr__  # frozen: set once, here
        put(self, "_dbc_scale", float(signal.scale))
        put(self, "_dbc_offset", float(signal.offset))
        put(self, "_dbc_float", bool(signal.is_float))
        raw_true = raw_false = 0
        if self.is_bool:
            raw_true = min(self.true_raw)
            if self.false_raw:
                raw_false = min(self.false_raw)
            else:
                raw_false = next(r for r in range(1 << signal.length) if r not in self.true_raw)
        put(self, "_raw_true", raw_true)
        put(self, "_raw_false", raw_false)

    def raw_to_physical(self, raw: float) -> float:
        """The DBC physical value of a raw signal value."""
        return float(raw) * self._dbc_scale + self._dbc_offset

    def physical_to_raw(self, physical: float) -> int | float:
        """The raw value that encodes `physical` (integers unless the signal is a float)."""
        raw = (physical - self._dbc_offset) / self._dbc_scale
        return raw if self._dbc_float else round(raw)

    def wire_to_raw(self, value: float | bool) -> int | float:
        """The raw DBC value that carries wire value `value` (used by the ECU models)."""
        if self.is_bool:
            return self._raw_true if value else self._raw_false
        raw = ((float(value) - self.offset) / self.scale - self._dbc_offset) / self._dbc_scale
        return raw if self._dbc_float else round(raw)


@dataclass(frozen=True, slots=True)
class CentralLocking:
    """The frame the unit writes to lock or unlock; the lock state is read back via `locked`."""

    message: Message
    signal: Signal
    lock_raw: int
    unlock_raw: int
    counter: Signal | None


@dataclass(frozen=True, slots=True)
class Immobilizer:
    """The frame the unit writes to immobilize or release, and the status signal read back."""

    message: Message
    signal: Signal
    immobilize_raw: int
    release_raw: int
    counter: Signal | None
    status_message: Message
    status_signal: Signal
    immobilized_raw: frozenset[int]


@dataclass(frozen=True, slots=True)
class SignalProfile:
    """A vehicle model: its DBCs, how their signals map to wire signals, and its actuators.

    Immutable and shareable: a fleet loads each profile once and every car uses it.
    """

    name: str
    description: str
    energy: Literal["fuel", "soc"]
    source: Path
    mappings: tuple[SignalMapping, ...]
    central_locking: CentralLocking | None
    immobilizer: Immobilizer | None
    periods_ms: Mapping[int, int]  # frame id -> emit period of the simulated ECU
    dbc_messages: Mapping[int, Message]  # every message of the profile's DBCs, by frame id

    @property
    def capabilities(self) -> tuple[CommandAction, ...]:
        """The commands a car of this model can execute, derived from its actuators."""
        actions: list[CommandAction] = []
        if self.central_locking is not None and "locked" in self.wire_signals:
            actions += [CommandAction.LOCK, CommandAction.UNLOCK]
            if self.immobilizer is not None:
                actions += [
                    CommandAction.UNLOCK_AND_ENABLE_DRIVING,
                    CommandAction.LOCK_AND_DISABLE_DRIVING,
                ]
        actions.append(CommandAction.REQUEST_STATE)
        return tuple(actions)

    @property
    def wire_signals(self) -> frozenset[str]:
        return frozenset(mapping.wire for mapping in self.mappings)

    @property
    def mapped_messages(self) -> tuple[Message, ...]:
        """The messages this profile reads signals from, once each, in frame id order."""
        seen: dict[int, Message] = {m.message.frame_id: m.message for m in self.mappings}
        if self.immobilizer is not None:
            status = self.immobilizer.status_message
            seen[status.frame_id] = status
        return tuple(seen[frame_id] for frame_id in sorted(seen))

    def period_ms(self, message: Message) -> int:
        return self.periods_ms.get(message.frame_id, _DEFAULT_PERIOD_MS)


def builtin_profile_names() -> tuple[str, ...]:
    """Names of the profiles shipped in device_sim/profiles/."""
    return tuple(sorted(path.stem for path in BUILTIN_PROFILE_DIR.glob("*.toml")))


def load_profile(name_or_path: str | Path) -> SignalProfile:
    """Load a profile by built-in name (e.g. ``bmw_e8x``) or from a TOML file path.

    Profiles and DBCs are cached: loading the same profile twice returns the same object.

    Raises:
        ProfileError: the file is missing or malformed, or does not match its DBCs.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        candidate = BUILTIN_PROFILE_DIR / f"{name_or_path}.toml"
        if not candidate.is_file():
            known = ", ".join(builtin_profile_names())
            raise ProfileError(
                f"no vehicle profile named {name_or_path!r} (built in: {known}); "
                "or give the path of a .toml profile file"
            )
        path = candidate
    return _load_profile_file(path.resolve())


@functools.cache
def _load_profile_file(path: Path) -> SignalProfile:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read vehicle profile {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"vehicle profile {path} is not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses per nesting level (found by fuzzing)
        raise ProfileError(f"vehicle profile {path} is nested too deeply") from exc
    try:
        spec = _ProfileFile.model_validate(document)
    except ValidationError as exc:
        raise ProfileError(f"vehicle profile {path}: {_describe(exc)}") from exc
    return _Resolver(path, spec).resolve()


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "(file)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def resolve_dbc_source(source: str, relative_to: Path) -> Path:
    """The file a profile's DBC source string names (see the module docstring)."""
    kind, sep, name = source.partition(":")
    if sep and kind == "tgw":
        return _TGW_DBC_DIR / name
    if sep and kind == "opendbc":
        spec = importlib.util.find_spec("opendbc")
        if spec is None or not spec.submodule_search_locations:
            raise ProfileError(
                f"DBC {source} needs the opendbc package: pip install 'opendbc>=0.3.1,<0.4'"
            )
        return Path(next(iter(spec.submodule_search_locations))) / "dbc" / name
    path = Path(source)
    return path if path.is_absolute() else relative_to.parent / path


@functools.cache
def _load_dbc(path: Path) -> Database:
    try:
        exists = path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system (found by fuzzing)
        raise ProfileError(f"DBC file {path} cannot be used: {exc.strerror}") from exc
    if not exists:
        raise ProfileError(f"DBC file {path} does not exist")
    # Our own DBCs are checked strictly; third-party ones have overlapping debug signals.
    strict = path.parent == _TGW_DBC_DIR
    try:
        database = cantools.database.load_file(path, database_format="dbc", strict=strict)
    except (CantoolsError, OSError) as exc:
        raise ProfileError(f"DBC file {path} cannot be loaded: {exc}") from exc
    if not isinstance(database, Database):
        raise ProfileError(f"{path} is not a CAN database")
    return database


class _Resolver:
    def __init__(self, path: Path, spec: _ProfileFile) -> None:
        self._path = path
        self._spec = spec
        self._dbcs: dict[str, Database] = {}
        for source in spec.dbc:
            self._dbcs[source] = _load_dbc(resolve_dbc_source(source, path))

    def _fail(self, where: str, message: str) -> ProfileError:
        return ProfileError(f"vehicle profile {self._path}, {where}: {message}")

    def resolve(self) -> SignalProfile:
        spec = self._spec
        mappings = tuple(self._mapping(wire, entry) for wire, entry in sorted(spec.signals.items()))
        used = [m.message for m in mappings]
        central_locking = self._central_locking() if spec.central_locking else None
        immobilizer = self._immobilizer() if spec.immobilizer else None
        if immobilizer is not None:
            used.append(immobilizer.status_message)
        by_id: dict[int, Message] = {}
        for message in used:
            other = by_id.setdefault(message.frame_id, message)
            if other is not message:
                raise self._fail(
                    "signals",
                    f"messages {other.name} and {message.name} share frame id "
                    f"{message.frame_id:#x}; a bus cannot carry both",
                )
        periods = {}
        for message in by_id.values():
            override = spec.messages.get(message.name)
            if override is not None:
                periods[message.frame_id] = override.period_ms
            elif message.cycle_time:
                periods[message.frame_id] = int(message.cycle_time)
        unknown_overrides = sorted(set(spec.messages) - {m.name for m in by_id.values()})
        if unknown_overrides:
            raise self._fail("messages", f"{unknown_overrides} are not read by this profile")
        all_messages: dict[int, Message] = {}
        for database in self._dbcs.values():
            for message in database.messages:
                all_messages.setdefault(message.frame_id, message)
        return SignalProfile(
            name=spec.name,
            description=spec.description,
            energy=spec.energy,
            source=self._path,
            mappings=mappings,
            central_locking=central_locking,
            immobilizer=immobilizer,
            periods_ms=periods,
            dbc_messages=all_messages,
        )

    def _message(self, where: str, name: str, dbc: str | None) -> Message:
        sources = [dbc] if dbc is not None else list(self._dbcs)
        if dbc is not None and dbc not in self._dbcs:
            raise self._fail(where, f"dbc {dbc!r} is not one of this profile's dbc files")
        found = []
        for source in sources:
            try:
                found.append(self._dbcs[source].get_message_by_name(name))
            except KeyError:
                continue
        if not found:
            raise self._fail(where, f"no message {name!r} in {', '.join(sources)}")
        if len(found) > 1:
            raise self._fail(where, f"message {name!r} is in several DBCs; say which with dbc=")
        return found[0]

    def _signal(self, where: str, message: Message, name: str) -> Signal:
        try:
            return message.get_signal_by_name(name)
        except KeyError:
            raise self._fail(where, f"message {message.name} has no signal {name!r}") from None

    def _raw(self, where: str, signal: Signal, value: RawOrChoice) -> int:
        if isinstance(value, int):
            if not 0 <= value < (1 << signal.length) and not signal.is_signed:
                raise self._fail(where, f"{value} does not fit in {signal.name}")
            return value
        for raw, choice in (signal.choices or {}).items():
            if str(choice) == value:
                return int(raw)
        choices = ", ".join(str(c) for c in (signal.choices or {}).values()) or "none"
        raise self._fail(where, f"{signal.name} has no value named {value!r} (choices: {choices})")

    def _mapping(self, wire: str, entry: _SignalEntry) -> SignalMapping:
        where = f"signals.{wire}"
        message = self._message(where, entry.message, entry.dbc)
        signal = self._signal(where, message, entry.signal)
        spec = _CATALOG[wire]
        is_bool = spec.type is bool
        if is_bool and not entry.true_values:
            raise self._fail(where, "a boolean signal needs true_values")
        if not is_bool and (entry.true_values or entry.false_values):
            raise self._fail(where, f"{wire} is a number; true_values/false_values do not apply")
        if entry.scale == 0 or not math.isfinite(entry.scale):
            raise self._fail(where, "scale must be a finite number other than 0")
        minimum = _narrow(signal.minimum, entry.minimum, max)
        maximum = _narrow(signal.maximum, entry.maximum, min)
        return SignalMapping(
            wire=wire,
            message=message,
            signal=signal,
            is_bool=is_bool,
            scale=entry.scale,
            offset=entry.offset,
            true_raw=frozenset(self._raw(where, signal, v) for v in entry.true_values),
            false_raw=(
                frozenset(self._raw(where, signal, v) for v in entry.false_values)
                if entry.false_values
                else None
            ),
            invalid_raw=frozenset(self._raw(where, signal, v) for v in entry.invalid),
            dbc_minimum=minimum,
            dbc_maximum=maximum,
            spec=spec,
        )

    def _central_locking(self) -> CentralLocking:
        entry = self._spec.central_locking
        assert entry is not None
        where = "central_locking"
        message = self._message(where, entry.message, entry.dbc)
        signal = self._signal(where, message, entry.signal)
        return CentralLocking(
            message=message,
            signal=signal,
            lock_raw=self._raw(where, signal, entry.lock),
            unlock_raw=self._raw(where, signal, entry.unlock),
            counter=self._signal(where, message, entry.counter) if entry.counter else None,
        )

    def _immobilizer(self) -> Immobilizer:
        entry = self._spec.immobilizer
        assert entry is not None
        where = "immobilizer"
        message = self._message(where, entry.message, entry.dbc)
        signal = self._signal(where, message, entry.signal)
        status_message = self._message(where, entry.status_message, entry.status_dbc)
        status_signal = self._signal(where, status_message, entry.status_signal)
        return Immobilizer(
            message=message,
            signal=signal,
            immobilize_raw=self._raw(where, signal, entry.immobilize),
            release_raw=self._raw(where, signal, entry.release),
            counter=self._signal(where, message, entry.counter) if entry.counter else None,
            status_message=status_message,
            status_signal=status_signal,
            immobilized_raw=frozenset(
                self._raw(where, status_signal, v) for v in entry.immobilized_values
            ),
        )


def _narrow(dbc_value: Any, profile_value: float | None, pick: Any) -> float | None:
    values = [float(v) for v in (dbc_value, profile_value) if v is not None]
    return float(pick(values)) if values else None
