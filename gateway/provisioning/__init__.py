"""Provisioning cars: broker credentials, subscribe ACLs, command-signing trust, registration.

`tgw provision VIN`, `tgw deprovision VIN` and `tgw rotate VIN` (gateway/cli/provision_cmd.py)
drive `Provisioner` (service.py); docs/security.md explains the model. Modules:

- endpoint: where the tools connect to the broker (plain or TLS) and a CONNACK probe;
- dynsec: Mosquitto's dynamic-security plugin over `$CONTROL` (subscribe ACLs per car);
- passwords: the broker's password file (locked, atomic, owner kept) and staged rotations;
- reload: making the broker re-read its files (SIGHUP) and checking that it did;
- carconfig: the car's side, the in-car unit's TOML configuration;
- registry: the `vehicles` row and the audit trail.

This package's __init__ stays import-light: gateway.devstack uses its dynsec client.
"""
