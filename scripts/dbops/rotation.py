"""Secrets Manager rotation: the four-step contract (`SecretRotation`) and the rotation of the
database credentials with alternating users (`Rotation`). The Redis AUTH token's rotation
builds on the same contract in `scripts/dbops/redis_rotation.py`.

Two database secrets rotate this way, each with its own pair of login users in a NOLOGIN group:

| secret | users | group (what they act as) |
|---|---|---|
| `psychology-api/<stack>/database/app` | psychology_app_a, psychology_app_b | psychology_app (owns the application's objects) |
| `psychology-api/<stack>/database/monitor` | psychology_monitor_a, psychology_monitor_b | psychology_monitor (pg_monitor) |

A secret holds `{"username", "password", "host", "port", "dbname"}` (the application's also
`"engine": "postgres"` and `"masterarn"`). Each rotation writes a new password to the user that
is NOT current, tests it, then makes that version current. Whoever still holds the previous
version keeps working (its user's password is untouched) until the rotation after next, so a
host must re-read its secret within one rotation period (90 days by default); the API hosts
and the monitoring host do it daily.

The four steps follow Secrets Manager's rotation-function contract: the event carries
`SecretId`, `ClientRequestToken` (the version being created) and `Step`. Every step checks that
rotation is enabled and the version is staged AWSPENDING, returns at once when the version is
already AWSCURRENT, and can run again without harm. Nothing here changes the current user's
password, so a failure at any step leaves AWSCURRENT working.

createSecret trusts a value already staged under its token only when it is one this rotation
could have made: a copy of the current version (what Secrets Manager's test of the function
leaves on moto with RotateImmediately=false, and what a test left behind elsewhere) would wedge
every later setSecret, so it is made again. Secrets Manager lets a version's value be replaced
while it is staged AWSPENDING on moto; should AWS refuse (ResourceExistsException), the stale
version loses AWSPENDING and the step fails once, so that the next rotation starts afresh.

The same functions serve `python -m scripts.rotate` for operators: `manual=True` lets
createSecret stage a version that Secrets Manager did not announce (there is no RotateSecret
call behind a hand-run rotation).

Two rotations too close together would lock clients out: the second retires the previous value
(the other user's password, the other Redis token, the oldest Django key), which hosts that have
not re-read their secret since the first still use. So a rotation does not start while the
current version is younger than MIN_HOURS_BETWEEN_ROTATIONS and the previous version holds a
value it would retire (`retires`: the first rotation of a secret, or one after an edit that kept
the user or token, retires nothing a client could hold); `force` (scripts.rotate --force)
overrides that once every client has refreshed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

import psycopg

from scripts.dbops.credentials import (
    APP_GROUP_ROLE,
    APP_LOGIN_USERS,
    BACKUP_GROUP_ROLE,
    BACKUP_LOGIN_USERS,
    DRILL_GROUP_ROLE,
    DRILL_LOGIN_USERS,
    LEGACY_MONITOR_LOGIN,
    MONITOR_GROUP_ROLE,
    MONITOR_LOGIN_USERS,
    can_log_in,
    disable_login,
    set_role_password,
)
from scripts.dbops.migrations import QUALIFIED_TABLE
from scripts.lib.cli import ScriptError, masker
from scripts.lib.db import DbConnectError, connect, target_from_document
from scripts.lib.secrets import read_secret_json

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
# The clients' refresh timers (the API hosts' psychology-api-secrets-refresh.timer and the
# monitoring host's psychology-exporter-secrets-refresh.timer: daily, with up to 2 h of random
# delay) re-read every secret within 26 h; 2 h more for a rotation's own duration.
HOST_REFRESH_HOURS = 26
MIN_HOURS_BETWEEN_ROTATIONS = HOST_REFRESH_HOURS + 2
PASSWORD_LENGTH = 32
# Characters that need quoting in a libpq DSN, a URL, a shell, JSON or an .env file. What is left
# (letters, digits, "-", "_", ".") is safe everywhere the password travels.
EXCLUDE_CHARACTERS = "\"'\\/@:%?#&=;$`{}[]<>|^~ ,+!*()"

Log = Callable[[str], None]


class RotationError(ScriptError):
    pass


def _no_log(_: str) -> None:
    return None


# --- who rotates with whom ------------------------------------------------------------------

@dataclass(frozen=True)
class LoginPair:
    """Two login users that take turns, members of a NOLOGIN group role."""

    label: str
    group: str
    users: tuple[str, str]
    # Single logins from before the pair existed: a secret still naming one rotates to users[0].
    legacy_users: tuple[str, ...] = ()

    def other(self, username: str) -> str:
        first, second = self.users
        if username == first:
            return second
        if username == second or username in self.legacy_users:
            return first
        raise RotationError(f"the secret's username {username} is not one of the alternating users {first}, {second}")

    def names(self, username: str) -> bool:
        return username in self.users or username in self.legacy_users

    def verify(self, conn: psycopg.Connection, session_user: str) -> str:
        """Proof that a login acts with the group's rights: a real query, not just a login.
        Returns a short description; raises RotationError."""
        if self.group == APP_GROUP_ROLE:
            current_user = (conn.execute("SELECT current_user").fetchone() or ("",))[0]
            if current_user != APP_GROUP_ROLE:
                raise RotationError(f"user {session_user} logs in but does not act as {APP_GROUP_ROLE} "
                                    f"(current_user is {current_user})")
            conn.execute(f"SELECT count(*) FROM {QUALIFIED_TABLE}").fetchone()  # noqa: S608 - constant
            return f"queries as {APP_GROUP_ROLE}"
        if self.group in (BACKUP_GROUP_ROLE, DRILL_GROUP_ROLE):
            return verify_monitoring_host_login(conn, session_user, self.group)
        monitor = conn.execute("SELECT pg_has_role(session_user, 'pg_monitor', 'USAGE'), "
                               "current_setting('default_transaction_read_only')").fetchone() or (False, "")
        if not monitor[0]:
            raise RotationError(f"user {session_user} logs in but lacks pg_monitor (not a member of {self.group}?)")
        if monitor[1] != "on":
            raise RotationError(f"user {session_user} is not read-only (default_transaction_read_only={monitor[1]})")
        # What postgres_exporter reads: the statistics views and query statistics.
        conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_database").fetchone()
        conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        conn.execute(f"SELECT count(*) FROM {QUALIFIED_TABLE}").fetchone()  # noqa: S608 - constant
        return "reads pg_stat_database and pg_stat_statements through pg_monitor"


def app_login_pair() -> LoginPair:
    """The application's users; APP_LOGIN_USERS="user_a,user_b" overrides the defaults."""
    users = APP_LOGIN_USERS
    configured = os.environ.get("APP_LOGIN_USERS")
    if configured:
        names = tuple(u.strip() for u in configured.split(",") if u.strip())
        if len(names) != 2 or names[0] == names[1]:
            raise RotationError("APP_LOGIN_USERS must name exactly two different users")
        users = (names[0], names[1])
    return LoginPair("application", APP_GROUP_ROLE, users)


