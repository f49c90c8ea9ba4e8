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
  changes go into a new file. So is a pending file older than the latest applied version
  (unless out-of-order is allowed), an applied file renamed to another version (it would run
  twice), a file that is not UTF-8, and an empty directory against a database with a record.
  An applied file renamed under the same version is reported; the record keeps its old name.
* DDL never queues the application behind a long transaction: each file runs with a short
  `lock_timeout` (5 s by default) and a `statement_timeout`; a file that cannot get its locks
  in time is rolled back and tried again a few times (`Timeouts`), then the run fails saying so.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg import sql

from scripts.dbops.elasticache import Deadline
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
DEFAULT_LOCK_TIMEOUT_SECONDS = 5
DEFAULT_LOCK_ATTEMPTS = 5
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 600

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
class Timeouts:
    """How long one file may wait for a lock (each attempt) and run (each statement), and how
    often a file that timed out on a lock is tried again; waits between attempts double from
    `retry_wait_seconds`, up to 30 s."""

    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    lock_attempts: int = DEFAULT_LOCK_ATTEMPTS
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS
    retry_wait_seconds: float = 1.0

    def __post_init__(self) -> None:
        # Comparisons written so that NaN fails them too. PostgreSQL reads 0 as "no timeout", so
        # the shortest timeout is 1 ms.
        for what, seconds in (("lock timeout", self.lock_timeout_seconds),
                              ("statement timeout", self.statement_timeout_seconds)):
            if not 0.001 <= seconds < math.inf:
                raise ScriptError(f"the {what} must be a finite number of seconds, at least 0.001, not {seconds:g}", 2)
        if not 0 <= self.retry_wait_seconds < math.inf:
            raise ScriptError(f"the retry wait must be a finite number of seconds, not {self.retry_wait_seconds:g}", 2)
        if self.lock_attempts < 1:
            raise ScriptError("lock attempts must be at least 1", 2)

    def settings(self) -> tuple[str, str]:
        """lock_timeout and statement_timeout as PostgreSQL settings."""
        return _milliseconds(self.lock_timeout_seconds), _milliseconds(self.statement_timeout_seconds)

    def wait_before(self, attempt: int) -> float:
        return min(self.retry_wait_seconds * 2 ** (attempt - 2), 30.0)

    def file_budget_seconds(self) -> float:
        """The longest one file can take: every lock attempt, the waits between them, and the
        statement timeout."""
        waits = sum(self.wait_before(attempt) for attempt in range(2, self.lock_attempts + 1))
        return self.lock_timeout_seconds * self.lock_attempts + waits + self.statement_timeout_seconds


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
        text = _decode(path, raw)
        version = int(match["version"])
        if version in found:
            raise ScriptError(f"{path.name}: version {version} is also used by {found[version].filename}")
        first_line = text.splitlines()[0] if text else ""
        found[version] = Migration(version=version, name=match["name"], path=path, sql=text,
                                   checksum=hashlib.sha256(raw).hexdigest(),
                                   transactional=not NO_TRANSACTION.match(first_line.strip()))
    return [found[v] for v in sorted(found)]


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ScriptError(f"{path.name}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          "save the file as UTF-8") from None


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
    # Applied files whose name changed (same version, same contents): (record, file).
    renamed: list[tuple[AppliedMigration, Migration]] = field(default_factory=list)


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
                         unknown=[r for v, r in sorted(applied.items()) if v not in known],
                         renamed=[(applied[m.version], m) for m in files
                                  if m.version in applied and applied[m.version].name != m.name])


def check_history(files: list[Migration], applied: dict[int, AppliedMigration], plan: MigrationPlan, *,
                  directory: Path, allow_out_of_order: bool = False) -> None:
    """What would make a run wrong, refused before anything runs: no files at all against a
    database with a record (the wrong directory, a broken package), an applied file renamed to
    another version (it would run a second time), a pending file older than the latest applied
    one (it would run out of order, unless allowed)."""
    if not files and applied:
        latest = applied[max(applied)]
        raise ScriptError(f"no migration files in {directory}, but the database records {len(applied)} applied "
                          f"(latest {latest.version:04d}_{latest.name}); is the migrations directory right?")
    gone = {r.checksum: r for r in plan.unknown}
    for migration in plan.pending:
        record = gone.get(migration.checksum)
        if record is not None:
            raise ScriptError(f"{migration.filename} has the contents of the applied {record.version:04d}_{record.name}.sql, "
                              f"whose file is gone (renamed?); it would run a second time: give it back its name")
    if applied and not allow_out_of_order:
        latest = applied[max(applied)]
        older = [m.filename for m in plan.pending if m.version < latest.version]
        if older:
            raise ScriptError(f"{', '.join(older)} {'is' if len(older) == 1 else 'are'} older than the latest applied "
                              f"version {latest.version:04d}_{latest.name} and would run out of order; allow that "
                              'explicitly (--allow-out-of-order, or "allow_out_of_order": true for the function) '
                              "if it is intended")


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
    renamed: list[dict[str, Any]] = field(default_factory=list)
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
                "renamed": self.renamed, "latest": self.latest, "summary": self.summary()}


