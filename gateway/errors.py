"""The gateway's errors: one root, a subclass per thing that went wrong.

GatewayError
 +-- ConfigurationError     settings are missing or unsafe
 +-- StorageError           the database refused or is unreachable
 |    +-- MigrationError    a migration failed or was changed after it was applied
 +-- BrokerError            the MQTT broker refused or is unreachable
 +-- DevStackError          a private development service failed to start
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigurationError",
    "DevStackError",
    "GatewayError",
    "MigrationError",
    "StorageError",
]


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigurationError(GatewayError):
    """Settings are missing, malformed or unsafe."""


class StorageError(GatewayError):
    """The database refused an operation or could not be reached."""


class MigrationError(StorageError):
    """A migration failed, or an applied one no longer matches its file."""


class BrokerError(GatewayError):
    """The MQTT broker refused the gateway or could not be reached."""


class DevStackError(GatewayError):
    """A private development service (broker or database) failed to start or stop."""
