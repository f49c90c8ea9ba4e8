"""Where the certificate authorities of RDS come from, for every client of the database.

The scripts, the functions (their package) and the monitoring host (its operations bundle) use
the copy in `scripts/lib/certs/`; the API hosts download AWS's bundle at boot and accept it only
when its SHA-256 is that copy's. The copy is AWS's "global bundle" (every region's authorities),
put there and checked by an operator (docs/security.md#tls-to-the-database); without it every database
connection is refused, never made unverified.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

# Where the copy lives in the repository, the functions' package and the operations bundle.
PACKAGE_PATH = "scripts/lib/certs/rds-global-bundle.pem"
RDS_CA_BUNDLE = Path(__file__).resolve().parents[2] / PACKAGE_PATH
RDS_CA_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"


def bundle_sha256(path: Optional[Path] = None) -> Optional[str]:
    """The pin of the copy in the repository, or None while there is none."""
    bundle = path or RDS_CA_BUNDLE
    return hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle.is_file() else None
