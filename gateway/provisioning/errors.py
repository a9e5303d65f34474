"""What can go wrong while provisioning a car (every one a `GatewayError`, so the CLI prints it).

GatewayError
 +-- ProvisioningError       a car cannot be provisioned, rotated or removed as asked
      +-- BrokerAdminError   the broker refused or did not answer an account change
"""

from __future__ import annotations

from gateway.errors import GatewayError

__all__ = ["BrokerAdminError", "ProvisioningError"]


class ProvisioningError(GatewayError):
    """A car cannot be provisioned, rotated or deprovisioned as asked (the message says why)."""


class BrokerAdminError(ProvisioningError):
    """The broker refused an account change, or did not confirm it in time."""
