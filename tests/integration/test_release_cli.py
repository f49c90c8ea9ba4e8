"""The release-step commands that `pulumi up` runs (scripts.release), against moto: the migrate
function's real answer through Lambda, a pre-migration RDS snapshot, waiting for healthy
targets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import boto3
import pytest
from botocore.stub import Stubber

from scripts.dbops import handlers
from scripts.lib.cli import ScriptError
from scripts.release import REFRESH_RUNNING, RefreshJudge, snapshot_identifier, wait_healthy
from tests.clock import Clock
from tests.integration.dbops_support import DbSecrets, create_function, queue_lambda_result
from tests.services import MotoServer, PgServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def release(*args: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.release", *args, "--endpoint-url", endpoint, "--region", "eu-central-1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_invoke_passes_the_migrate_answer_and_fails_with_its_message(
        db_secrets: DbSecrets, function_env: DbSecrets, moto_lambda: MotoServer, pg_server: PgServer) -> None:
    create_function(moto_lambda.endpoint_url, "psychology-api-test-db-migrate")
    queue_lambda_result(moto_lambda.endpoint_url, handlers.migrate_handler({}))  # the real answer
    ok = release("invoke", "--function", "psychology-api-test-db-migrate", endpoint=moto_lambda.endpoint_url)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["latest"] == "0005_backup_and_drill_roles.sql" and len(doc["applied"]) == 5
    assert ok.stderr.strip().splitlines()[-1].startswith("PASS: psychology-api-test-db-migrate:")

    failing = {"ok": False, "error": "migration 0004_x.sql failed and was rolled back (nothing of it applied): "
                                     "SQLSTATE 42P01: relation \"nope\" does not exist"}
    queue_lambda_result(moto_lambda.endpoint_url, failing)
    bad = release("invoke", "--function", "psychology-api-test-db-migrate", endpoint=moto_lambda.endpoint_url)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines()[-1] == f"error: psychology-api-test-db-migrate: {failing['error']}"
    assert pg_server.password not in ok.stdout + ok.stderr + bad.stderr


def test_invoke_of_a_missing_function_fails(moto_lambda: MotoServer) -> None:
    run = release("invoke", "--function", "no-such-function", endpoint=moto_lambda.endpoint_url)
    assert run.returncode == 1 and "error:" in run.stderr


def test_invoke_is_never_sent_twice(tmp_path: Path) -> None:
    """A connection dropped during the migrate function's invocation (a NAT idle timeout in a long
    migration) fails the step; the client does not invoke the function a second time."""
    connections: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def drop_every_connection() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                connections.append(conn.recv(65536))  # read the request, then hang up without an answer

    threading.Thread(target=drop_every_connection, daemon=True).start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    try:
        run = subprocess.run([sys.executable, "-m", "scripts.release", "invoke", "--function", "psychology-api-x-db-migrate",
                              "--endpoint-url", f"http://127.0.0.1:{server.getsockname()[1]}", "--region", "eu-central-1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    finally:
        server.close()
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: ")
    assert len(connections) == 1 and b"/functions/psychology-api-x-db-migrate/invocations" in connections[0]


def test_pre_migration_snapshot(aws_env: MotoServer) -> None:
    rds = boto3.client("rds", endpoint_url=aws_env.endpoint_url, region_name="eu-central-1")
    rds.create_db_instance(DBInstanceIdentifier="psychology-api-prod-db", DBInstanceClass="db.t4g.medium",
                           Engine="postgres", MasterUsername="psychology", AllocatedStorage=20,
                           ManageMasterUserPassword=True)
    run = release("snapshot", "--db-instance", "psychology-api-prod-db", "--poll-seconds", "1", endpoint=aws_env.endpoint_url)
    assert run.returncode == 0, run.stderr
    snapshot_id = json.loads(run.stdout)["snapshot_id"]
    assert snapshot_id.startswith("psychology-api-prod-db-pre-release-")
    described = rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)["DBSnapshots"][0]
    assert described["Status"] == "available" and described["DBInstanceIdentifier"] == "psychology-api-prod-db"

    missing = release("snapshot", "--db-instance", "no-such-db", "--poll-seconds", "1", endpoint=aws_env.endpoint_url)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: CreateDBSnapshot: DBInstanceNotFound")


def test_snapshot_identifier_is_valid_for_rds() -> None:
    from datetime import datetime

    ident = snapshot_identifier("1db--x_", "pre release", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert ident == "s-1db-x-pre-release-20260102-030405"
    assert "--" not in ident and ident[0].isalpha()


def _target_group(endpoint: str, instances: int) -> str:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="eu-central-1")
    elbv2 = boto3.client("elbv2", endpoint_url=endpoint, region_name="eu-central-1")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    tg = elbv2.create_target_group(Name="api", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance",
                                   HealthCheckPath="/health/")["TargetGroups"][0]["TargetGroupArn"]
    if instances:
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12345678", MinCount=instances, MaxCount=instances)["Instances"]]
        elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": i, "Port": 80} for i in ids])
    return str(tg)


def test_wait_healthy(aws_env: MotoServer) -> None:
    tg = _target_group(aws_env.endpoint_url, instances=2)
    run = release("wait-healthy", "--target-group-arn", tg, "--min-healthy", "2", "--timeout-minutes", "1",
                  "--poll-seconds", "1", endpoint=aws_env.endpoint_url)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"ok": True, "healthy": 2, "wanted": 2}


def test_wait_healthy_times_out_with_the_reason(aws_env: MotoServer) -> None:
    tg = _target_group(aws_env.endpoint_url, instances=0)
    run = release("wait-healthy", "--target-group-arn", tg, "--timeout-minutes", "0", "--poll-seconds", "1",
                  endpoint=aws_env.endpoint_url)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == "error: hosts not healthy after 0 min: 0/1 healthy (no targets)"


def test_help(tmp_path: Any) -> None:
    for sub in ([], ["invoke"], ["snapshot"], ["wait-healthy"]):
        run = subprocess.run([sys.executable, "-m", "scripts.release", *sub, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0 and "usage:" in run.stdout


def _step_snapshot(rds: Any, db: str, stamp: str, label: str = "pre-release", tags: Optional[dict[str, str]] = None) -> str:
    """A snapshot as an earlier run of the step left it (or, with other tags, one that only
    looks like it)."""
    ident = f"{db}-{label}-{stamp}"
    tags = {"purpose": label, "managed-by": "pulumi-release-step"} if tags is None else tags
    rds.create_db_snapshot(DBSnapshotIdentifier=ident, DBInstanceIdentifier=db,
                           Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return ident


def test_snapshot_prunes_only_its_own_older_snapshots(aws_env: MotoServer) -> None:
    rds = boto3.client("rds", endpoint_url=aws_env.endpoint_url, region_name="eu-central-1")
    db, other_db = "psychology-api-prod-db", "psychology-api-prod-db-copy"
    for name in (db, other_db):
        rds.create_db_instance(DBInstanceIdentifier=name, DBInstanceClass="db.t4g.medium", Engine="postgres",
                               MasterUsername="psychology", AllocatedStorage=20, ManageMasterUserPassword=True)
    older = [_step_snapshot(rds, db, f"2026010{day}-120000") for day in range(1, 7)]  # six earlier releases
    foreign = [
        # An operator's snapshot of the same instance, without tags.
        rds.create_db_snapshot(DBSnapshotIdentifier="before-the-upgrade", DBInstanceIdentifier=db)["DBSnapshot"]["DBSnapshotIdentifier"],
        # Named like ours, but not tagged by the step.
        _step_snapshot(rds, db, "20250101-120000", tags={"purpose": "pre-release"}),
        # Ours, but of another label and of another instance.
        _step_snapshot(rds, db, "20250101-120000", label="before-maintenance",
                       tags={"purpose": "before-maintenance", "managed-by": "pulumi-release-step"}),
        _step_snapshot(rds, other_db, "20250101-120000"),
    ]

    run = release("snapshot", "--db-instance", db, "--poll-seconds", "1", "--keep", "3", endpoint=aws_env.endpoint_url)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    new = doc["snapshot_id"]
    # Kept: the new one and the two newest before it; the four oldest are gone, and said so.
    assert sorted(doc["pruned"]) == older[:4] and doc["kept"] == 3
    left = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]}
    assert left == {new, *older[4:], *foreign}
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"PASS: snapshot {new} of {db} is available; pruned 4 older: ") and older[0] in last

    # Nothing more to prune: the step never deletes below --keep, and --keep 0 keeps everything.
    while snapshot_identifier(db, "pre-release") == new:  # names have a resolution of one second
        time.sleep(0.1)
    again = release("snapshot", "--db-instance", db, "--poll-seconds", "1", "--keep", "0", endpoint=aws_env.endpoint_url)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["pruned"] == []
    assert len(rds.describe_db_snapshots(DBInstanceIdentifier=db, SnapshotType="manual")["DBSnapshots"]) == 3 + 3 + 1

    bad = release("snapshot", "--db-instance", db, "--keep", "-1", endpoint=aws_env.endpoint_url)
    assert bad.returncode == 2 and "--keep" in bad.stderr


# --- which instance refreshes are this release's ---------------------------------------------
# moto 5.2.5 does not implement DescribeInstanceRefreshes (NotImplementedError), so the Auto
# Scaling answers are scripted with botocore's Stubber, which validates every request and every
# answer against the real service model; the load balancer's targets are moto's.

ASG = "psychology-api-prod-api"
NOW = datetime.now(UTC)


def refresh(ident: str, status: str, started: datetime, reason: str = "", desired_version: Optional[str] = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"InstanceRefreshId": ident, "AutoScalingGroupName": ASG, "Status": status, "StartTime": started,
                           "PercentageComplete": 100 if status == "Successful" else 40}
    if reason:
        doc["StatusReason"] = reason
    if status not in REFRESH_RUNNING:
        doc["EndTime"] = started + timedelta(minutes=5)
    if desired_version:
        doc["DesiredConfiguration"] = {"LaunchTemplate": {"LaunchTemplateName": "psychology-api-prod-api",
                                                          "Version": desired_version}}
    return doc



def scripted_autoscaling(*polls: list[dict[str, Any]], desired: int = 2, fails: bool = False) -> tuple[Any, Stubber]:
    """A client answering each poll with these refreshes (newest first) and the group; with
    `fails`, the last poll ends the step before the group is asked for."""
    client = boto3.client("autoscaling", region_name="eu-central-1", aws_access_key_id="test", aws_secret_access_key="test")
    stub = Stubber(client)
    group = {"AutoScalingGroupName": ASG, "MinSize": 2, "MaxSize": 4, "DesiredCapacity": desired, "DefaultCooldown": 300,
             "AvailabilityZones": ["eu-central-1a"], "HealthCheckType": "ELB", "CreatedTime": NOW - timedelta(days=30)}
    for refreshes in polls:
        stub.add_response("describe_instance_refreshes", {"InstanceRefreshes": refreshes},
                          expected_params={"AutoScalingGroupName": ASG, "MaxRecords": 20})
        if not (fails and refreshes is polls[-1]):
            stub.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [group]},
                              expected_params={"AutoScalingGroupNames": [ASG]})
    return client, stub


def judge(version: Optional[str] = None) -> RefreshJudge:
    return RefreshJudge(step_started=NOW, lookback=timedelta(minutes=30), launch_template_version=version)


@pytest.fixture
def two_hosts(aws_env: MotoServer) -> tuple[str, str]:
    """(moto's endpoint, a target group with two healthy targets)."""
    return aws_env.endpoint_url, _target_group(aws_env.endpoint_url, instances=2)


def run_wait(hosts: tuple[str, str], autoscaling: Any, version: Optional[str] = None,
             clock: Optional[Clock] = None) -> dict[str, Any]:
    endpoint, target_group = hosts
    clock = clock or Clock()
    elbv2 = boto3.client("elbv2", endpoint_url=endpoint, region_name="eu-central-1")
    return wait_healthy(elbv2, autoscaling, target_group_arn=target_group, asg_name=ASG, judge=judge(version),
                        timeout_seconds=600, poll_seconds=15, clock=clock, sleep=clock.sleep)


def test_a_refresh_cancelled_long_before_the_release_does_not_fail_it(two_hosts: tuple[str, str]) -> None:
    """An operator cancelled a refresh three days ago; this release did not change the launch
    template, so no refresh is its own: the healthy targets decide."""
    old = refresh("old-cancelled", "Cancelled", NOW - timedelta(days=3), "Cancelled by an operator")
    client, stub = scripted_autoscaling([old])
    with stub:
        doc = run_wait(two_hosts, client)
        stub.assert_no_pending_responses()
    assert doc["ok"] is True and doc["healthy"] == 2 and doc["wanted"] == 2
    assert doc["ignored_refreshes"] == ["old-cancelled"]


def test_this_releases_failed_refresh_fails_the_step(two_hosts: tuple[str, str]) -> None:
    """Started by `pulumi up` minutes before this step (the provider gives no desired
    configuration): the release's own refresh, and it failed."""
    ours = refresh("ours", "Failed", NOW - timedelta(minutes=4), "Instance failed to become healthy")
    old = refresh("old", "Successful", NOW - timedelta(days=20))
    client, stub = scripted_autoscaling([ours, old], fails=True)
    with stub, pytest.raises(ScriptError) as err:
        run_wait(two_hosts, client)
    assert str(err.value) == (f"this release's instance refresh ours (started {ours['StartTime']:%Y-%m-%d %H:%M:%S} UTC) "
                              f"of {ASG} ended Failed: Instance failed to become healthy")


def test_the_desired_configuration_decides_when_it_names_a_version(two_hosts: tuple[str, str]) -> None:
    # Old, but rolling out the version this release runs: this release's verdict.
    same = refresh("same-version", "Cancelled", NOW - timedelta(days=2), "Cancelled", desired_version="7")
    client, stub = scripted_autoscaling([same], fails=True)
    with stub, pytest.raises(ScriptError, match="this release's instance refresh same-version .* ended Cancelled"):
        run_wait(two_hosts, client, version="7")
    # Recent, but for another version: not this release's.
    other = refresh("other-version", "RollbackSuccessful", NOW - timedelta(minutes=2), "Rolled back", desired_version="6")
    client, stub = scripted_autoscaling([other])
    with stub:
        assert run_wait(two_hosts, client, version="7")["ignored_refreshes"] == ["other-version"]


def test_a_running_refresh_is_waited_for(two_hosts: tuple[str, str]) -> None:
    started = NOW - timedelta(minutes=1)
    clock = Clock()
    client, stub = scripted_autoscaling([refresh("ours", "InProgress", started)], [refresh("ours", "Successful", started)])
    with stub:
        doc = run_wait(two_hosts, client, clock=clock)
        stub.assert_no_pending_responses()
    assert doc["ok"] is True and clock.sleeps == [15]
