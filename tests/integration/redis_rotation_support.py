"""Helpers for the Redis token rotation tests (types and constants; the fixtures built on them
live in redis_rotation_fixtures.py).

moto 5.2.5 accepts ModifyReplicationGroup but ignores AuthToken and AuthTokenUpdateStrategy
and never reports a token change, so it cannot stand for ElastiCache here. `RedisAclTokens`,
the test implementation of scripts.dbops.elasticache.AuthTokens, applies ElastiCache's token
semantics to a real Redis instead, through ACLs: Redis 7 lets one user have two passwords,
which is exactly a replication group after ROTATE (`ACL SETUSER default >new` adds one,
`resetpass >token` leaves one). It refuses what ElastiCache refuses (a third token; SET without
a preceding ROTATE), so the rotation code is held to the same rules, and it acts as a separate
administrator (its own ACL user), as ElastiCache's API is separate from the data path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import redis

from scripts.dbops.elasticache import Deadline
from scripts.lib.cli import ScriptError

ADMIN_USER = "elasticache-control-plane"
ADMIN_PASSWORD = "control-plane-password-0123456789"  # noqa: S105 - a throw-away test server's admin
FIRST_TOKEN = "FirstTokenFromPulumi0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"  # noqa: S105 - test value


@dataclass
class LocalRedis:
    host: str
    port: int
    ca_bundle: str

    def client(self, token: Optional[str], *, username: Optional[str] = None) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, username=username, password=token, ssl=True,
                           ssl_cert_reqs="required", ssl_ca_certs=self.ca_bundle, socket_timeout=5,
                           socket_connect_timeout=5)

    def accepts(self, token: str) -> bool:
        """Whether a client presenting this AUTH token (no user name, as ElastiCache clients do) gets in."""
        client = self.client(token)
        try:
            return bool(client.ping())
        except redis.AuthenticationError:
            return False
        finally:
            client.close()

    def admin(self) -> redis.Redis:
        return self.client(ADMIN_PASSWORD, username=ADMIN_USER)

    def token_count(self) -> int:
        with self.admin() as admin:
            return len(admin.acl_getuser("default")["passwords"])


class SimulatedClock:
    """Time for the token changes: a change takes `RedisAclTokens.change_seconds` of it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RedisAclTokens:
    """scripts.dbops.elasticache.AuthTokens with ElastiCache's rules, on a real Redis.

    Time: with a `deadline` (on `clock`), each change keeps the group busy for `change_seconds`
    of simulated time, and the waits and changes keep to the deadline as ElastiCacheAuthTokens
    does (that class's own handling of it is tested against scripted ElastiCache answers in
    tests/unit/test_elasticache_tokens.py): a wait that would pass it stops at it with the
    same "retry this step" error, and no change starts after it. The token itself changes at
    once on the Redis (a change that outlives the step still completes, as in ElastiCache)."""

    server: LocalRedis
    calls: list[tuple[str, str]] = field(default_factory=list)
    # Inject one failure: the call `fail_at` ("rotate_in", "set_only", "wait_available") fails
    # after `fail_after` calls of it succeeded.
    fail_at: Optional[str] = None
    fail_after: int = 0
    clock: SimulatedClock = field(default_factory=SimulatedClock)
    change_seconds: float = 0.0
    deadline: Optional[Deadline] = None
    busy_until: float = 0.0

    def _out_of_time(self, doing: str) -> ScriptError:
        assert self.deadline is not None
        return ScriptError(f"replication group test {doing}; this step's time is up ({self.deadline.what}): "
                           "retry this step, it continues from where the group is")

    def _start_change(self, strategy: str) -> None:
        if self.deadline is not None and self.deadline.passed():
            raise self._out_of_time(f"gets no {strategy} of its token")
        self.busy_until = self.clock.now + self.change_seconds

    def _maybe_fail(self, operation: str) -> None:
        if self.fail_at == operation:
            if self.fail_after > 0:
                self.fail_after -= 1
                return
            self.fail_at = None
            # What a refused ModifyReplicationGroup looks like once scripts.lib.aws made it one line.
            raise ScriptError("ModifyReplicationGroup: InvalidReplicationGroupState: "
                              "Replication group must be in available state to modify")

    def rotate_in(self, token: str) -> None:
        self.calls.append(("rotate_in", token))
        self._maybe_fail("rotate_in")
        self._start_change("ROTATE")
        with self.server.admin() as admin:
            if len(admin.acl_getuser("default")["passwords"]) >= 2:
                raise AssertionError("ElastiCache keeps at most two AUTH tokens: ROTATE with two in place")
            admin.acl_setuser("default", enabled=True, passwords=[f"+{token}"])

    def set_only(self, token: str) -> None:
        self.calls.append(("set_only", token))
        self._maybe_fail("set_only")
        self._start_change("SET")
        with self.server.admin() as admin:
            if len(admin.acl_getuser("default")["passwords"]) < 2:
                raise AssertionError("ElastiCache allows SET only after ROTATE")
            admin.acl_setuser("default", enabled=True, reset_passwords=True, passwords=[f"+{token}"])

    def wait_available(self) -> None:
        self.calls.append(("wait_available", ""))
        self._maybe_fail("wait_available")
        if self.busy_until <= self.clock.now:
            return
        if self.deadline is not None and self.busy_until > self.deadline.at:
            self.clock.now = max(self.clock.now, self.deadline.at)
            raise self._out_of_time("is still modifying, token change ROTATING")
        self.clock.now = self.busy_until

    def changes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "wait_available"]
