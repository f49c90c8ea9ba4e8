"""Database-side credentials: setting a role's password from a secret, safely.

Passwords never appear in SQL files, statements in logs or process arguments:

* `ALTER ROLE ... PASSWORD` is sent with a SCRAM-SHA-256 verifier computed on this side
  (libpq's PQencryptPasswordConn), so even a server that logs every DDL statement records only
  the verifier, never the password.
* A role's password is only changed when logging in with the secret's credentials fails; a
  second run finds them working and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from scripts.lib.cli import ScriptError, masker
from scripts.lib.db import DbConnectError, DbTarget, connect

APP_GROUP_ROLE = "psychology_app"
APP_LOGIN_USERS = ("psychology_app_a", "psychology_app_b")
# Since migration 0004 psychology_monitor is the group role holding pg_monitor and the two
# login users below alternate like the application's. Before it, psychology_monitor logged in
# itself: a monitoring secret written then still names it until its first rotation.
MONITOR_GROUP_ROLE = "psychology_monitor"
MONITOR_LOGIN_USERS = ("psychology_monitor_a", "psychology_monitor_b")
LEGACY_MONITOR_LOGIN = MONITOR_GROUP_ROLE
# Migration 0005: the monitoring host's backup (pg_read_all_data, read-only) and restore drill
# (CREATEDB, its scratch database only) logins, alternating like the others.
BACKUP_GROUP_ROLE = "psychology_backup"
BACKUP_LOGIN_USERS = ("psychology_backup_a", "psychology_backup_b")
DRILL_GROUP_ROLE = "psychology_drill"
DRILL_LOGIN_USERS = ("psychology_drill_a", "psychology_drill_b")


def set_role_password(admin: psycopg.Connection, role: str, password: str) -> None:
    """ALTER ROLE with a verifier computed client-side; the role must exist (migrations create it)."""
    exists = admin.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        raise ScriptError(f"role {role} does not exist; run the migrations first (python -m scripts.migrate)")
    verifier = admin.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    masker.add(verifier)
    try:
        admin.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))
    except psycopg.Error as err:
        raise ScriptError(f"cannot set the password of role {role}: SQLSTATE {err.sqlstate}: "
                          f"{masker(err.diag.message_primary or str(err))}") from None


def disable_login(admin: psycopg.Connection, role: str) -> bool:
    """NOLOGIN and no password for a role nobody may log in as any more; True when it changed
    something. A role that does not exist, or already cannot log in, is left alone."""
    row = admin.execute("SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not row or not row[0]:
        return False
    try:
        admin.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(sql.Identifier(role)))
    except psycopg.Error as err:
        raise ScriptError(f"cannot disable the login of role {role}: SQLSTATE {err.sqlstate}: "
                          f"{masker(err.diag.message_primary or str(err))}") from None
    return True


def can_log_in(target: DbTarget) -> bool:
    """True when the credentials work; False when the server rejects them. Any other failure
    (server unreachable, TLS) raises: it says nothing about the password."""
    try:
        with connect(target, application_name="psychology-api-credentials-check") as conn:
            conn.execute("SELECT 1")
        return True
    except DbConnectError as err:
        if err.auth_failed:
            return False
        raise


@dataclass
class CredentialResult:
    role: str
    secret: str
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "secret": self.secret, "password_set": self.changed}


MANAGED_ROLES = (*APP_LOGIN_USERS, *MONITOR_LOGIN_USERS, LEGACY_MONITOR_LOGIN, *BACKUP_LOGIN_USERS, *DRILL_LOGIN_USERS)


def ensure_role_matches_secret(admin_target: DbTarget, credentials: DbTarget, *, secret_label: str) -> CredentialResult:
    """Make the role named in a secret accept the secret's password: the initial credentials of
    the application user after the bootstrap migration created it, and the monitoring role.
    Only the project's own roles are touched, whatever a secret says: a tampered secret naming
    the master user cannot be used to change the master's password."""
    if credentials.user not in MANAGED_ROLES:
        raise ScriptError(f"{secret_label} names role {credentials.user}, which is not one of {', '.join(MANAGED_ROLES)}")
    if not credentials.password:
        raise ScriptError(f"{secret_label} has an empty password")
    if can_log_in(credentials):
        return CredentialResult(credentials.user, secret_label, changed=False)
    with connect(admin_target, autocommit=True, application_name="psychology-api-credentials") as admin:
        set_role_password(admin, credentials.user, credentials.password)
    if not can_log_in(credentials):
        raise ScriptError(f"the password of role {credentials.user} was set from {secret_label}, "
                          "but logging in with it still fails")
    return CredentialResult(credentials.user, secret_label, changed=True)
