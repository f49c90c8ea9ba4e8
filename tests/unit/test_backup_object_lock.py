"""The backups bucket's Object Lock: governance mode, default retention = backupRetentionDays;
the access-log bucket has none (its objects are written by the load balancer, not kept as
evidence)."""

from __future__ import annotations

from harness.mock_engine import Plan, run_program

LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"


def test_backups_are_locked_for_the_backup_retention(plan: Plan) -> None:
    locks = plan.of_type(LOCK)
    assert [r.name for r in locks] == ["backups-object-lock"]
    lock = locks[0]
    assert lock.inputs["bucket"] == plan.one("aws:s3/bucket:Bucket", "backups-bucket").id
    assert lock.inputs["objectLockEnabled"] == "Enabled"
    retention = plan.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "backups-lifecycle").inputs[
        "rules"][0]["expiration"]["days"]
    assert lock.inputs["rule"] == {"defaultRetention": {"mode": "GOVERNANCE", "days": retention}}
    assert "backups-versioning" in lock.depends_on


def test_retention_follows_the_config() -> None:
    plan = run_program("staging", overrides={"backupRetentionDays": 45})
    assert plan.one(LOCK).inputs["rule"]["defaultRetention"]["days"] == 45


def test_pulumi_never_deletes_an_object_of_the_locked_bucket(plan: Plan) -> None:
    """The monitoring host's operations bundle lives in the backups bucket, and its key follows
    its contents: every change replaces it. The provider deletes a replaced object's versions
    without bypassing governance retention, which S3 refuses for a locked version, so a
    replacement would fail every `pulumi up` that changes the bundle. Pulumi forgets the old
    bundle instead; Object Lock and the lifecycle rules own the bucket's objects."""
    backups = plan.one("aws:s3/bucket:Bucket", "backups-bucket")
    objects = [r for r in plan.of_type("aws:s3/bucketObjectv2:BucketObjectv2") if r.inputs["bucket"] == backups.id]
    assert [r.name for r in objects] == ["monitoring-ops-bundle"]
    for obj in objects:
        assert obj.options.get("retainOnDelete") is True, obj.name
