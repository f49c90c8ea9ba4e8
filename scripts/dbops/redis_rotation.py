"""Rotation of the Redis AUTH token, with the four steps of scripts/dbops/rotation.py.

The secret (`psychology-api/<stack>/redis`) holds `{"host", "port", "auth_token", "tls": true}`,
what the API hosts, the health function and the monitoring host's redis_exporter read.
ElastiCache accepts two tokens at once during a change (scripts/dbops/elasticache.py), which is
what makes the rotation free of downtime:

1. createSecret: first, when the previous rotation left two tokens (the previous one still
   logs in next to the current one), `SET` the current token and wait: the previous token
   stops working, a whole rotation period after it stopped being current. Then a new token,
   64 letters and digits (ElastiCache allows 16-128 printable characters; the token also goes
   into REDIS_URL, where punctuation would need escaping), staged AWSPENDING; host and port
   from the function's environment when it states them. A value already staged under the
   token that holds the current or the previous token (a stale copy) is made again.
2. setSecret: the group must end up accepting exactly the current token and the new one:
   `ROTATE` the new token in and wait until the group is available again. A group that does
   not accept the current token at all (it was replaced, or someone changed the token by hand)
   gets the current token back first (ROTATE, then SET); a leftover previous token that
   createSecret did not remove (a version staged without the replication group) is SET away
   first.
3. testSecret: AUTH with the new token over TLS, PING, and a SET/GET/DEL round trip.
4. finishSecret: AWSCURRENT moves to the new version.

Why the SET comes at the start of the next createSecret, and not at the end of finishSecret:
both keep AWSCURRENT valid at every moment (SET to the current token never removes it, and
ElastiCache applies it node by node with that token valid throughout), but a SET in
finishSecret would cut off every client still holding the just-replaced token, i.e. every
API host and exporter until its daily refresh. At the next createSecret that token is a whole
rotation period old. Splitting the two changes over two steps also means one invocation makes
one token change in the normal course, so one change and its wait fit the function's time;
each wait stops at the invocation's deadline (elasticache.py) with "retry this step".

Running clients keep the current token, valid until the next rotation's createSecret; the API
hosts' and the monitoring host's daily refresh pick up the new one long before that. Every step
can run again without harm: createSecret and setSecret first look at which tokens the group
accepts. A failure at any step leaves the current token valid, because it is never removed,
only set again.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from scripts.dbops.checks import RedisTarget, redis_client
from scripts.dbops.elasticache import AuthTokens
from scripts.dbops.rotation import Log, RotationError, SecretRotation, StepResult, _no_log
from scripts.lib.cli import masker

TOKEN_LENGTH = 64
PROBE_KEY_PREFIX = "psychology-api:rotation-probe:"


def redis_endpoint_from_environment() -> dict[str, Any]:
    """Where the rotation function's environment says Redis is (the group's primary endpoint
    may have changed since the secret was written)."""
    out: dict[str, Any] = {}
    if os.environ.get("REDIS_HOST"):
        out["host"] = os.environ["REDIS_HOST"]
    if os.environ.get("REDIS_PORT"):
        out["port"] = int(os.environ["REDIS_PORT"])
    return out


def is_redis_document(doc: dict[str, Any]) -> bool:
    return "auth_token" in doc and "username" not in doc


class RedisRotation(SecretRotation):
    def __init__(self, sm: Any, secret_id: str, token: str, *, tokens: Optional[AuthTokens],
                 endpoint: Optional[dict[str, Any]] = None, ca_bundle: Optional[str] = None,
                 manual: bool = False, force: bool = False, log: Log = _no_log):
        """`tokens` None: no replication group to change (a hand-run createSecret or testSecret
        may go without one; setSecret may not)."""
        super().__init__(sm, secret_id, token, manual=manual, force=force, log=log)
        self._tokens = tokens
        self.endpoint = dict(endpoint or {})
        self.ca_bundle = ca_bundle

    # --- helpers ------------------------------------------------------------------------
    def _target(self, doc: dict[str, Any], label: str, auth_token: Optional[str] = None) -> RedisTarget:
        if not doc.get("host") or not (auth_token or doc.get("auth_token")):
            raise RotationError(f"the {label} version lacks host/auth_token")
        return RedisTarget(host=str(doc["host"]), port=int(doc.get("port") or 6379),
                           password=str(auth_token or doc["auth_token"]), tls=bool(doc.get("tls", True)),
                           ca_bundle=self.ca_bundle)

    def _accepts(self, target: RedisTarget) -> bool:
        """True when Redis accepts the token; False when it refuses it. Not reaching Redis at all
        says nothing about the token and raises."""
        import redis

        client = redis_client(target)
        try:
            return bool(client.ping())
        except redis.AuthenticationError:
            return False
        except redis.ResponseError as err:
            # A wrong token on a server that has one is "WRONGPASS"/"invalid password"; on a
            # server without AUTH, "AUTH <password> called without any password configured".
            if "WRONGPASS" in str(err) or "invalid" in str(err).lower() or "without any password" in str(err):
                return False
            raise RotationError(f"{target.describe()}: {masker(str(err)).splitlines()[0]}") from None
        except redis.RedisError as err:
            raise RotationError(f"cannot reach {target.describe()}: {masker(str(err)).splitlines()[0]}") from None
        finally:
            client.close()

    @property
    def tokens(self) -> AuthTokens:
        if self._tokens is None:
            raise RotationError("no replication group to change the AUTH token on")
        return self._tokens

    def _retire_previous_token(self, current: dict[str, Any], previous: dict[str, Any]) -> None:
        """The SET of the previous rotation's leftover token, at the start of a new rotation
        (see the module's docstring for why here)."""
        current_token = str(current.get("auth_token") or "")
        previous_token = str(previous.get("auth_token") or "")
        if not previous_token or previous_token == current_token:
            return  # the first rotation: one token on the group
        if self._tokens is None:
            self.log("createSecret: no replication group given; setSecret removes the previous token if it is still valid")
            return
        # Tokens go only to the endpoint the function's environment names (or the secret's).
        where = {**current, **self.endpoint}
        current_target = self._target(where, "AWSCURRENT")
        previous_target = self._target(where, "AWSPREVIOUS", auth_token=previous_token)
        self.tokens.wait_available()  # an earlier attempt may have left a change running
        if not self._accepts(previous_target):
            self.log("createSecret: the previous token no longer logs in; nothing to remove")
            return
        if not self._accepts(current_target):
            # Only setSecret puts a lost current token back (ROTATE, then SET).
            self.log("createSecret: Redis refuses the current token; setSecret restores it")
            return
        self.log("createSecret: the previous token is still valid; leaving only the current one (SET)")
        self.tokens.set_only(current_token)
        self.tokens.wait_available()

    def _new_token(self, avoid: set[str]) -> str:
        for _ in range(3):
            token = str(self.sm.get_random_password(PasswordLength=TOKEN_LENGTH, ExcludePunctuation=True,
                                                    IncludeSpace=False, RequireEachIncludedType=True)["RandomPassword"])
            if token not in avoid:
                return token
        raise RotationError("GetRandomPassword kept returning a token already in use")

    def retires(self, previous: dict[str, Any], current: dict[str, Any]) -> bool:
        # createSecret removes from the group every token but the current one.
        return previous.get("auth_token") != current.get("auth_token")

    def stale_pending(self, pending: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
        token = pending.get("auth_token")
        if not token or not pending.get("host"):
            return "no host/auth_token"
        if token == current.get("auth_token"):
            return "the current token"
        if token == (self._previous() or {}).get("auth_token"):
            return "the previous token"
        return None

    # --- the steps ----------------------------------------------------------------------
    def create_secret(self) -> StepResult:
        _, current = self._current()
        self._target(current, "AWSCURRENT")  # refuses a secret of another kind
        if self._reuse_pending(current):
            return StepResult("createSecret", self.token, "already-done")
        previous = self._previous() or {}
        self._retire_previous_token(current, previous)
        token = self._new_token({str(current.get("auth_token")), str(previous.get("auth_token"))})
        masker.add(token)
        new = dict(current)
        new.update(self.endpoint)
        new["auth_token"] = token
        new["tls"] = bool(current.get("tls", True))
        self._put_pending(new)
        self.log(f"createSecret: staged version {self.token} with a new AUTH token for {new['host']}")
        return StepResult("createSecret", self.token, "done", f"redis {new['host']}")

    def set_secret(self) -> StepResult:
        pending = self._pending()
        _, current = self._current()
        pending_target = self._target(pending, f"pending {self.token}")
        pending_token = str(pending["auth_token"])
        current_token = str(current.get("auth_token") or "")
        if not current_token:
            raise RotationError("the AWSCURRENT version lacks auth_token")
        # Every token is tried against the pending version's endpoint, checked just below.
        current_target = self._target(pending, "AWSCURRENT", auth_token=current_token)
        expected_host = self.endpoint.get("host") or current.get("host")
        if pending_target.host != expected_host:
            # Tokens are only ever sent to our own Redis.
            raise RotationError(f"pending version {self.token} points to host {pending_target.host}, "
                                f"not the Redis endpoint {expected_host}")
        if pending_token == current_token:
            raise RotationError(f"pending version {self.token} holds the current token; createSecret makes a new one")

        self.tokens.wait_available()  # an earlier attempt may have left a change running
        current_ok = self._accepts(current_target)
        if current_ok and self._accepts(pending_target):
            self.log("setSecret: Redis already accepts the current and the pending token")
            return StepResult("setSecret", self.token, "already-done", f"redis {pending_target.host}")
        if not current_ok:
            # The group does not know the token every client holds: put it back first.
            self.log("setSecret: Redis refuses the current token; restoring it (ROTATE, then SET)")
            self.tokens.rotate_in(current_token)
            self.tokens.wait_available()
            self.tokens.set_only(current_token)
            self.tokens.wait_available()
        else:
            previous = self._previous()
            previous_token = str((previous or {}).get("auth_token") or "")
            if previous_token and previous_token != current_token and self._accepts(
                    self._target(pending, "AWSPREVIOUS", auth_token=previous_token)):
                # Two tokens already (createSecret normally removes the previous one; not when
                # it ran without the replication group): drop it so the new one can come in.
                self.log("setSecret: the previous token is still valid; leaving only the current one (SET)")
                self.tokens.set_only(current_token)
                self.tokens.wait_available()
        self.log("setSecret: adding the pending token next to the current one (ROTATE)")
        self.tokens.rotate_in(pending_token)
        self.tokens.wait_available()
        if not self._accepts(pending_target) or not self._accepts(current_target):
            raise RotationError("setSecret: after the change Redis does not accept both the current and the pending token")
        self.log("setSecret: Redis accepts the current and the pending token")
        return StepResult("setSecret", self.token, "done", f"redis {pending_target.host}")

    def test_secret(self) -> StepResult:
        import uuid

        import redis

        target = self._target(self._pending(), f"pending {self.token}")
        client = redis_client(target)
        key, value = f"{PROBE_KEY_PREFIX}{uuid.uuid4().hex}", uuid.uuid4().hex
        try:
            if not client.ping():
                raise RotationError(f"testSecret: {target.describe()} did not answer PING")
            client.set(key, value, ex=60)
            got = client.get(key)
            client.delete(key)
        except redis.AuthenticationError as err:
            raise RotationError(f"testSecret: {target.describe()} refuses the pending token "
                                f"({masker(str(err)).splitlines()[0]})") from None
        except redis.RedisError as err:
            raise RotationError(f"testSecret: {target.describe()}: {masker(str(err)).splitlines()[0]}") from None
        finally:
            client.close()
        if got is None or got.decode() != value:
            raise RotationError(f"testSecret: {target.describe()} answered GET with {got!r} after SET")
        self.log(f"testSecret: the pending token logs in to {target.describe()} (PING, SET/GET)")
        return StepResult("testSecret", self.token, "done", f"redis {target.host}")
