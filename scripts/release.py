"""Release steps that `pulumi up` runs as command resources (components/release.py); operators
can run them by hand the same way.

    python -m scripts.release invoke --function NAME [--payload JSON]
        Invoke an in-VPC function synchronously (the migrate function); fail with the function's
        own message on a FunctionError or an answer with "ok": false.
    python -m scripts.release snapshot --db-instance ID [--label pre-release] [--wait-minutes 60] [--keep 5]
        Take a manual RDS snapshot and wait until it is available (go-live plan step 1); then
        delete this step's older snapshots of that instance and label beyond the newest --keep
        (only snapshots this step made: tags managed-by=pulumi-release-step and purpose=LABEL).
    python -m scripts.release wait-healthy --target-group-arn ARN [--asg-name NAME] [--min-healthy N]
                                          [--launch-template-version V] [--refresh-lookback-minutes 30]
        Wait until no instance refresh of the Auto Scaling group runs and enough targets are
        healthy behind the load balancer (the smoke tests come after); fail when this
        release's instance refresh failed or was cancelled. Refreshes from before the release
        (one an operator cancelled last week) are not this release's verdict.

stdout carries one JSON document without secrets (the command's output in Pulumi's state);
progress and errors go to stderr. Exit codes: 0 done, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from scripts.lib import aws, cli

# Instance refresh states (EC2 Auto Scaling API).
REFRESH_RUNNING = {"Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"}
REFRESH_FAILED = {"Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}
# Snapshot states from which it never becomes available (botocore's db_snapshot_available waiter).
SNAPSHOT_FAILED = {"deleted", "deleting", "failed", "incompatible-restore", "incompatible-parameters"}
POLL_SECONDS = 15
# How the snapshot step marks its snapshots; pruning deletes nothing without both tags.
SNAPSHOT_MANAGED_BY = ("managed-by", "pulumi-release-step")
SNAPSHOT_PURPOSE_TAG = "purpose"
DEFAULT_KEEP_SNAPSHOTS = 5


def _emit(doc: dict[str, Any]) -> None:
    # One JSON document on stdout: Pulumi keeps it as the command's output.
    cli.emit_json(doc)


def cmd_invoke(args: argparse.Namespace) -> int:
    payload = args.payload or "{}"
    try:
        json.loads(payload)
    except json.JSONDecodeError:
        cli.fail("--payload is not JSON", cli.EXIT_USAGE)
    client = aws.client("lambda", region=args.region, endpoint_url=args.endpoint_url, read_timeout=900, total_attempts=1)
    cli.info(f"invoking {args.function}")
    response = client.invoke(FunctionName=args.function, InvocationType="RequestResponse", Payload=payload.encode())
    raw = response["Payload"].read()
    try:
        answer = json.loads(raw or b"null")
    except json.JSONDecodeError:
        answer = None
    if response.get("FunctionError"):
        message = answer.get("errorMessage") if isinstance(answer, dict) else None
        cli.fail(f"{args.function} failed ({response['FunctionError']}): {message or 'no error message'}")
    if not isinstance(answer, dict):
        cli.fail(f"{args.function} answered something that is not a JSON object")
    if not answer.get("ok"):
        cli.fail(f"{args.function}: {answer.get('error') or answer.get('summary') or 'answered ok=false'}")
    summary = str(answer.get("summary") or "ok")
    _emit({"ok": True, "function": args.function, "summary": summary,
           **{k: answer[k] for k in ("applied", "pending", "latest", "credentials") if k in answer}})
    cli.verdict(True, f"{args.function}: {summary}")
    return cli.EXIT_OK


def snapshot_identifier(db_instance: str, label: str, now: Optional[datetime] = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    ident = f"{db_instance}-{label}-{stamp}"
    # RDS: letters, digits and single hyphens, starting with a letter, at most 255 characters.
    cleaned = "-".join(part for part in "".join(c if c.isalnum() else "-" for c in ident).split("-") if part)
    if not cleaned[:1].isalpha():
        cleaned = "s-" + cleaned
    return cleaned[:255].rstrip("-")


def _snapshot_tags(rds: Any, snapshot: dict[str, Any]) -> dict[str, str]:
    tags = snapshot.get("TagList")
    if tags is None:  # older API answers carry no tags
        tags = rds.list_tags_for_resource(ResourceName=snapshot["DBSnapshotArn"]).get("TagList", [])
    return {str(t.get("Key")): str(t.get("Value")) for t in tags}


def step_snapshots(rds: Any, db_instance: str, label: str) -> list[dict[str, Any]]:
    """The manual snapshots of `db_instance` that this step made with `label`, newest first.
    A snapshot counts only with both of the step's tags, the step's name pattern and the
    instance, so nothing an operator or AWS Backup made is ever among them."""
    prefix = snapshot_identifier(db_instance, label, datetime(2000, 1, 1, tzinfo=UTC))[: -len("20000101-000000")]
    found = []
    for page in rds.get_paginator("describe_db_snapshots").paginate(DBInstanceIdentifier=db_instance,
                                                                      SnapshotType="manual"):
        for snapshot in page.get("DBSnapshots", []):
            ident = str(snapshot.get("DBSnapshotIdentifier", ""))
            if snapshot.get("DBInstanceIdentifier") != db_instance or not ident.startswith(prefix):
                continue
            tags = _snapshot_tags(rds, snapshot)
            if tags.get(SNAPSHOT_MANAGED_BY[0]) == SNAPSHOT_MANAGED_BY[1] and tags.get(SNAPSHOT_PURPOSE_TAG) == label:
                found.append(snapshot)
    # A snapshot still being created may have no creation time yet: it is among the newest.
    latest = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda s: (s.get("SnapshotCreateTime") or latest, s["DBSnapshotIdentifier"]), reverse=True)


def prune_snapshots(rds: Any, db_instance: str, label: str, keep: int, newest: str) -> tuple[list[str], list[str]]:
    """Delete this step's snapshots beyond the newest `keep` (never `newest`, the one just
    taken). Returns (deleted, left because they are not `available`: being created, copied or
    deleted already)."""
    deleted: list[str] = []
    skipped: list[str] = []
    for snapshot in step_snapshots(rds, db_instance, label)[keep:]:
        ident = str(snapshot["DBSnapshotIdentifier"])
        if ident == newest:
            continue
        if snapshot.get("Status") != "available":
            skipped.append(ident)
            continue
        rds.delete_db_snapshot(DBSnapshotIdentifier=ident)
        cli.info(f"deleted the older release snapshot {ident}")
        deleted.append(ident)
    return deleted, skipped


def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.keep < 0:
        cli.fail("--keep must be 0 (keep all) or more", cli.EXIT_USAGE)
    rds = aws.client("rds", region=args.region, endpoint_url=args.endpoint_url)
    ident = snapshot_identifier(args.db_instance, args.label)
    cli.info(f"creating snapshot {ident} of {args.db_instance}")
    rds.create_db_snapshot(DBSnapshotIdentifier=ident, DBInstanceIdentifier=args.db_instance,
                           Tags=[{"Key": SNAPSHOT_PURPOSE_TAG, "Value": args.label},
                                 {"Key": SNAPSHOT_MANAGED_BY[0], "Value": SNAPSHOT_MANAGED_BY[1]}])
    wait_snapshot_available(rds, ident, timeout_minutes=args.wait_minutes, poll_seconds=args.poll_seconds)
    doc: dict[str, Any] = {"ok": True, "snapshot_id": ident, "db_instance": args.db_instance, "kept": args.keep,
                           "pruned": []}
    summary = f"snapshot {ident} of {args.db_instance} is available"
    if args.keep:
        # Housekeeping after the snapshot that protects this release exists: a failure here
        # (say, no rds:DeleteDBSnapshot) is reported, but does not stop the release.
        try:
            with aws.one_line_errors():
                pruned, skipped = prune_snapshots(rds, args.db_instance, args.label, args.keep, ident)
        except cli.ScriptError as err:
            cli.info(f"warning: older release snapshots were not pruned: {err}")
            doc["prune_error"] = str(err)
            summary += f"; pruning failed: {err}"
        else:
            doc["pruned"] = pruned
            if skipped:
                doc["prune_skipped"] = skipped
            # The verdict names the oldest only (the line stays short); each deletion has its own line above.
            oldest = sorted(pruned)[0] if pruned else ""
            summary += (f"; pruned {len(pruned)} older: {oldest}" + (f" and {len(pruned) - 1} newer" if len(pruned) > 1 else "")
                        if pruned else f"; nothing to prune (keeping the newest {args.keep})")
    _emit(doc)
    cli.verdict(True, summary)
    return cli.EXIT_OK


def wait_snapshot_available(rds: Any, ident: str, *, timeout_minutes: int, poll_seconds: float,
                            clock: Callable[[], float] = time.monotonic,
                            sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll until the snapshot is available, with a progress line per poll (the snapshot of a
    large database takes many minutes); raise ScriptError when it fails or the time is up."""
    started = clock()
    while True:
        snapshots = rds.describe_db_snapshots(DBSnapshotIdentifier=ident).get("DBSnapshots", [])
        snapshot = snapshots[0] if snapshots else {}
        status = str(snapshot.get("Status", "missing"))
        if status == "available":
            return
        if status in SNAPSHOT_FAILED:
            raise cli.ScriptError(f"snapshot {ident} ended {status}, not available")
        elapsed = clock() - started
        if elapsed >= timeout_minutes * 60:
            raise cli.ScriptError(f"snapshot {ident} did not become available within {timeout_minutes} min: "
                                  f"it is {status}")
        progress = snapshot.get("PercentProgress")
        cli.info(f"waiting: snapshot {ident} is {status}" + (f" ({progress}%)" if progress is not None else "")
                 + f", {int(elapsed)} s of at most {timeout_minutes} min; next look in {poll_seconds:g} s")
        sleep(poll_seconds)


