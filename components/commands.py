"""Release steps as `pulumi_command.local.Command` resources, all made the same way.

Each step runs one of the project's scripts with the project's virtualenv, from the repository
root, where `pulumi up` runs:

* the interpreter is `venv/bin/python` (Pulumi.yaml's virtualenv), or $PSYCHOLOGY_API_PYTHON;
  the variable is expanded by the shell at run time, so it is not part of the resource's inputs;
* `dir` is the repository root RELATIVE to the program's working directory (`..` under the
  CLI, which runs the program and the command provider in `infra/`, the `main` of Pulumi.yaml;
  `.` when the plan runs from the root). An absolute path would tie the state to one checkout:
  `up` from a CI runner after a laptop would change every step's input, and ignoring the
  change would make the engine keep the laptop's path, where the runner has nothing;
* the scripts print nothing secret (they mask every credential they read); stdout is one JSON
  document kept as the command's output; stderr (progress and the one-line error) is logged for
  the operator and kept in the state as a secret output, since it can quote remote systems.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pulumi
import pulumi_command as command

ROOT = Path(__file__).resolve().parent.parent
PYTHON = '"${PSYCHOLOGY_API_PYTHON:-venv/bin/python}"'


def script_command(module: str, *args: pulumi.Input[str]) -> pulumi.Output[str]:
    """`<python> -m <module> <args...>` with every argument shell-quoted (Outputs allowed)."""
    return pulumi.Output.all(*args).apply(
        lambda values: " ".join([PYTHON, "-m", module, *(shlex.quote(str(v)) for v in values)]))


def release_step(name: str, create: pulumi.Input[str], *, triggers: Sequence[Any],
                 parent: pulumi.Resource, depends_on: Optional[Sequence[pulumi.Resource]] = None) -> command.local.Command:
    return command.local.Command(name, command.local.CommandArgs(
        create=create,
        dir=os.path.relpath(ROOT, Path.cwd()),
        triggers=list(triggers),
        logging=command.local.Logging.STDOUT_AND_STDERR,
    ), pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on or []),
                              additional_secret_outputs=["stderr"]))
