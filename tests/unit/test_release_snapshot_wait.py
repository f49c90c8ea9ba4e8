"""The release snapshot's wait (scripts.release snapshot): a progress line per poll instead of
minutes of silence, and one-line failures. The RDS answers go through botocore's Stubber, so
requests and answers are checked against the real service model; the clock is manual."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from scripts.lib.cli import ScriptError
from scripts.release import wait_snapshot_available
from tests.clock import Clock

SNAPSHOT = "psychology-api-prod-db-pre-release-20260102-030405"


@pytest.fixture
def rds() -> Iterator[Any]:
    yield boto3.client("rds", region_name="eu-central-1", aws_access_key_id="test", aws_secret_access_key="test")


def answer(status: str, progress: int | None = None) -> dict[str, Any]:
    snapshot: dict[str, Any] = {"DBSnapshotIdentifier": SNAPSHOT, "Status": status}
    if progress is not None:
        snapshot["PercentProgress"] = progress
    return {"DBSnapshots": [snapshot]}


def wait(rds: Any, clock: Clock, *states: dict[str, Any], minutes: int = 60) -> None:
    with Stubber(rds) as stub:
        for state in states:
            stub.add_response("describe_db_snapshots", state, expected_params={"DBSnapshotIdentifier": SNAPSHOT})
        wait_snapshot_available(rds, SNAPSHOT, timeout_minutes=minutes, poll_seconds=30, clock=clock, sleep=clock.sleep)
        stub.assert_no_pending_responses()


def test_each_poll_prints_a_progress_line(rds: Any, capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    wait(rds, clock, answer("creating", 0), answer("creating", 45), answer("available", 100))
    assert clock.sleeps == [30, 30]
    assert capsys.readouterr().err.splitlines() == [
        f"waiting: snapshot {SNAPSHOT} is creating (0%), 0 s of at most 60 min; next look in 30 s",
        f"waiting: snapshot {SNAPSHOT} is creating (45%), 30 s of at most 60 min; next look in 30 s"]


def test_a_failed_snapshot_fails_at_once(rds: Any) -> None:
    with pytest.raises(ScriptError, match=f"snapshot {SNAPSHOT} ended failed, not available"):
        wait(rds, Clock(), answer("failed"))


def test_the_time_is_up_with_the_last_state(rds: Any) -> None:
    with pytest.raises(ScriptError, match=f"snapshot {SNAPSHOT} did not become available within 1 min: it is creating"):
        wait(rds, Clock(), answer("creating", 10), answer("creating", 20), answer("creating", 30), minutes=1)
