"""The release steps of `pulumi up`, as command resources in a fixed order:

    [prod, preMigrationSnapshot] snapshot -> migrations -> (the API hosts roll) -> wait for healthy targets -> smoke tests

Two components, because the API hosts sit between them: the hosts must start after the
migrations (the new release expects the new schema), and the smoke tests must start after the
hosts are healthy behind the load balancer. The program builds `ReleaseMigrations`, then the
hosts with `depends_on=[migrations.migrations]`, then `ReleaseSmokeTests`.

When each step runs:
* snapshot: when the migrations or the app version change (every release), before anything else;
* migrations: when the migration files or the function package change (`triggers` = the
  package's content hash, which covers migrations/ and the code that applies them, and does
  not depend on how the machine compresses the zip);
* wait-healthy and smoke: on every release, i.e. whenever the app version, the package, the
  maintenance flag or a value the program adds to `release_triggers` (the launch template
  version) changes. Not on every `up`: a value that changes on each run would show a change in
  every preview and defeat drift detection (`pulumi preview --expect-no-changes`). Run them
  again by hand with `python -m scripts.smoke ... --via-function ...`, or
  `pulumi up --replace <urn of the smoke command>`.

A failing step fails `up` with the step's own one-line message; nothing after it runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_command as command

from components.commands import release_step, script_command
from components.common import type_token

DEFAULT_STATIC_PATH = "/static/admin/css/base.css"


@dataclass
class ReleaseMigrationsArgs:
    region: str  # AWS region (config aws:region) the scripts call
    migrate_function_name: pulumi.Input[str]  # DbOps.migrate_function_name
    package_sha256: str  # DbOps.package_sha256: the package's content hash, not the zip's
    app_version: str  # config appVersion: a new release takes a new snapshot
    pre_migration_snapshot: bool = False  # config preMigrationSnapshot (prod)
    db_instance_identifier: Optional[pulumi.Input[str]] = None  # required with pre_migration_snapshot
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)  # e.g. DbOps.bootstrap


class ReleaseMigrations(pulumi.ComponentResource):
    snapshot: Optional[command.local.Command]
    migrations: command.local.Command
    snapshot_id: pulumi.Output[Optional[str]]
    migrations_summary: pulumi.Output[Optional[str]]

    def __init__(self, name: str, args: ReleaseMigrationsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("release", "ReleaseMigrations"), name, None, opts)
        self.snapshot = None
        before_migrations: list[pulumi.Resource] = list(args.depends_on)
        if args.pre_migration_snapshot:
            if args.db_instance_identifier is None:
                raise ValueError("pre_migration_snapshot needs db_instance_identifier")
            self.snapshot = release_step(
                f"{name}-snapshot",
                script_command("scripts.release", "snapshot", "--db-instance", args.db_instance_identifier,
                               "--label", "pre-release", "--region", args.region),
                triggers=[args.package_sha256, args.app_version],
                parent=self, depends_on=args.depends_on)
            before_migrations.append(self.snapshot)
        self.migrations = release_step(
            f"{name}-migrations",
            script_command("scripts.release", "invoke", "--function", args.migrate_function_name, "--region", args.region),
            triggers=[args.package_sha256],
            parent=self, depends_on=before_migrations)
        self.snapshot_id = self.snapshot.stdout.apply(lambda out: _field(out, "snapshot_id")) if self.snapshot \
            else pulumi.Output.from_input(None)
        self.migrations_summary = self.migrations.stdout.apply(lambda out: _field(out, "summary"))
        self.register_outputs({"snapshot_id": self.snapshot_id, "migrations_summary": self.migrations_summary})


@dataclass
class ReleaseSmokeTestsArgs:
    region: str  # AWS region (config aws:region) the scripts call
    api_url: pulumi.Input[str]  # https://<domain> or http://<alb dns> (staging without a certificate)
    health_function_name: pulumi.Input[str]  # DbOps.health_function_name
    target_group_arn: pulumi.Input[str]  # LoadBalancer.target_group_arn: wait-healthy watches its targets
    autoscaling_group_name: pulumi.Input[str]  # ApiHosts.asg_name: wait-healthy follows its instance refresh
    app_version: str  # config appVersion: a trigger (a new release runs the steps again)
    package_sha256: str  # DbOps.package_sha256: a trigger
    maintenance: bool = False  # config maintenance: the load balancer answers 503
    static_path: str = DEFAULT_STATIC_PATH  # a static file the smoke test fetches through the load balancer
    release_triggers: Sequence[pulumi.Input[Any]] = field(default_factory=list)  # more values that mean "a new release"
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)  # the hosts (ASG) and the migrations
    # The hosts' launch template version (ApiHosts.launch_template_latest_version): an instance
    # refresh for another version is not this release's (scripts/release.py, RefreshJudge).
    launch_template_version: Optional[pulumi.Input[int]] = None


class ReleaseSmokeTests(pulumi.ComponentResource):
    wait_healthy: command.local.Command
    smoke: command.local.Command
    report: pulumi.Output[Any]

    def __init__(self, name: str, args: ReleaseSmokeTestsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("release", "ReleaseSmokeTests"), name, None, opts)
        triggers = [args.app_version, args.package_sha256, f"maintenance={str(args.maintenance).lower()}",
                    *args.release_triggers]
        wait_args: list[pulumi.Input[str]] = ["--target-group-arn", args.target_group_arn,
                                              "--asg-name", args.autoscaling_group_name]
        if args.launch_template_version is not None:
            wait_args += ["--launch-template-version", pulumi.Output.from_input(args.launch_template_version).apply(str)]
        self.wait_healthy = release_step(
            f"{name}-wait-healthy",
            script_command("scripts.release", "wait-healthy", *wait_args, "--timeout-minutes", "30", "--region", args.region),
            triggers=triggers, parent=self, depends_on=args.depends_on)
        smoke_args: list[pulumi.Input[str]] = ["--url", args.api_url, "--via-function", args.health_function_name,
                                               "--static-path", args.static_path, "--region", args.region,
                                               "--json", "--summary-only"]
        if args.maintenance:
            smoke_args.append("--expect-maintenance")
        self.smoke = release_step(
            f"{name}-smoke", script_command("scripts.smoke", *smoke_args),
            triggers=triggers, parent=self, depends_on=[self.wait_healthy])
        self.report = self.smoke.stdout.apply(_report)
        self.register_outputs({"report": self.report})


def _field(stdout: Optional[str], key: str) -> Optional[str]:
    try:
        value = json.loads(stdout or "").get(key)
    except (json.JSONDecodeError, AttributeError):
        return None
    return None if value is None else str(value)


def _report(stdout: Optional[str]) -> Any:
    """The smoke command's compact report ({ok, summary, checks}); None before the first run."""
    try:
        return json.loads(stdout) if stdout else None
    except json.JSONDecodeError:
        return {"ok": False, "summary": "the smoke command printed no report"}