@dataclass(frozen=True)
class RefreshJudge:
    """Which instance refreshes are this release's.

    `pulumi up` starts the release's refresh when it updates the group (a new launch template
    version), which is before this step starts: the group's update may take up to its
    capacity timeout (15 min). So "this release's" means: the refresh's desired configuration
    names the launch template version this release runs (when both are known), or, for a
    refresh without one (what the provider starts), it started at most `lookback` before
    this step began. An older refresh, say one an operator cancelled last week, says nothing
    about this release: then the healthy targets decide. A refresh that is still running is
    waited for whatever its age, since it is replacing hosts."""

    step_started: datetime
    lookback: timedelta
    launch_template_version: Optional[str] = None

    def concerns_this_release(self, refresh: dict[str, Any]) -> bool:
        desired = ((refresh.get("DesiredConfiguration") or {}).get("LaunchTemplate") or {}).get("Version")
        if self.launch_template_version and desired and str(desired).isdigit():
            return str(desired) == self.launch_template_version
        started = refresh.get("StartTime")
        return isinstance(started, datetime) and started >= self.step_started - self.lookback


def _describe(refresh: dict[str, Any]) -> str:
    started = refresh.get("StartTime")
    when = started.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(started, datetime) else "an unknown time"
    return f"instance refresh {refresh.get('InstanceRefreshId', '?')} (started {when})"


