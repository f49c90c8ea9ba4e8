"""Entry point that `pulumi preview` / `pulumi up` run (Pulumi.yaml: main: infra/)."""

import sys
from pathlib import Path

# Pulumi runs this directory as the program; the components live next to it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi  # noqa: E402

from infra.config import ConfigError  # noqa: E402
from infra.program import main  # noqa: E402

try:
    main()
except ConfigError as err:
    # RunError is reported by the engine as its message alone, without a traceback.
    raise pulumi.RunError(str(err)) from None