Log = Callable[[str], None]


def _no_log(_: str) -> None:
    return None


def migrate(target: DbTarget, directory: Optional[Path] = None, *, dry_run: bool = False,
            lock_wait_seconds: int = DEFAULT_LOCK_WAIT_SECONDS, timeouts: Timeouts = Timeouts(),
            allow_out_of_order: bool = False, log: Log = _no_log,
            deadline: Optional[Deadline] = None) -> MigrationResult:
    """Apply the pending files. With a `deadline` (the function's invocation), the lock wait is
    cut to what leaves one file its budget, and no file starts that could not finish before it:
    the run stops between files, never inside one, and the next run continues."""
    directory = Path(directory or default_directory())
    files = load_migrations(directory)
    result = MigrationResult(database=f"{target.dbname}@{target.host}", dry_run=dry_run)
    with connect(target, autocommit=True, application_name="psychology-api-migrate") as conn:
        if dry_run:
            # A dry run changes nothing: no lock, no record table.
            plan = _checked_plan(files, read_applied(conn) or {}, directory, allow_out_of_order, log)
            return _finish(result, plan, [])
        if deadline is not None:
            lock_wait_seconds = int(min(lock_wait_seconds, max(0.0, deadline.remaining() - timeouts.file_budget_seconds())))
        _acquire_lock(conn, lock_wait_seconds, log)
        try:
            conn.execute(_CREATE_TABLE)
            plan = _checked_plan(files, read_applied(conn) or {}, directory, allow_out_of_order, log)
            applied: list[dict[str, Any]] = []
            for migration in plan.pending:
                _check_time_left(deadline, timeouts, migration, len(applied))
                log(f"applying {migration.filename}" + ("" if migration.transactional else " (no transaction)"))
                applied.append(_apply(conn, migration, applied, timeouts, log))
                log(f"applied {migration.filename} in {applied[-1]['duration_ms']} ms")
            plan.applied.extend(plan.pending)
            plan.pending = []
            return _finish(result, plan, applied)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _check_time_left(deadline: Optional[Deadline], timeouts: Timeouts, migration: Migration, applied: int) -> None:
    if deadline is None or deadline.remaining() >= timeouts.file_budget_seconds():
        return
    raise ScriptError(f"stopped before {migration.filename} with {applied} applied in this run: "
                      f"{max(0, int(deadline.remaining()))} s left ({deadline.what}), a file may need "
                      f"{int(timeouts.file_budget_seconds())} s; run the migrations again to continue")


def _checked_plan(files: list[Migration], applied: dict[int, AppliedMigration], directory: Path,
                  allow_out_of_order: bool, log: Log) -> MigrationPlan:
    plan = plan_migrations(files, applied)
    check_history(files, applied, plan, directory=directory, allow_out_of_order=allow_out_of_order)
    if plan.unknown:
        log(f"the database records versions this code does not have: {[r.version for r in plan.unknown]}")
    for record, migration in plan.renamed:
        log(f"{migration.filename} was applied as {record.version:04d}_{record.name}.sql (renamed since; "
            "the record keeps the old name)")
    return plan


def _finish(result: MigrationResult, plan: MigrationPlan, applied: list[dict[str, Any]]) -> MigrationResult:
    result.applied = applied
    result.pending = [m.filename for m in plan.pending]
    result.already_applied = len(plan.applied) - len(applied)
    result.unknown = [r.version for r in plan.unknown]
    result.renamed = [{"version": r.version, "recorded_name": f"{r.version:04d}_{r.name}.sql", "file": m.filename}
                      for r, m in plan.renamed]
    done = plan.applied
    result.latest = done[-1].filename if done else None
    return result


def _acquire_lock(conn: psycopg.Connection, wait_seconds: int, log: Log) -> None:
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
    if got and got[0]:
        return
    if wait_seconds <= 0:
        # Not a lock_timeout of 0: PostgreSQL reads that as "wait for ever".
        raise ScriptError("another migration run holds the migration lock and no wait is allowed; nothing was applied")
    log(f"another migration run holds the lock; waiting up to {wait_seconds} s")
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (_milliseconds(wait_seconds),))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise ScriptError(f"another migration run held the migration lock for more than {wait_seconds} s; "
                          "nothing was applied") from None
    finally:
        conn.execute("RESET lock_timeout")


