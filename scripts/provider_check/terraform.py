"""Terraform with the mirrored hashicorp/aws provider, run offline in a scratch directory.

Fake credentials and the provider's skip_* settings keep every command off the network:
`terraform validate` runs the provider's attribute validators, `terraform plan -refresh=false`
its plan-time checks (CustomizeDiff) on resources that do not exist yet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from packaging.version import InvalidVersion, Version

PROVIDER_SOURCE = "registry.terraform.io/hashicorp/aws"
# Where this machine kind and the usual Terraform layouts keep local provider mirrors.
MIRROR_CANDIDATES = (
    "/opt/tf-plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)
COMMAND_TIMEOUT_SECONDS = 600


class CheckUnavailable(Exception):
    """The check cannot run here; the message says what is missing, in one line."""


@dataclass(frozen=True)
class Toolchain:
    terraform: Path
    mirror: Path  # the folder that holds registry.terraform.io/
    provider_version: str


def _mirrored_versions(mirror: Path) -> list[str]:
    base = mirror / PROVIDER_SOURCE
    found = []
    for binary in base.glob("*/*/terraform-provider-aws_*"):
        try:
            found.append(str(Version(binary.parent.parent.name)))
        except InvalidVersion:
            continue
    return found


def find_toolchain(environ: Optional[dict[str, str]] = None) -> Toolchain:
    env = os.environ if environ is None else environ
    terraform = env.get("PSYCHOLOGY_API_TERRAFORM") or shutil.which("terraform", path=env.get("PATH"))
    if not terraform:
        raise CheckUnavailable("terraform is not on PATH (set PSYCHOLOGY_API_TERRAFORM to its path)")
    configured = env.get("PSYCHOLOGY_API_TF_PLUGIN_MIRROR")
    candidates = [configured] if configured else list(MIRROR_CANDIDATES)
    for candidate in candidates:
        mirror = Path(candidate).expanduser()
        versions = _mirrored_versions(mirror)
        if versions:
            return Toolchain(Path(terraform), mirror, max(versions, key=Version))
    where = configured or ", ".join(MIRROR_CANDIDATES)
    raise CheckUnavailable(f"no hashicorp/aws provider in a Terraform plugin mirror ({where}); "
                           "set PSYCHOLOGY_API_TF_PLUGIN_MIRROR to the folder above registry.terraform.io")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def one_line_error(self) -> str:
        lines = [line.strip() for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        return next((line for line in lines if "Error" in line), lines[0] if lines else f"exit {self.returncode}")


class Workspace:
    """A scratch Terraform directory with a CLI config that only looks at the mirror."""

    def __init__(self, toolchain: Toolchain, directory: Path):
        self.toolchain = toolchain
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "terraform.rc").write_text(
            "provider_installation {\n"
            f'  filesystem_mirror {{\n    path    = "{toolchain.mirror}"\n    include = ["{PROVIDER_SOURCE}"]\n  }}\n'
            f'  direct {{\n    exclude = ["{PROVIDER_SOURCE}"]\n  }}\n'
            "}\n")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_"))}
        env.update({
            "TF_CLI_CONFIG_FILE": str(self.dir / "terraform.rc"), "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0",
            # Never real credentials: the check must not be able to reach an account.
            "AWS_ACCESS_KEY_ID": "AKIAPROVIDERCHECK000", "AWS_SECRET_ACCESS_KEY": "provider-check-not-a-key",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        return env

    def run(self, *args: str) -> Result:
        try:
            done = subprocess.run([str(self.toolchain.terraform), *args, "-no-color"], cwd=self.dir, env=self._env(),
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired as err:
            raise CheckUnavailable(f"terraform {args[0]} did not finish in {COMMAND_TIMEOUT_SECONDS} s") from err
        return Result(done.returncode, done.stdout, done.stderr)

    def write_config(self, text: str) -> Path:
        path = self.dir / "main.tf.json"
        path.write_text(text)
        return path

    def init(self) -> None:
        """Install the mirrored provider for a configuration that needs nothing else."""
        minimal = {"terraform": {"required_providers": {"aws": {
            "source": "hashicorp/aws", "version": self.toolchain.provider_version}}}}
        self.write_config(json.dumps(minimal))
        result = self.run("init", "-input=false", "-backend=false")
        if result.returncode != 0:
            raise CheckUnavailable(f"terraform init with the mirrored provider failed: {result.one_line_error()}")

    def provider_schema(self) -> dict[str, Any]:
        result = self.run("providers", "schema", "-json")
        if result.returncode != 0:
            raise CheckUnavailable(f"terraform providers schema failed: {result.one_line_error()}")
        return dict(json.loads(result.stdout))

    def version(self) -> str:
        result = self.run("version", "-json")
        try:
            return str(json.loads(result.stdout)["terraform_version"])
        except (ValueError, KeyError):
            match = re.search(r"v(\d+\.\d+\.\d+)", result.stdout)
            return match.group(1) if match else "unknown"

    def validate(self) -> list[dict[str, Any]]:
        """The diagnostics of `terraform validate` (errors and warnings)."""
        result = self.run("validate", "-json")
        try:
            return list(json.loads(result.stdout).get("diagnostics", []))
        except ValueError as err:
            raise CheckUnavailable(f"terraform validate gave no JSON: {result.one_line_error()}") from err

    def plan(self) -> tuple[bool, list[dict[str, Any]]]:
        """(planned, diagnostics) of an offline plan written to ./tfplan."""
        result = self.run("plan", "-refresh=false", "-input=false", "-lock=false", "-json", "-out=tfplan")
        diagnostics = []
        for line in result.stdout.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("type") == "diagnostic":
                diagnostics.append(message["diagnostic"])
        if result.returncode != 0 and not any(d.get("severity") == "error" for d in diagnostics):
            raise CheckUnavailable(f"terraform plan failed without a diagnostic: {result.one_line_error()}")
        return result.returncode == 0, diagnostics

    def show_plan(self) -> Path:
        """The saved plan as JSON (what checkov reads)."""
        result = self.run("show", "-json", "tfplan")
        if result.returncode != 0:
            raise CheckUnavailable(f"terraform show failed: {result.one_line_error()}")
        path = self.dir / "tfplan.json"
        path.write_text(result.stdout)
        return path
