"""The project's own certificate authority: the broker's TLS certificate and client certificates.

`tgw pki init` creates the CA and the broker's server certificate; `tgw provision` issues a
client certificate per car when `broker.client_certificates` is on (docs/security.md).
"""

from gateway.pki.ca import (
    CertificateAuthority,
    IssuedCertificate,
    PkiError,
    PkiFiles,
    init_pki,
)

__all__ = ["CertificateAuthority", "IssuedCertificate", "PkiError", "PkiFiles", "init_pki"]