def _milliseconds(seconds: float) -> str:
    """A PostgreSQL duration setting, rounded up: a positive wait never becomes 0 ("no limit")."""
    return f"{max(1, math.ceil(round(seconds * 1000, 6)))}ms"  # round: 1.1 s is 1100 ms, not 1101


def _db_error(err: psycopg.Error) -> str:
    primary = err.diag.message_primary or str(err).strip().splitlines()[0]
    return masker(f"SQLSTATE {err.sqlstate or '?'}: {primary}")


def _apply(conn: psycopg.Connection, migration: Migration, applied_so_far: list[dict[str, Any]],
           timeouts: Timeouts, log: Log) -> dict[str, Any]:
    started = time.monotonic()
    if migration.transactional:
        _with_lock_retries(lambda: _apply_in_transaction(conn, migration, timeouts, started, applied_so_far),
                           migration, timeouts, log, "nothing of it was applied", applied_so_far)
    else:
        _apply_statements(conn, migration, timeouts, log, applied_so_far)
        conn.execute(_insert_record(), (migration.version, migration.name, migration.checksum,
                                        int((time.monotonic() - started) * 1000), False))
    duration_ms = int((time.monotonic() - started) * 1000)
    return {"version": migration.version, "name": migration.name, "file": migration.filename,
            "checksum": migration.checksum, "duration_ms": duration_ms, "transactional": migration.transactional}


def _insert_record() -> sql.Composed:
    return sql.SQL("INSERT INTO {} (version, name, checksum, duration_ms, transactional) VALUES (%s, %s, %s, %s, %s)").format(
        sql.Identifier(SCHEMA, TABLE))


def _set_timeouts(conn: psycopg.Connection, timeouts: Timeouts, *, local: bool) -> None:
    lock_timeout, statement_timeout = timeouts.settings()
    conn.execute("SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
                 (lock_timeout, local, statement_timeout, local))


def _apply_in_transaction(conn: psycopg.Connection, migration: Migration, timeouts: Timeouts, started: float,
                          applied_so_far: list[dict[str, Any]]) -> None:
    try:
        with conn.transaction():
            _set_timeouts(conn, timeouts, local=True)
            # No parameters: psycopg sends the file as one simple query, so it may hold many
            # statements and DO blocks.
            conn.execute(migration.sql)  # type: ignore[call-overload]
            conn.execute(_insert_record(), (migration.version, migration.name, migration.checksum,
                                            int((time.monotonic() - started) * 1000), True))
    except psycopg.errors.LockNotAvailable:
        raise
    except psycopg.Error as err:
        raise MigrationFailed(migration, f"migration {migration.filename} failed and was rolled back "
                                         f"(nothing of it applied): {_db_error(err)}", applied_so_far) from None


def _apply_statements(conn: psycopg.Connection, migration: Migration, timeouts: Timeouts, log: Log,
                      applied_so_far: list[dict[str, Any]]) -> None:
    statements = split_statements(migration.sql)
    _set_timeouts(conn, timeouts, local=False)
    try:
        for index, statement in enumerate(statements, start=1):
            where = f"statement {index} of {len(statements)}; statements before it stay applied"
            try:
                _with_lock_retries(functools.partial(conn.execute, statement), migration, timeouts, log, where,
                                   applied_so_far)
            except psycopg.Error as err:
                raise MigrationFailed(migration, f"migration {migration.filename} (no transaction) failed at {where}: "
                                                 f"{_db_error(err)}", applied_so_far) from None
    finally:
        conn.execute("RESET lock_timeout; RESET statement_timeout")


def _with_lock_retries(attempt_once: Callable[[], Any], migration: Migration, timeouts: Timeouts, log: Log,
                       what_stays: str, applied_so_far: list[dict[str, Any]]) -> None:
    """Runs `attempt_once`; a lock timeout is tried again after a wait, at most
    `timeouts.lock_attempts` times in all, so the application never queues behind the DDL for
    longer than one lock_timeout."""
    for attempt in range(1, timeouts.lock_attempts + 1):
        if attempt > 1:
            wait = timeouts.wait_before(attempt)
            log(f"{migration.filename}: lock_timeout ({timeouts.lock_timeout_seconds:g} s) reached, attempt "
                f"{attempt - 1} of {timeouts.lock_attempts}; trying again in {wait:g} s")
            time.sleep(wait)
        try:
            attempt_once()
            return
        except psycopg.errors.LockNotAvailable:
            continue
    raise MigrationFailed(migration, f"migration {migration.filename} could not get its locks: lock_timeout "
                                     f"({timeouts.lock_timeout_seconds:g} s) reached in all {timeouts.lock_attempts} attempts, "
                                     f"another transaction holds a conflicting lock ({what_stays}); run it again when "
                                     "that transaction has ended", applied_so_far)


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