def wait_healthy(elbv2: Any, autoscaling: Optional[Any], *, target_group_arn: str, asg_name: Optional[str],
                 judge: RefreshJudge, min_healthy: int = 0, timeout_seconds: float = 1800,
                 poll_seconds: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until no refresh runs and enough targets are healthy; raise ScriptError when this
    release's refresh failed or the time is up."""
    deadline = clock() + timeout_seconds
    ignored: set[str] = set()
    while True:
        wanted = min_healthy
        refreshing = ""
        if autoscaling is not None and asg_name:
            # Newest first; a release's refresh is among the latest few.
            refreshes = autoscaling.describe_instance_refreshes(AutoScalingGroupName=asg_name,
                                                                MaxRecords=20).get("InstanceRefreshes", [])
            running = [r for r in refreshes if r.get("Status") in REFRESH_RUNNING]
            if running:
                refreshing = f"{_describe(running[0])} is {running[0]['Status']}"
            ours = next((r for r in refreshes if judge.concerns_this_release(r)), None)
            if ours is not None and ours.get("Status") in REFRESH_FAILED:
                raise cli.ScriptError(f"this release's {_describe(ours)} of {asg_name} ended {ours['Status']}: "
                                      f"{ours.get('StatusReason') or 'no reason given'}")
            for refresh in refreshes:
                ident = str(refresh.get("InstanceRefreshId", ""))
                if refresh.get("Status") in REFRESH_FAILED and refresh is not ours and ident not in ignored:
                    ignored.add(ident)
                    cli.info(f"not this release's: {_describe(refresh)} ended {refresh['Status']}; ignored")
            groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])["AutoScalingGroups"]
            if not groups:
                raise cli.ScriptError(f"Auto Scaling group {asg_name} does not exist")
            wanted = wanted or int(groups[0].get("DesiredCapacity") or 1)
        wanted = max(1, wanted or 1)
        targets = elbv2.describe_target_health(TargetGroupArn=target_group_arn)["TargetHealthDescriptions"]
        states = [t.get("TargetHealth", {}).get("State", "unknown") for t in targets]
        healthy = states.count("healthy")
        last = (f"{healthy}/{wanted} healthy ({', '.join(sorted(set(states))) or 'no targets'})"
                + (f"; {refreshing}" if refreshing else ""))
        if healthy >= wanted and not refreshing:
            return {"ok": True, "healthy": healthy, "wanted": wanted, "summary": last,
                    "ignored_refreshes": sorted(ignored)}
        if clock() >= deadline:
            raise cli.ScriptError(f"hosts not healthy after {int(timeout_seconds // 60)} min: {last}")
        cli.info(f"waiting: {last}")
        sleep(poll_seconds)


