"""Versioned SQL migrations: `migrations/NNNN_name.sql`, applied in order, each exactly once.

* The record is `psychology_ops.schema_migrations` (version, name, sha256 checksum, applied_at,
  duration_ms, applied_by, transactional).
* A session-level advisory lock with a fixed key serialises concurrent runners (two release
  steps, an operator and the pipeline): the second waits, then finds nothing left to do.
* Each file runs in its own transaction together with its record row, so a failing file leaves
  nothing behind. A file whose first line is `-- migrate: no-transaction` runs statement by
  statement in autocommit instead (for `CREATE INDEX CONCURRENTLY`); such files should be
  written to be re-runnable (`IF NOT EXISTS`), since statements before a failure stay applied.
* An applied file whose checksum changed is refused before anything runs: history is fixed,
  changes go into a new file.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg import sql

from scripts.dbops.sqltext import split_statements
from scripts.lib.cli import ScriptError, masker
from scripts.lib.db import DbTarget, connect

SCHEMA = "psychology_ops"
TABLE = "schema_migrations"
QUALIFIED_TABLE = f"{SCHEMA}.{TABLE}"
# Any fixed bigint works, as long as nothing else in the database uses it; this one spells
# "psyc-migr" in hex-ish and is only ever taken by this module.
ADVISORY_LOCK_KEY = 0x7073_7963_6D69_6772
DEFAULT_LOCK_WAIT_SECONDS = 300

FILE_NAME = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
NO_TRANSACTION = re.compile(r"^--\s*migrate:\s*no-transaction\s*$", re.IGNORECASE)

_CREATE_TABLE = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {QUALIFIED_TABLE} (
    version       integer     PRIMARY KEY,
    name          text        NOT NULL,
    checksum      text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{{64}}$'),
    applied_at    timestamptz NOT NULL DEFAULT now(),
    duration_ms   integer     NOT NULL CHECK (duration_ms >= 0),
    applied_by    text        NOT NULL DEFAULT current_user,
    transactional boolean     NOT NULL DEFAULT true
);
"""


