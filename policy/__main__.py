"""Entry point the Pulumi CLI runs for `pulumi preview --policy-pack policy`.

The CLI executes this file with the pack directory first on sys.path; the repository root is
added so the pack imports `policy.rules` exactly as the offline plan and the tests do. Building
the policies list starts nothing; `PolicyPack(...)` starts the analyzer server and blocks, so
it only runs when this file is executed, never when it is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy.pack import PACK_DESCRIPTION, PACK_NAME, build_policies  # noqa: E402

POLICIES = build_policies()

if __name__ == "__main__":
    PolicyPack(name=PACK_NAME, policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY,
               description=PACK_DESCRIPTION)