def cmd_wait_healthy(args: argparse.Namespace) -> int:
    elbv2 = aws.client("elbv2", region=args.region, endpoint_url=args.endpoint_url)
    autoscaling = aws.client("autoscaling", region=args.region, endpoint_url=args.endpoint_url) if args.asg_name else None
    judge = RefreshJudge(step_started=datetime.now(UTC), lookback=timedelta(minutes=args.refresh_lookback_minutes),
                         launch_template_version=args.launch_template_version)
    doc = wait_healthy(elbv2, autoscaling, target_group_arn=args.target_group_arn, asg_name=args.asg_name, judge=judge,
                       min_healthy=args.min_healthy, timeout_seconds=args.timeout_minutes * 60,
                       poll_seconds=args.poll_seconds)
    summary = doc.pop("summary")
    if not doc["ignored_refreshes"]:
        doc.pop("ignored_refreshes")
    _emit(doc)
    cli.verdict(True, f"hosts healthy behind the load balancer: {summary}")
    return cli.EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    invoke = sub.add_parser("invoke", help="invoke an in-VPC function and fail on its failure")
    invoke.add_argument("--function", required=True, help="function name or ARN")
    invoke.add_argument("--payload", default=None, help="JSON event (default {}); not JSON is a usage error")
    invoke.set_defaults(handler=cmd_invoke)

    snapshot = sub.add_parser("snapshot", help="manual RDS snapshot, waited for")
    snapshot.add_argument("--db-instance", required=True, help="RDS instance identifier")
    snapshot.add_argument("--label", default="pre-release", help="part of the snapshot name and its purpose tag")
    snapshot.add_argument("--wait-minutes", type=cli.int_range(1), default=60, metavar="M",
                          help="fail when the snapshot is not available after M minutes (default %(default)s)")
    snapshot.add_argument("--poll-seconds", type=cli.int_range(1), default=30, metavar="S",
                          help="look at the snapshot's state every S seconds, with a progress line (default %(default)s)")
    snapshot.add_argument("--keep", type=int, default=DEFAULT_KEEP_SNAPSHOTS, metavar="N",
                          help="after the new snapshot, delete this step's older snapshots of the instance and label "
                               "beyond the newest N, the new one included (default %(default)s; 0 keeps all). "
                               "Needs rds:DeleteDBSnapshot")
    snapshot.set_defaults(handler=cmd_snapshot)

    wait = sub.add_parser("wait-healthy", help="wait for healthy targets after the hosts rolled")
    wait.add_argument("--target-group-arn", required=True, help="the load balancer's target group of the API hosts")
    wait.add_argument("--asg-name", default=None, help="Auto Scaling group whose instance refresh must have finished")
    wait.add_argument("--min-healthy", type=cli.int_range(0), default=0,
                      help="healthy targets needed (default 0: the group's desired capacity with --asg-name, else 1)")
    wait.add_argument("--launch-template-version", default=None, metavar="V",
                      help="the launch template version this release runs: a refresh whose desired configuration "
                           "names another version is not this release's")
    wait.add_argument("--refresh-lookback-minutes", type=cli.int_range(0), default=30, metavar="M",
                      help="a refresh (without a desired configuration) counts as this release's when it started at "
                           "most M minutes before this step (default %(default)s: pulumi up starts it when it updates "
                           "the group, before this step); older ones are ignored")
    wait.add_argument("--timeout-minutes", type=cli.int_range(0), default=30, metavar="M",
                      help="fail when the hosts are not healthy after M minutes (default %(default)s; 0: look once)")
    wait.add_argument("--poll-seconds", type=cli.int_range(1), default=POLL_SECONDS, metavar="S",
                      help="look again every S seconds, with a progress line (default %(default)s)")
    wait.set_defaults(handler=cmd_wait_healthy)

    for sp in (invoke, snapshot, wait):
        cli.add_common_arguments(sp, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with aws.one_line_errors():
        return int(args.handler(args))


if __name__ == "__main__":
    cli.run(main)