def default_directory() -> Path:
    """`migrations/` at the repository root, which is also the root of the Lambda package."""
    override = os.environ.get("MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str
    transactional: bool

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: Any = None
    duration_ms: int = 0


def load_migrations(directory: Optional[Path] = None) -> list[Migration]:
    directory = Path(directory or default_directory())
    if not directory.is_dir():
        raise ScriptError(f"migrations directory {directory} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise ScriptError(f"{path.name}: not a migration file name; expected NNNN_lower_case_name.sql")
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
        version = int(match["version"])
        if version in found:
            raise ScriptError(f"{path.name}: version {version} is also used by {found[version].filename}")
        first_line = text.splitlines()[0] if text else ""
        found[version] = Migration(version=version, name=match["name"], path=path, sql=text,
                                   checksum=hashlib.sha256(raw).hexdigest(),
                                   transactional=not NO_TRANSACTION.match(first_line.strip()))
    return [found[v] for v in sorted(found)]


def directory_checksum(directory: Optional[Path] = None) -> str:
    """One hash over every migration file (names and contents)."""
    digest = hashlib.sha256()
    for migration in load_migrations(directory):
        digest.update(f"{migration.filename}\0{migration.checksum}\n".encode())
    return digest.hexdigest()


def read_applied(conn: psycopg.Connection) -> Optional[dict[int, AppliedMigration]]:
    """The record, or None when no migration run ever created it."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (QUALIFIED_TABLE,)).fetchone()
    if not exists or not exists[0]:
        return None
    rows = conn.execute(
        f"SELECT version, name, checksum, applied_at, duration_ms FROM {QUALIFIED_TABLE} ORDER BY version").fetchall()  # noqa: S608 - constant identifiers
    return {row[0]: AppliedMigration(*row) for row in rows}


@dataclass
class MigrationPlan:
    pending: list[Migration]
    applied: list[Migration]
    # Versions recorded in the database without a file here: the database is ahead of this code.
    unknown: list[AppliedMigration]


def plan_migrations(files: list[Migration], applied: dict[int, AppliedMigration]) -> MigrationPlan:
    for migration in files:
        record = applied.get(migration.version)
        if record is not None and record.checksum != migration.checksum:
            raise ScriptError(
                f"{migration.filename} was changed after it was applied (recorded sha256 {record.checksum[:12]}, "
                f"file {migration.checksum[:12]}); put the change in a new migration file instead")
    known = {m.version for m in files}
    return MigrationPlan(pending=[m for m in files if m.version not in applied],
                         applied=[m for m in files if m.version in applied],
                         unknown=[r for v, r in sorted(applied.items()) if v not in known])


class MigrationFailed(ScriptError):
    def __init__(self, migration: Migration, message: str, applied: list[dict[str, Any]]):
        super().__init__(message)
        self.migration = migration
        self.applied = applied


@dataclass
class MigrationResult:
    database: str
    dry_run: bool
    applied: list[dict[str, Any]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    already_applied: int = 0
    unknown: list[int] = field(default_factory=list)
    latest: Optional[str] = None

    def summary(self) -> str:
        if self.dry_run:
            if not self.pending:
                return f"{self.database}: nothing to apply ({self.already_applied} applied, at {self.latest or 'none'})"
            return f"{self.database}: would apply {len(self.pending)}: {', '.join(self.pending)}"
        if not self.applied:
            return f"{self.database}: up to date, nothing applied ({self.already_applied} applied, at {self.latest or 'none'})"
        total = sum(int(a["duration_ms"]) for a in self.applied)
        return (f"{self.database}: applied {len(self.applied)} migration(s) in {total} ms, "
                f"now at {self.latest}")

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "database": self.database, "dry_run": self.dry_run, "applied": self.applied,
                "pending": self.pending, "already_applied": self.already_applied, "unknown_versions": self.unknown,
                "latest": self.latest, "summary": self.summary()}


Log = Callable[[str], None]


def _no_log(_: str) -> None:
    return None


def migrate(target: DbTarget, directory: Optional[Path] = None, *, dry_run: bool = False,
            lock_wait_seconds: int = DEFAULT_LOCK_WAIT_SECONDS, log: Log = _no_log) -> MigrationResult:
    files = load_migrations(directory)
    result = MigrationResult(database=f"{target.dbname}@{target.host}", dry_run=dry_run)
    with connect(target, autocommit=True, application_name="psychology-api-migrate") as conn:
        if dry_run:
            # A dry run changes nothing: no lock, no record table.
            plan = plan_migrations(files, read_applied(conn) or {})
            return _finish(result, plan, [])
        _acquire_lock(conn, lock_wait_seconds, log)
        try:
            conn.execute(_CREATE_TABLE)
            plan = plan_migrations(files, read_applied(conn) or {})
            if plan.unknown:
                log(f"the database records versions this code does not have: {[r.version for r in plan.unknown]}")
            applied: list[dict[str, Any]] = []
            for migration in plan.pending:
                log(f"applying {migration.filename}" + ("" if migration.transactional else " (no transaction)"))
                applied.append(_apply(conn, migration, applied))
                log(f"applied {migration.filename} in {applied[-1]['duration_ms']} ms")
            plan.applied.extend(plan.pending)
            plan.pending = []
            return _finish(result, plan, applied)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _finish(result: MigrationResult, plan: MigrationPlan, applied: list[dict[str, Any]]) -> MigrationResult:
    result.applied = applied
    result.pending = [m.filename for m in plan.pending]
    result.already_applied = len(plan.applied) - len(applied)
    result.unknown = [r.version for r in plan.unknown]
    done = plan.applied
    result.latest = done[-1].filename if done else None
    return result


def _acquire_lock(conn: psycopg.Connection, wait_seconds: int, log: Log) -> None:
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
    if got and got[0]:
        return
    log(f"another migration run holds the lock; waiting up to {wait_seconds} s")
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(wait_seconds * 1000)}ms",))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise ScriptError(f"another migration run held the migration lock for more than {wait_seconds} s; "
                          "nothing was applied") from None
    finally:
        conn.execute("RESET lock_timeout")


def _db_error(err: psycopg.Error) -> str:
    primary = err.diag.message_primary or str(err).strip().splitlines()[0]
    return masker(f"SQLSTATE {err.sqlstate or '?'}: {primary}")


def _apply(conn: psycopg.Connection, migration: Migration, applied_so_far: list[dict[str, Any]]) -> dict[str, Any]:
    insert = sql.SQL("INSERT INTO {} (version, name, checksum, duration_ms, transactional) VALUES (%s, %s, %s, %s, %s)").format(
        sql.Identifier(SCHEMA, TABLE))
    started = time.monotonic()
    if migration.transactional:
        try:
            with conn.transaction():
                # No parameters: psycopg sends the file as one simple query, so it may hold
                # many statements and DO blocks.
                conn.execute(migration.sql)  # type: ignore[call-overload]
                duration_ms = int((time.monotonic() - started) * 1000)
                conn.execute(insert, (migration.version, migration.name, migration.checksum, duration_ms, True))
        except psycopg.Error as err:
            raise MigrationFailed(migration, f"migration {migration.filename} failed and was rolled back "
                                             f"(nothing of it applied): {_db_error(err)}", applied_so_far) from None
    else:
        statements = split_statements(migration.sql)
        for index, statement in enumerate(statements, start=1):
            try:
                conn.execute(statement)  # type: ignore[call-overload]
            except psycopg.Error as err:
                raise MigrationFailed(migration, f"migration {migration.filename} (no transaction) failed at statement "
                                                 f"{index} of {len(statements)}; statements before it stay applied: "
                                                 f"{_db_error(err)}", applied_so_far) from None
        duration_ms = int((time.monotonic() - started) * 1000)
        conn.execute(insert, (migration.version, migration.name, migration.checksum, duration_ms, False))
    return {"version": migration.version, "name": migration.name, "file": migration.filename,
            "checksum": migration.checksum, "duration_ms": duration_ms, "transactional": migration.transactional}


@dataclass
class MigrationStatus:
    ok: bool
    message: str
    latest: Optional[str] = None
    pending: list[str] = field(default_factory=list)


def migration_status(conn: psycopg.Connection, directory: Optional[Path] = None) -> MigrationStatus:
    """Is the database exactly at the latest migration of this code? Used by the smoke tests,
    with the application's credentials (the record is readable by the application role)."""
    files = load_migrations(directory)
    applied = read_applied(conn)
    if applied is None:
        return MigrationStatus(False, f"no migration has run: {QUALIFIED_TABLE} does not exist")
    try:
        plan = plan_migrations(files, applied)
    except ScriptError as err:
        return MigrationStatus(False, str(err))
    latest = plan.applied[-1].filename if plan.applied else None
    if plan.unknown:
        return MigrationStatus(False, "the database has migrations this code does not know: "
                               + ", ".join(f"{r.version:04d}_{r.name}" for r in plan.unknown), latest)
    if plan.pending:
        names = [m.filename for m in plan.pending]
        return MigrationStatus(False, f"{len(names)} migration(s) pending: {', '.join(names)}", latest, names)
    return MigrationStatus(True, f"at the latest migration {latest} ({len(plan.applied)} applied)", latest)
