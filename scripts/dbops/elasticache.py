"""The one place the Redis rotation changes AUTH tokens: ElastiCache's ModifyReplicationGroup.

ElastiCache keeps at most two valid AUTH tokens on a replication group:

* `ROTATE` adds a token next to the one(s) in use, so clients holding the old token keep
  working while others switch;
* `SET` (allowed only after a ROTATE) leaves exactly the given token;
* every change is applied node by node; the group is `modifying` until it is `available` again
  and no token change is pending.

`AuthTokens` is that contract as a small interface, so the rotation code (redis_rotation.py)
depends on the semantics, not on boto3. `ElastiCacheAuthTokens` is the implementation the
rotation function uses. The integration tests drive the same rotation code against a real
Redis with an implementation that applies these semantics through Redis ACLs
(tests/integration/redis_rotation_fixtures.py), because moto does not implement token changes;
the request shapes of this class are checked against botocore's service model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from scripts.lib.cli import ScriptError

# A token change usually takes a few minutes; the function's timeout (900 s) must cover two.
DEFAULT_POLL_SECONDS = 15.0
DEFAULT_WAIT_SECONDS = 420.0


class AuthTokens(Protocol):
    def rotate_in(self, token: str) -> None:
        """Make `token` valid next to the token in use (strategy ROTATE)."""

    def set_only(self, token: str) -> None:
        """Leave `token` as the only valid one (strategy SET)."""

    def wait_available(self) -> None:
        """Return once the group applies no change any more; raise when it does not in time."""


class ElastiCacheAuthTokens:
    def __init__(self, client: Any, replication_group_id: str, *, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 wait_seconds: float = DEFAULT_WAIT_SECONDS, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not replication_group_id:
            raise ScriptError("no replication group id for the Redis token rotation")
        self.client = client
        self.replication_group_id = replication_group_id
        self.poll_seconds = poll_seconds
        self.wait_seconds = wait_seconds
        self.sleep = sleep
        self.clock = clock

    def rotate_in(self, token: str) -> None:
        self._modify(token, "ROTATE")

    def set_only(self, token: str) -> None:
        self._modify(token, "SET")

    def _modify(self, token: str, strategy: str) -> None:
        # ApplyImmediately: a token change waiting for the maintenance window would leave the
        # secret and the group disagreeing for days.
        self.client.modify_replication_group(ReplicationGroupId=self.replication_group_id, AuthToken=token,
                                             AuthTokenUpdateStrategy=strategy, ApplyImmediately=True)

    def state(self) -> tuple[str, str]:
        """(status, pending token change or "") of the replication group."""
        groups = self.client.describe_replication_groups(ReplicationGroupId=self.replication_group_id)["ReplicationGroups"]
        if not groups:
            raise ScriptError(f"replication group {self.replication_group_id} does not exist")
        group = groups[0]
        return str(group.get("Status", "")), str((group.get("PendingModifiedValues") or {}).get("AuthTokenStatus") or "")

    def wait_available(self) -> None:
        # Not the stock waiter: right after a change the group may still read `available` for a
        # moment while the token change is already pending, which the waiter would accept.
        deadline = self.clock() + self.wait_seconds
        while True:
            status, pending = self.state()
            if status == "available" and not pending:
                return
            if status in ("deleting", "deleted", "create-failed"):
                raise ScriptError(f"replication group {self.replication_group_id} is {status}")
            if self.clock() >= deadline:
                detail = f"{status}, token change {pending}" if pending else status
                raise ScriptError(f"replication group {self.replication_group_id} is still {detail} after "
                                  f"{int(self.wait_seconds)} s; the rotation step can be retried")
            self.sleep(self.poll_seconds)
