"""The release steps as command resources in the real plan of both stacks: order (snapshot ->
migrations -> the hosts' launch template and group -> wait-healthy -> smoke), triggers, what
they run."""

from __future__ import annotations

from components.lambda_package import build_lambda_package
from harness.mock_engine import Plan, run_program

COMMAND = "command:local:Command"
PYTHON = '"${PSYCHOLOGY_API_PYTHON:-venv/bin/python}"'


def commands(plan: Plan) -> dict[str, dict]:
    return {r.name: {"inputs": r.inputs, "depends_on": r.depends_on, "parent": r.parent} for r in plan.of_type(COMMAND)}


def test_prod_order_snapshot_migrations_hosts_healthy_smoke(prod: Plan) -> None:
    steps = commands(prod)
    assert set(steps) == {"dbops-bootstrap", "release-snapshot", "release-migrations", "release-smoke-wait-healthy",
                          "release-smoke-smoke"}
    assert "dbops-bootstrap" in steps["release-snapshot"]["depends_on"]
    assert {"release-snapshot", "dbops-bootstrap"} <= set(steps["release-migrations"]["depends_on"])
    # The hosts roll after the migrations: ApiHosts puts start_after on the launch template,
    # and the Auto Scaling group launches from that template.
    assert "release-migrations" in prod.named("api-lt").depends_on
    assert "api-lt" in prod.named("api-asg").depends_on
    assert {"api-asg", "api-lt", "release-migrations"} <= set(steps["release-smoke-wait-healthy"]["depends_on"])
    assert "release-smoke-wait-healthy" in steps["release-smoke-smoke"]["depends_on"]
    assert steps["release-snapshot"]["parent"] == "release" and steps["release-smoke-smoke"]["parent"] == "release-smoke"


def test_staging_has_no_snapshot(staging: Plan) -> None:
    steps = commands(staging)
    assert "release-snapshot" not in steps
    assert "dbops-bootstrap" in steps["release-migrations"]["depends_on"]
    assert "release-migrations" in staging.named("api-lt").depends_on


def test_snapshot_can_be_switched_off_in_prod() -> None:
    plan = run_program("prod", overrides={"preMigrationSnapshot": False})
    assert "release-snapshot" not in commands(plan)


def test_triggers(prod: Plan) -> None:
    package = build_lambda_package()
    steps = commands(prod)
    # Migrations re-run when the migration files or the package change, and only then.
    assert steps["release-migrations"]["inputs"]["triggers"] == [package.content_sha256]
    # A snapshot precedes every release (new migrations or a new app version).
    assert steps["release-snapshot"]["inputs"]["triggers"] == [package.content_sha256, "0.1.0"]
    for name in ("release-smoke-wait-healthy", "release-smoke-smoke"):
        triggers = steps[name]["inputs"]["triggers"]
        assert triggers[:3] == ["0.1.0", package.content_sha256, "maintenance=false"]
        # ... and a new launch template version (the hosts' configuration) is a release too.
        assert triggers[3:] == [prod.named("api-lt").outputs["latestVersion"]]


def test_a_new_app_version_changes_the_release_triggers_but_not_the_migrations(prod: Plan) -> None:
    newer = commands(run_program("prod", overrides={"appVersion": "0.2.0"}))
    steps = commands(prod)
    assert newer["release-migrations"]["inputs"]["triggers"] == steps["release-migrations"]["inputs"]["triggers"]
    for name in ("release-snapshot", "release-smoke-smoke", "release-smoke-wait-healthy"):
        assert newer[name]["inputs"]["triggers"] != steps[name]["inputs"]["triggers"]


def test_what_each_step_runs(prod: Plan) -> None:
    steps = {name: step["inputs"] for name, step in commands(prod).items()}
    assert steps["release-snapshot"]["create"] == (
        f"{PYTHON} -m scripts.release snapshot --db-instance psychology-api-prod-postgres --label pre-release --region eu-central-1")
    assert steps["release-migrations"]["create"] == (
        f"{PYTHON} -m scripts.release invoke --function psychology-api-prod-db-migrate --region eu-central-1")
    assert steps["release-smoke-wait-healthy"]["create"].startswith(
        f"{PYTHON} -m scripts.release wait-healthy --target-group-arn arn:aws:elasticloadbalancing:")
    assert f"--target-group-arn {prod.outputs['target_group_arn']} " in steps["release-smoke-wait-healthy"]["create"]
    assert "--asg-name psychology-api-prod-api" in steps["release-smoke-wait-healthy"]["create"]
    # Only an instance refresh of the version this release runs can fail the step.
    version = prod.named("api-lt").outputs["latestVersion"]
    assert f"--launch-template-version {version} " in steps["release-smoke-wait-healthy"]["create"]
    assert steps["release-smoke-smoke"]["create"] == (
        f"{PYTHON} -m scripts.smoke --url https://api.psychology.example.com --via-function psychology-api-prod-db-health "
        "--static-path /static/admin/css/base.css --region eu-central-1 --json --summary-only")
    for inputs in steps.values():
        assert inputs["logging"] == "stdoutAndStderr"
        assert inputs["dir"].endswith("/") is False and inputs["dir"]
        assert "password" not in inputs["create"].lower() and "environment" not in inputs


def test_maintenance_mode_expects_the_maintenance_answer() -> None:
    plan = run_program("staging", overrides={"maintenance": True})
    smoke = plan.named("release-smoke-smoke").inputs
    assert smoke["create"].endswith("--expect-maintenance")
    assert "maintenance=true" in smoke["triggers"]


def test_release_steps_off() -> None:
    plan = run_program("staging", overrides={"releaseSteps": False})
    assert set(commands(plan)) == {"dbops-bootstrap"}
    assert "smoke_test_report" not in plan.outputs
    # Without release steps the hosts still wait for the first migration run.
    assert "dbops-bootstrap" in plan.named("api-lt").depends_on


def test_smoke_report_is_a_stack_output(prod: Plan) -> None:
    # Under the mock engine no command runs: the report is empty until the first `up`.
    assert "smoke_test_report" in prod.outputs and prod.outputs["smoke_test_report"] is None
    assert "smoke_test_report" not in prod.secret_outputs