MONITOR_PAIR = LoginPair("monitoring", MONITOR_GROUP_ROLE, MONITOR_LOGIN_USERS, legacy_users=(LEGACY_MONITOR_LOGIN,))
BACKUP_PAIR = LoginPair("backup", BACKUP_GROUP_ROLE, BACKUP_LOGIN_USERS)
DRILL_PAIR = LoginPair("restore drill", DRILL_GROUP_ROLE, DRILL_LOGIN_USERS)


def login_pairs() -> tuple[LoginPair, ...]:
    return (app_login_pair(), MONITOR_PAIR, BACKUP_PAIR, DRILL_PAIR)


def verify_monitoring_host_login(conn: psycopg.Connection, session_user: str, group: str) -> str:
    """The backup login reads everything and writes nothing; the drill login acts as its group,
    which may create databases."""
    if group == BACKUP_GROUP_ROLE:
        row = conn.execute("SELECT pg_has_role(session_user, 'pg_read_all_data', 'USAGE'), "
                           "current_setting('default_transaction_read_only')").fetchone() or (False, "")
        if not row[0] or row[1] != "on":
            raise RotationError(f"user {session_user} lacks pg_read_all_data or is not read-only")
        conn.execute(f"SELECT count(*) FROM {QUALIFIED_TABLE}").fetchone()  # noqa: S608 - constant
        return "reads through pg_read_all_data, read-only"
    row = conn.execute("SELECT current_user, rolcreatedb FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if row is None or row[0] != DRILL_GROUP_ROLE or not row[1]:
        raise RotationError(f"user {session_user} does not act as {DRILL_GROUP_ROLE} with CREATEDB")
    return f"acts as {DRILL_GROUP_ROLE} (CREATEDB)"


def pair_for(username: str) -> LoginPair:
    for pair in login_pairs():
        if pair.names(username):
            return pair
    known = ", ".join(u for pair in login_pairs() for u in pair.users)
    raise RotationError(f"the secret's username {username} is not one of the alternating users ({known})")


def endpoint_from_environment() -> dict[str, Any]:
    """Endpoint settings the function's environment states (the database may have moved since
    the secret was written); they win over the current version when a new one is created."""
    out: dict[str, Any] = {}
    if os.environ.get("DB_HOST"):
        out["host"] = os.environ["DB_HOST"]
    if os.environ.get("DB_PORT"):
        out["port"] = int(os.environ["DB_PORT"])
    if os.environ.get("DB_NAME"):
        out["dbname"] = os.environ["DB_NAME"]
    return out


@dataclass
class StepResult:
    step: str
    token: str
    outcome: str  # "done", "already-done", "already-current"
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "token": self.token, "outcome": self.outcome, "detail": self.detail}


