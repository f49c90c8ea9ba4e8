"""Release steps as `pulumi_command.local.Command` resources, all made the same way.

Each step runs one of the project's scripts with the project's virtualenv, from the repository
root, where `pulumi up` runs:

* the interpreter is `venv/bin/python` (Pulumi.yaml's virtualenv), or $PSYCHOLOGY_API_PYTHON;
  the variable is expanded by the shell at run time, so it is not part of the resource's inputs;
* `dir` is the checkout's absolute path, so a step never depends on the engine's working
  directory; changes to it are ignored, so `up` from another checkout (a CI runner, a laptop)
  does not run the steps again: only their triggers do;
* the scripts print nothing secret (they mask every credential they read); stdout is one JSON
  document kept as the command's output; stderr (progress and the one-line error) is logged for
  the operator and kept in the state as a secret output, since it can quote remote systems.
"""

from __future__ import annotations

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
        dir=str(ROOT),
        triggers=list(triggers),
        logging=command.local.Logging.STDOUT_AND_STDERR,
    ), pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on or []),
                              additional_secret_outputs=["stderr"], ignore_changes=["dir"]))
