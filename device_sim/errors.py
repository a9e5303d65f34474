"""The device simulator's errors: one root, a subclass per thing that went wrong.

DeviceError
 +-- DeviceConfigurationError   settings, credentials or a command line are wrong
 +-- ProfileError               a vehicle profile or its DBC file is unusable
 +-- CanBusError                the CAN interface could not be opened or written
 +-- OutboxError                the on-disk store-and-forward queue failed
 +-- BrokerError                the MQTT broker refused the unit or is unreachable
      +-- CredentialsRefusedError  it refused the unit's password or certificate
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "CanBusError",
    "CredentialsRefusedError",
    "DeviceConfigurationError",
    "DeviceError",
    "OutboxError",
    "ProfileError",
]


class DeviceError(Exception):
    """Root of every error device_sim raises on purpose."""


class DeviceConfigurationError(DeviceError):
    """Settings, a credentials file or command-line options are missing or wrong."""


class ProfileError(DeviceError):
    """A vehicle profile file, or a DBC file it names, cannot be used; the message says why."""


class CanBusError(DeviceError):
    """The CAN interface could not be opened, or a frame could not be sent."""


class OutboxError(DeviceError):
    """The on-disk store-and-forward queue (SQLite) could not be opened or written."""


class BrokerError(DeviceError):
    """The MQTT broker refused the connection or could not be reached."""


class CredentialsRefusedError(BrokerError):
    """The broker refused the unit's credentials (CONNACK 0x86 or 0x87)."""
