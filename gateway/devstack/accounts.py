"""Broker accounts as clients need them, and VINs to make cars up with."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BrokerAccount", "CarCredentialsFactory", "random_vin"]

# ISO 3779: digits and capital letters except I, O and Q.
_VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """Where and as whom an MQTT client connects (a car: username = VIN)."""

    username: str
    password: str
    host: str
    port: int

    def __repr__(self) -> str:
        # Never show the password in test output or logs.
        return f"BrokerAccount(username={self.username!r}, host={self.host!r}, port={self.port})"


def random_vin(rng: random.Random | None = None) -> str:
    """A made-up VIN: 17 characters of the ISO 3779 alphabet, valid for protocol v1."""
    choose = (rng or random.SystemRandom()).choice
    return "".join(choose(_VIN_ALPHABET) for _ in range(17))


class CarCredentialsFactory(Protocol):
    """Creates a car's broker account (a random VIN when none is given); the test fixture's type."""

    def __call__(self, vin: str | None = None) -> BrokerAccount: ...