# --- the contract ---------------------------------------------------------------------------

class SecretRotation:
    """Secrets Manager's checks around the four steps, and finishSecret; subclasses do the
    first three for their kind of credentials."""

    def __init__(self, sm: Any, secret_id: str, token: str, *, manual: bool = False, force: bool = False,
                 log: Log = _no_log):
        self.sm = sm
        self.secret_id = secret_id
        self.token = token
        self.manual = manual
        self.force = force
        self.log = log

    def run(self, step: str) -> StepResult:
        if step not in STEPS:
            raise RotationError(f"unknown step {step!r}; expected one of {', '.join(STEPS)}")
        metadata = self.sm.describe_secret(SecretId=self.secret_id)
        name = metadata.get("Name", self.secret_id)
        if not self.manual and not metadata.get("RotationEnabled"):
            raise RotationError(f"secret {name} is not enabled for rotation")
        versions: dict[str, list[str]] = metadata.get("VersionIdsToStages", {})
        stages = versions.get(self.token)
        if stages is None:
            if not (self.manual and step == "createSecret"):
                raise RotationError(f"secret version {self.token} has no stage for rotation of secret {name}")
            in_progress = [v for v, s in versions.items() if "AWSPENDING" in s and "AWSCURRENT" not in s]
            if in_progress:
                raise RotationError(f"a rotation of {name} is already in progress (version {in_progress[0]} is "
                                    f"staged AWSPENDING); finish it with --token {in_progress[0]}")
        elif "AWSCURRENT" in stages:
            if step == "finishSecret" and "AWSPENDING" in stages:
                self._remove_pending_stage()
            self.log(f"{step}: version {self.token} is already AWSCURRENT; nothing to do")
            return StepResult(step, self.token, "already-current")
        elif "AWSPENDING" not in stages:
            raise RotationError(f"secret version {self.token} is not staged AWSPENDING for rotation of secret {name}")
        if step == "createSecret" and not self.force and self._staged_pending() is None:
            self._refuse_while_clients_may_hold_the_previous(name)
        return {"createSecret": self.create_secret, "setSecret": self.set_secret,
                "testSecret": self.test_secret, "finishSecret": self.finish_secret}[step]()

    def _refuse_while_clients_may_hold_the_previous(self, name: str) -> None:
        """A new rotation (no value staged for it yet) must not retire what clients may still use."""
        response = self.sm.get_secret_value(SecretId=self.secret_id, VersionStage="AWSCURRENT")
        previous = self._previous()
        if previous is None or not self.retires(previous, _parse(response.get("SecretString"), "AWSCURRENT")):
            return
        created = response["CreatedDate"]
        age_hours = (datetime.now(created.tzinfo) - created).total_seconds() / 3600
        if age_hours >= MIN_HOURS_BETWEEN_ROTATIONS:
            return
        after = created + timedelta(hours=MIN_HOURS_BETWEEN_ROTATIONS)
        raise RotationError(
            f"secret {name} has been current for only {age_hours:.1f} h: clients re-read it within "
            f"{HOST_REFRESH_HOURS} h, and those that have not yet still use the previous value, which this rotation "
            f"would retire; rotate after {after.astimezone(UTC):%Y-%m-%d %H:%M} UTC, or refresh every "
            "client first and rotate with scripts.rotate --force")

    def retires(self, previous: dict[str, Any], current: dict[str, Any]) -> bool:
        """Whether this rotation makes what a client holding `previous` uses stop working."""
        return previous != current

    # --- reading ------------------------------------------------------------------------
    def _current(self) -> tuple[str, dict[str, Any]]:
        response = self.sm.get_secret_value(SecretId=self.secret_id, VersionStage="AWSCURRENT")
        return response["VersionId"], _parse(response.get("SecretString"), "AWSCURRENT")

    def _previous(self) -> Optional[dict[str, Any]]:
        """The version before the current one, when there is one."""
        try:
            response = self.sm.get_secret_value(SecretId=self.secret_id, VersionStage="AWSPREVIOUS")
        except self.sm.exceptions.ResourceNotFoundException:
            return None
        return _parse(response.get("SecretString"), "AWSPREVIOUS")

    def _pending(self) -> dict[str, Any]:
        return read_secret_json(self.secret_id, version_id=self.token, client=self.sm)

    def _staged_pending(self) -> Optional[dict[str, Any]]:
        """The value already staged under this token, or None when the version has none yet."""
        try:
            response = self.sm.get_secret_value(SecretId=self.secret_id, VersionId=self.token, VersionStage="AWSPENDING")
        except self.sm.exceptions.ResourceNotFoundException:
            return None
        if response.get("SecretString") is None:
            return None
        try:
            return _parse(response["SecretString"], f"pending {self.token}")
        except RotationError:
            return {}  # not even JSON: certainly not this rotation's value

    def _reuse_pending(self, current: dict[str, Any]) -> bool:
        """True when a value this rotation can continue with is already staged (createSecret ran
        before); False when there is none, or a stale one that createSecret must make again."""
        staged = self._staged_pending()
        if staged is None:
            return False
        stale = self.stale_pending(staged, current)
        if stale is None:
            self.log(f"createSecret: version {self.token} already has a value")
            return True
        self.log(f"createSecret: version {self.token} holds {stale}; making it again")
        return False

    def stale_pending(self, pending: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
        """Why a staged value cannot be this rotation's new version (None when it can)."""
        raise NotImplementedError

    def _put_pending(self, document: dict[str, Any]) -> None:
        try:
            self.sm.put_secret_value(SecretId=self.secret_id, ClientRequestToken=self.token,
                                     SecretString=json.dumps(document), VersionStages=["AWSPENDING"])
        except self.sm.exceptions.ResourceExistsException:
            # A version's value cannot be replaced here: set the stale version aside so that the
            # next rotation (a new token) does not find a rotation "in progress" again.
            self._remove_pending_stage()
            raise RotationError(f"version {self.token} holds a stale value that Secrets Manager does not let "
                                "createSecret replace; its AWSPENDING stage was removed: rotate again") from None

    # --- the steps ----------------------------------------------------------------------
    def create_secret(self) -> StepResult:
        raise NotImplementedError

    def set_secret(self) -> StepResult:
        raise NotImplementedError

    def test_secret(self) -> StepResult:
        raise NotImplementedError

    def finish_secret(self) -> StepResult:
        metadata = self.sm.describe_secret(SecretId=self.secret_id)
        current_version = next((v for v, s in metadata.get("VersionIdsToStages", {}).items() if "AWSCURRENT" in s), None)
        if current_version == self.token:
            return StepResult("finishSecret", self.token, "already-current")
        self.sm.update_secret_version_stage(SecretId=self.secret_id, VersionStage="AWSCURRENT",
                                            MoveToVersionId=self.token, RemoveFromVersionId=current_version)
        self._remove_pending_stage()
        self.log(f"finishSecret: version {self.token} is AWSCURRENT; {current_version} is AWSPREVIOUS")
        return StepResult("finishSecret", self.token, "done", f"previous {current_version}")

    def _remove_pending_stage(self) -> None:
        # A finished rotation may keep AWSPENDING on the current version, but a clean record
        # (no AWSPENDING anywhere) is what a hand-run rotation leaves too.
        self.sm.update_secret_version_stage(SecretId=self.secret_id, VersionStage="AWSPENDING",
                                            RemoveFromVersionId=self.token)


# --- database credentials -------------------------------------------------------------------

class Rotation(SecretRotation):
    """Database credentials (the application's or the monitoring role's), alternating users."""

    def __init__(self, sm: Any, secret_id: str, token: str, *, master_secret_id: Optional[str] = None,
                 endpoint: Optional[dict[str, Any]] = None, manual: bool = False, force: bool = False,
                 log: Log = _no_log):
        super().__init__(sm, secret_id, token, manual=manual, force=force, log=log)
        self.endpoint = dict(endpoint or {})
        self.master_secret_id = master_secret_id

    def retires(self, previous: dict[str, Any], current: dict[str, Any]) -> bool:
        # The rotation sets a new password for the user that is not current: the previous
        # version's, unless that version has the current user too (an edit of the endpoint).
        return previous.get("username") != current.get("username")

    def stale_pending(self, pending: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
        current_user = str(current.get("username", ""))
        user, password = pending.get("username"), pending.get("password")
        if not user or not password:
            return "no username/password"
        if user == current_user or password == current.get("password"):
            return "a copy of the current credentials"
        if user != pair_for(current_user).other(current_user):
            return f"user {user}, not the one that alternates with {current_user}"
        return None

    def create_secret(self) -> StepResult:
        _, current = self._current()
        if self._reuse_pending(current):
            return StepResult("createSecret", self.token, "already-done")
        current_user = str(current.get("username", ""))
        pair = pair_for(current_user)
        new = dict(current)
        new.update(self.endpoint)
        new["engine"] = "postgres"
        new["username"] = pair.other(current_user)
        password = self.sm.get_random_password(PasswordLength=PASSWORD_LENGTH, ExcludeCharacters=EXCLUDE_CHARACTERS,
                                                RequireEachIncludedType=True)["RandomPassword"]
        masker.add(password)
        new["password"] = password
        if self.master_secret_id and not new.get("masterarn"):
            new["masterarn"] = self.master_secret_id
        self._put_pending(new)
        self.log(f"createSecret: staged version {self.token} for user {new['username']}")
        return StepResult("createSecret", self.token, "done", f"user {new['username']}")

    def set_secret(self) -> StepResult:
        pending = self._pending()
        pending_target = target_from_document(pending, source=f"pending version {self.token}")
        pair = pair_for(pending_target.user)
        if pending_target.user not in pair.users:
            # Only the pair's users get passwords here, never a legacy single login.
            raise RotationError(f"pending version {self.token} names {pending_target.user}, not one of the "
                                f"alternating users {', '.join(pair.users)}")
        _, current = self._current()
        current_user = str(current.get("username", ""))
        if not pair.names(current_user):
            # A pending version must stay with its secret's users: an application secret can
            # never hand out a password of the monitoring users, nor the other way round.
            raise RotationError(f"pending version {self.token} names {pending_target.user} ({pair.label} user), "
                                f"but the secret's current user is {current_user}")
        if pending_target.user == current_user:
            # Changing the current user's password would break every host that holds AWSCURRENT.
            raise RotationError(f"pending version {self.token} has the current user {pending_target.user}; "
                                "alternating rotation needs the other user")
        legacy_to_retire = [u for u in pair.legacy_users if u != current_user]
        if can_log_in(pending_target):
            self.log(f"setSecret: user {pending_target.user} already accepts the pending password")
            return StepResult("setSecret", self.token, "already-done", f"user {pending_target.user}")
        expected_host = self.endpoint.get("host") or current.get("host")
        if pending_target.host != expected_host:
            # The master password goes wherever the pending version points: only to our database.
            raise RotationError(f"pending version {self.token} points to host {pending_target.host}, "
                                f"not the database {expected_host}")
        master_id = pending.get("masterarn") or current.get("masterarn") or self.master_secret_id
        if not master_id:
            raise RotationError("no master secret: the secret has no masterarn and none was given")
        master = read_secret_json(str(master_id), client=self.sm)
        admin_target = target_from_document(master, source=f"master secret {master_id}", host=pending_target.host,
                                            port=pending_target.port, dbname=pending_target.dbname)
        with connect(admin_target, autocommit=True, application_name="psychology-api-rotation") as admin:
            set_role_password(admin, pending_target.user, pending_target.password)
            # A single login from before the pair (migration 0004) goes once no version that is
            # still in use names it: the current one becomes AWSPREVIOUS and stays valid.
            retired = [u for u in legacy_to_retire if disable_login(admin, u)]
        for user in retired:
            self.log(f"setSecret: the former single login {user} can no longer log in")
        self.log(f"setSecret: set the password of user {pending_target.user}")
        return StepResult("setSecret", self.token, "done", f"user {pending_target.user}")

    def test_secret(self) -> StepResult:
        pending_target = target_from_document(self._pending(), source=f"pending version {self.token}")
        pair = pair_for(pending_target.user)
        try:
            with connect(pending_target, application_name="psychology-api-rotation-test") as conn:
                session_user = (conn.execute("SELECT session_user").fetchone() or ("",))[0]
                detail = pair.verify(conn, session_user)
        except DbConnectError as err:
            raise RotationError(f"testSecret: the pending credentials do not work: {err}") from None
        except RotationError:
            raise
        except Exception as err:  # noqa: BLE001 - any database error fails the test with its message
            raise RotationError(f"testSecret: query as {pair.group} failed: {masker(str(err)).splitlines()[0]}") from None
        self.log(f"testSecret: user {pending_target.user} logs in and {detail}")
        return StepResult("testSecret", self.token, "done", f"user {pending_target.user}")


def _parse(text: Optional[str], label: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError:
        raise RotationError(f"the {label} version does not hold a JSON document") from None
    if not isinstance(value, dict):
        raise RotationError(f"the {label} version does not hold a JSON object")
    for key in ("password", "auth_token"):
        if isinstance(value.get(key), str):
            masker.add(value[key])
    return value


def pending_version(sm: Any, secret_id: str) -> Optional[str]:
    """The version staged AWSPENDING by a rotation still in progress, if any."""
    versions = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    return next((v for v, s in versions.items() if "AWSPENDING" in s and "AWSCURRENT" not in s), None)


def rotate_all(sm: Any, secret_id: str, *, token: Optional[str] = None, master_secret_id: Optional[str] = None,
               endpoint: Optional[dict[str, Any]] = None, log: Log = _no_log) -> list[StepResult]:
    """A complete rotation of database credentials run by hand: the same four steps, in order,
    with a new version (or the one a rotation in progress staged, which is then finished)."""
    token = token or pending_version(sm, secret_id) or str(uuid.uuid4())
    rotation = Rotation(sm, secret_id, token, master_secret_id=master_secret_id, endpoint=endpoint, manual=True, log=log)
    return run_all(rotation)


def run_all(rotation: SecretRotation) -> list[StepResult]:
    return [rotation.run(step) for step in STEPS]
