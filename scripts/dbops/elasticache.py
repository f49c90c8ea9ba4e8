"""The one place the Redis rotation changes AUTH tokens: ElastiCache's ModifyReplicationGroup.

ElastiCache keeps at most two valid AUTH tokens on a replication group:

* `ROTATE` adds a token next to the one(s) in use, so clients holding the old token keep
  working while others switch;
* `SET` (allowed only after a ROTATE) leaves exactly the given token;
* every change is applied node by node; the group is `modifying` until it is `available` again
  and no token change is pending.

`AuthTokens` is that contract as a small interface, so the rotation code (redis_rotation.py)
depends on the semantics, not on boto3. `ElastiCacheAuthTokens` is the implementation the
rotation function uses.

Every wait is bounded twice: by `wait_seconds` per change, and by a `Deadline` for the whole
invocation. In Lambda the deadline is the function's remaining time (the context's
`get_remaining_time_in_millis()`) minus a safety margin for what follows the last wait (two
logins to Redis, the Secrets Manager calls, the log line), so the step fails with its own
one-line "retry this step" message instead of being killed by the timeout without one. A
change that is still being applied when the step gives up goes on; the retried step first
waits for it and then looks at what the group accepts, so nothing is done twice. The integration tests drive the same rotation code against a real
Redis with an implementation that applies these semantics through Redis ACLs
(tests/integration/redis_rotation_fixtures.py), because moto does not implement token changes;
the request shapes of this class are checked against botocore's service model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Optional, Protocol

from scripts.lib.cli import ScriptError

# A token change usually takes a few minutes. One invocation of a rotation step makes at most
# one in the normal course (redis_rotation.py), and never waits beyond its deadline.
DEFAULT_POLL_SECONDS = 15.0
DEFAULT_WAIT_SECONDS = 420.0
# Left of the function's time after the last wait: two Redis logins (up to 10 s each with
# their connect and socket timeouts), Secrets Manager calls, logging.
LAMBDA_SAFETY_MARGIN_SECONDS = 45.0
# Without a Lambda context (a direct call): the function's timeout (components/dbops.py).
DEFAULT_INVOCATION_SECONDS = 900.0


class Deadline:
    """A point in time (on `clock`) that no wait may pass; `what` names it in messages."""

    def __init__(self, at: float, *, what: str, clock: Callable[[], float] = time.monotonic):
        self.at = at
        self.what = what
        self.clock = clock

    @classmethod
    def after(cls, seconds: float, *, what: str, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, what=what, clock=clock)

    @classmethod
    def from_lambda_context(cls, context: Any, *, margin_seconds: float = LAMBDA_SAFETY_MARGIN_SECONDS,
                            clock: Callable[[], float] = time.monotonic) -> Deadline:
        """The invocation's remaining time less the margin; without a context (called
        directly, not by Lambda) the function's configured timeout stands in."""
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        seconds = remaining_ms() / 1000.0 if callable(remaining_ms) else DEFAULT_INVOCATION_SECONDS
        return cls.after(max(0.0, seconds - margin_seconds), clock=clock,
                         what=f"{int(margin_seconds)} s before the function's timeout")

    @classmethod
    def never(cls) -> Deadline:
        return cls(math.inf, what="no deadline")

    def remaining(self) -> float:
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.remaining() <= 0


class AuthTokens(Protocol):
    def rotate_in(self, token: str) -> None:
        """Make `token` valid next to the token in use (strategy ROTATE)."""

    def set_only(self, token: str) -> None:
        """Leave `token` as the only valid one (strategy SET)."""

    def wait_available(self) -> None:
        """Return once the group applies no change any more; raise when it does not in time."""


class ElastiCacheAuthTokens:
    def __init__(self, client: Any, replication_group_id: str, *, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 wait_seconds: float = DEFAULT_WAIT_SECONDS, deadline: Optional[Deadline] = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda _line: None):
        if not replication_group_id:
            raise ScriptError("no replication group id for the Redis token rotation")
        self.client = client
        self.replication_group_id = replication_group_id
        self.poll_seconds = poll_seconds
        self.wait_seconds = wait_seconds
        self.deadline = deadline or Deadline.never()
        self.sleep = sleep
        self.clock = clock
        self.log = log  # a line per poll: a token change takes minutes, and a hand run must not look stuck

    def rotate_in(self, token: str) -> None:
        self._modify(token, "ROTATE")

    def set_only(self, token: str) -> None:
        self._modify(token, "SET")

    def _out_of_time(self, doing: str) -> ScriptError:
        return ScriptError(f"replication group {self.replication_group_id} {doing}; this step's time is up "
                           f"({self.deadline.what}): retry this step, it continues from where the group is")

    def _modify(self, token: str, strategy: str) -> None:
        if self.deadline.passed():
            # A change started now could not be waited for; the retried step starts it.
            raise self._out_of_time(f"gets no {strategy} of its token")
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
        started = self.clock()
        limit = started + self.wait_seconds
        while True:
            status, pending = self.state()
            if status == "available" and not pending:
                return
            if status in ("deleting", "deleted", "create-failed"):
                raise ScriptError(f"replication group {self.replication_group_id} is {status}")
            now = self.clock()
            detail = f"{status}, token change {pending}" if pending else status
            if now >= self.deadline.at:
                raise self._out_of_time(f"is still {detail}")
            if now >= limit:
                raise ScriptError(f"replication group {self.replication_group_id} is still {detail} after "
                                  f"{int(self.wait_seconds)} s; the rotation step can be retried")
            # Never sleep past either limit: the last look comes exactly at the deadline.
            pause = max(0.0, min(self.poll_seconds, limit - now, self.deadline.at - now))
            self.log(f"waiting: replication group {self.replication_group_id} is {detail} "
                     f"({int(now - started)} s of at most {int(min(limit, self.deadline.at) - started)} s); "
                     f"next look in {pause:g} s")
            self.sleep(pause)
