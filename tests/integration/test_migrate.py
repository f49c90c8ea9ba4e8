"""Migrations against a real TLS-only PostgreSQL: exactly once, concurrency-safe, atomic per
file, history protected, the no-transaction opt-out, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from scripts.dbops.migrations import (
    ADVISORY_LOCK_KEY,
    QUALIFIED_TABLE,
    MigrationFailed,
    Timeouts,
    load_migrations,
    migrate,
    migration_status,
)
from scripts.dbops.sqltext import split_statements
from scripts.lib import cli
from scripts.lib.db import DbTarget, connect, target_from_dsn
from tests.services import PgServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def records(target: DbTarget) -> list[tuple]:
    with connect(target) as conn:
        return conn.execute(f"SELECT version, name, checksum, duration_ms, transactional FROM {QUALIFIED_TABLE} "
                            "ORDER BY version").fetchall()


def table_exists(target: DbTarget, name: str) -> bool:
    with connect(target) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])


def test_fresh_apply_records_every_file_and_creates_the_roles(admin_target: DbTarget) -> None:
    result = migrate(admin_target)
    files = load_migrations()
    assert [a["file"] for a in result.applied] == [m.filename for m in files]
    assert [f.filename for f in files][:4] == ["0001_bootstrap_roles.sql", "0002_monitoring_role.sql",
                                               "0003_pg_stat_statements.sql", "0004_monitoring_login_users.sql"]
    rows = records(admin_target)
    assert [(r[0], r[1], r[2]) for r in rows] == [(m.version, m.name, m.checksum) for m in files]
    assert all(r[3] >= 0 and r[4] is True for r in rows)
    with connect(admin_target) as conn:
        roles = dict(conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'psychology%'").fetchall())
        assert roles == {"psychology_app": False, "psychology_app_a": True, "psychology_app_b": True,
                         "psychology_monitor": True, "psychology_monitor_a": True, "psychology_monitor_b": True,
                         "psychology_backup": False, "psychology_backup_a": True, "psychology_backup_b": True,
                         "psychology_drill": False, "psychology_drill_a": True, "psychology_drill_b": True}
        members = {r[0] for r in conn.execute(
            "SELECT m.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
            "JOIN pg_roles m ON m.oid = am.member WHERE g.rolname = 'psychology_app'").fetchall()}
        assert {"psychology_app_a", "psychology_app_b"} <= members
        for user in ("psychology_monitor_a", "psychology_monitor_b"):  # pg_monitor through the group
            assert conn.execute("SELECT pg_has_role(%s, 'psychology_monitor', 'MEMBER'), "
                                "pg_has_role(%s, 'pg_monitor', 'USAGE')", (user, user)).fetchone() == (True, True)
            settings = conn.execute("SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                                    "WHERE r.rolname = %s", (user,)).fetchone()
            assert settings is not None and {"default_transaction_read_only=on", "statement_timeout=15s"} <= set(settings[0])
        assert conn.execute("SELECT pg_has_role('psychology_monitor', 'pg_monitor', 'USAGE')").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone() == (1,)
    # No password in any statement: only code sets them, from Secrets Manager.
    for migration in files:
        statements = " ".join(split_statements(re.sub(r"--[^\n]*", "", migration.sql)))
        assert "PASSWORD" not in statements.upper(), migration.filename


def test_rerun_is_a_no_op(migrated: DbTarget) -> None:
    before = records(migrated)
    result = migrate(migrated)
    assert result.applied == [] and result.pending == []
    assert result.already_applied == len(before)
    assert records(migrated) == before


def test_dry_run_lists_pending_and_changes_nothing(admin_target: DbTarget, migrations_copy: Path) -> None:
    result = migrate(admin_target, migrations_copy, dry_run=True)
    assert result.pending == [m.filename for m in load_migrations(migrations_copy)]
    assert not table_exists(admin_target, QUALIFIED_TABLE)
    migrate(admin_target, migrations_copy)
    (migrations_copy / "0100_add_table.sql").write_text("CREATE TABLE dry_run_probe (id int);\n")
    result = migrate(admin_target, migrations_copy, dry_run=True)
    assert result.pending == ["0100_add_table.sql"]
    assert not table_exists(admin_target, "dry_run_probe")


def test_concurrent_runners_apply_each_file_once(admin_target: DbTarget, migrations_copy: Path) -> None:
    # A slow file keeps the first runner inside the lock while the second arrives; CREATE TABLE
    # without IF NOT EXISTS fails if anything ran it twice.
    (migrations_copy / "0100_slow.sql").write_text("SELECT pg_sleep(1);\nCREATE TABLE applied_once (id int);\n")
    (migrations_copy / "0101_after_slow.sql").write_text("CREATE TABLE applied_once_too (id int);\n")
    results: list = []
    errors: list = []
    barrier = threading.Barrier(3)

    def runner() -> None:
        barrier.wait()
        try:
            results.append(migrate(admin_target, migrations_copy))
        except Exception as err:  # noqa: BLE001 - collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=runner) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    applied = [a["file"] for r in results for a in r.applied]
    expected = [m.filename for m in load_migrations(migrations_copy)]
    assert sorted(applied) == sorted(expected)  # every file exactly once across the runners
    assert [r[0] for r in records(admin_target)] == [m.version for m in load_migrations(migrations_copy)]
    with connect(admin_target) as conn:  # the lock is released afterwards
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                            (ADVISORY_LOCK_KEY & 0xFFFFFFFF,)).fetchone() == (0,)


def test_concurrent_cli_processes_apply_each_file_once(pg_server: PgServer, database: str, migrations_copy: Path) -> None:
    (migrations_copy / "0100_slow.sql").write_text("SELECT pg_sleep(1);\nCREATE TABLE applied_once (id int);\n")
    cmd = [sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir", str(migrations_copy), "--json"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    docs = [json.loads(out) for out, _ in outputs]
    applied = sorted(a["file"] for d in docs for a in d["applied"])
    assert applied == sorted(m.filename for m in load_migrations(migrations_copy))
    assert pg_server.password not in "".join(o[0] + o[1] for o in outputs)


def test_failing_file_leaves_nothing_behind(admin_target: DbTarget, migrations_copy: Path) -> None:
    broken = migrations_copy / "0100_broken.sql"
    broken.write_text("CREATE TABLE half_done (id int);\nINSERT INTO no_such_table VALUES (1);\n")
    with pytest.raises(MigrationFailed) as failure:
        migrate(admin_target, migrations_copy)
    message = str(failure.value)
    assert "0100_broken.sql" in message and "SQLSTATE 42P01" in message and "no_such_table" in message
    assert "\n" not in message
    assert not table_exists(admin_target, "half_done")
    versions = [r[0] for r in records(admin_target)]
    assert 100 not in versions and versions == [1, 2, 3, 4, 5]  # the files before it stay applied
    # Fixed, it applies on the next run.
    broken.write_text("CREATE TABLE half_done (id int);\n")
    assert [a["file"] for a in migrate(admin_target, migrations_copy).applied] == ["0100_broken.sql"]


def test_edited_applied_file_is_refused(admin_target: DbTarget, migrations_copy: Path) -> None:
    (migrations_copy / "0100_table.sql").write_text("CREATE TABLE edited (id int);\n")
    migrate(admin_target, migrations_copy)
    (migrations_copy / "0100_table.sql").write_text("CREATE TABLE edited (id bigint);\n")
    (migrations_copy / "0101_next.sql").write_text("CREATE TABLE never_applied (id int);\n")
    with pytest.raises(cli.ScriptError) as refused:
        migrate(admin_target, migrations_copy)
    message = str(refused.value)
    assert message.startswith("0100_table.sql was changed after it was applied") and "\n" not in message
    assert not table_exists(admin_target, "never_applied")  # refused before anything ran
    with connect(admin_target) as conn:
        status = migration_status(conn, migrations_copy)
    assert not status.ok and "0100_table.sql" in status.message


def test_no_transaction_opt_out_runs_create_index_concurrently(admin_target: DbTarget, migrations_copy: Path) -> None:
    body = "CREATE TABLE items (id int);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_id ON items (id);\n"
    (migrations_copy / "0100_index.sql").write_text(body)
    with pytest.raises(MigrationFailed, match="cannot run inside a transaction block"):
        migrate(admin_target, migrations_copy)
    assert not table_exists(admin_target, "items")  # the transactional attempt left nothing

    (migrations_copy / "0100_index.sql").write_text("-- migrate: no-transaction\n" + body)
    result = migrate(admin_target, migrations_copy)
    assert [(a["file"], a["transactional"]) for a in result.applied] == [("0100_index.sql", False)]
    with connect(admin_target) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_id'::regclass").fetchone() == (True,)
    assert records(admin_target)[-1][4] is False


def test_runs_as_a_non_superuser_master_like_rds(pg_server: PgServer) -> None:
    """RDS's master has CREATEROLE and rds_superuser (ADMIN on pg_monitor), not SUPERUSER."""
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS rds_like")
        conn.execute("DROP ROLE IF EXISTS rds_master")
        conn.execute("CREATE ROLE rds_master LOGIN CREATEROLE CREATEDB PASSWORD 'rds-master-password-1'")
        conn.execute("GRANT pg_monitor TO rds_master WITH ADMIN OPTION")
        conn.execute("CREATE DATABASE rds_like OWNER rds_master")
    try:
        with psycopg.connect(pg_server.dsn("rds_like"), autocommit=True) as conn:
            # RDS lets rds_superuser create this supported extension; plain PostgreSQL needs a superuser.
            conn.execute("CREATE EXTENSION pg_stat_statements")
        master = target_from_dsn(pg_server.dsn("rds_like", user="rds_master", password="rds-master-password-1"))
        assert len(migrate(master).applied) == len(load_migrations())
        assert migrate(master).applied == []
    finally:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS rds_like WITH (FORCE)")
            conn.execute("REASSIGN OWNED BY rds_master TO postgres")
            conn.execute("DROP OWNED BY rds_master")
            conn.execute("DROP ROLE rds_master")


def test_cli_by_hand(pg_server: PgServer, database: str, migrations_copy: Path) -> None:
    base = [sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir", str(migrations_copy)]
    help_run = subprocess.run([sys.executable, "-m", "scripts.migrate", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_run.returncode == 0 and "--dry-run" in help_run.stdout

    dry = subprocess.run([*base, "--dry-run", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0
    assert json.loads(dry.stdout)["pending"] == [m.filename for m in load_migrations(migrations_copy)]

    run = subprocess.run(base, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "PASS:" in run.stderr.splitlines()[-1]

    (migrations_copy / "0100_broken.sql").write_text("SELECT 1/0;\n")
    failed = subprocess.run(base, cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: migration 0100_broken.sql failed") and "SQLSTATE 22012" in last
    assert pg_server.password not in failed.stderr + failed.stdout


# --- locks, timeouts and history checks (issue 9, item 6) ---------------------------------------

FAST = Timeouts(lock_timeout_seconds=0.2, lock_attempts=3, statement_timeout_seconds=30, retry_wait_seconds=0.05)


@pytest.fixture
def busy_table(admin_target: DbTarget, migrations_copy: Path) -> Iterator[psycopg.Connection]:
    """A migrated database with a table that a long application transaction is reading: the
    connection yielded holds its ACCESS SHARE lock until it commits."""
    (migrations_copy / "0100_busy.sql").write_text("CREATE TABLE busy (id int);\n")
    migrate(admin_target, migrations_copy)
    holder = psycopg.connect(admin_target.conninfo())
    holder.execute("SELECT count(*) FROM busy").fetchone()
    try:
        yield holder
    finally:
        holder.close()


def test_ddl_behind_a_long_transaction_gives_up_after_bounded_retries(admin_target: DbTarget, migrations_copy: Path,
                                                                      busy_table: psycopg.Connection) -> None:
    (migrations_copy / "0101_alter_busy.sql").write_text("ALTER TABLE busy ADD COLUMN note text;\n")
    lines: list[str] = []
    with pytest.raises(MigrationFailed) as failed:
        migrate(admin_target, migrations_copy, timeouts=FAST, log=lines.append)
    message = str(failed.value)
    assert message.startswith("migration 0101_alter_busy.sql could not get its locks: lock_timeout (0.2 s) reached in all "
                              "3 attempts") and "nothing of it was applied" in message and "\n" not in message
    assert [line for line in lines if "lock_timeout (0.2 s) reached" in line] == [
        "0101_alter_busy.sql: lock_timeout (0.2 s) reached, attempt 1 of 3; trying again in 0.05 s",
        "0101_alter_busy.sql: lock_timeout (0.2 s) reached, attempt 2 of 3; trying again in 0.1 s"]
    assert 101 not in [r[0] for r in records(admin_target)]
    with connect(admin_target) as conn:  # nothing is left waiting in the lock queue
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'busy'").fetchone() == (1,)


def test_ddl_succeeds_when_the_lock_is_released_between_retries(admin_target: DbTarget, migrations_copy: Path,
                                                                busy_table: psycopg.Connection) -> None:
    (migrations_copy / "0101_alter_busy.sql").write_text("ALTER TABLE busy ADD COLUMN note text;\n")

    def log(line: str) -> None:
        if "attempt 1 of 3" in line:
            busy_table.commit()  # the application's transaction ends while the migration waits to retry

    result = migrate(admin_target, migrations_copy, timeouts=FAST, log=log)
    assert [a["file"] for a in result.applied] == ["0101_alter_busy.sql"]
    assert records(admin_target)[-1][0] == 101


def test_no_transaction_files_retry_the_statement_that_timed_out(admin_target: DbTarget, migrations_copy: Path,
                                                                 busy_table: psycopg.Connection) -> None:
    (migrations_copy / "0101_index.sql").write_text(
        "-- migrate: no-transaction\nCREATE TABLE other (id int);\nALTER TABLE busy ADD COLUMN note text;\n")
    with pytest.raises(MigrationFailed, match=r"could not get its locks.*statement 2 of 2; statements before it stay applied"):
        migrate(admin_target, migrations_copy, timeouts=FAST)
    assert table_exists(admin_target, "other")
    busy_table.commit()
    (migrations_copy / "0101_index.sql").write_text(
        "-- migrate: no-transaction\nCREATE TABLE IF NOT EXISTS other (id int);\nALTER TABLE busy ADD COLUMN note text;\n")
    assert [a["file"] for a in migrate(admin_target, migrations_copy, timeouts=FAST).applied] == ["0101_index.sql"]


def test_a_statement_running_too_long_is_cancelled(admin_target: DbTarget, migrations_copy: Path) -> None:
    (migrations_copy / "0100_slow.sql").write_text("CREATE TABLE never_kept (id int);\nSELECT pg_sleep(5);\n")
    short = Timeouts(lock_timeout_seconds=1, lock_attempts=1, statement_timeout_seconds=0.3)
    with pytest.raises(MigrationFailed, match="SQLSTATE 57014: canceling statement due to statement timeout"):
        migrate(admin_target, migrations_copy, timeouts=short)
    assert not table_exists(admin_target, "never_kept")


def test_the_cli_and_the_function_take_the_lock_settings(pg_server: PgServer, database: str, migrations_copy: Path,
                                                         busy_table: psycopg.Connection, function_env: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from scripts.dbops import handlers

    (migrations_copy / "0101_alter_busy.sql").write_text("ALTER TABLE busy ADD COLUMN note text;\n")
    base = [sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir", str(migrations_copy)]
    run = subprocess.run([*base, "--lock-timeout", "0.2", "--lock-attempts", "2"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(
        "error: migration 0101_alter_busy.sql could not get its locks: lock_timeout (0.2 s) reached in all 2 attempts")
    usage = subprocess.run([*base, "--lock-attempts", "0"], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 2 and "lock attempts must be at least 1" in usage.stderr

    monkeypatch.setenv("MIGRATIONS_DIR", str(migrations_copy))
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT_SECONDS", "0.2")
    monkeypatch.setenv("MIGRATION_LOCK_ATTEMPTS", "2")
    answer = handlers.migrate_handler({})
    assert answer["ok"] is False and "reached in all 2 attempts" in answer["error"]
    answer = handlers.migrate_handler({"lock_attempts": 1})  # the event wins over the environment
    assert answer["ok"] is False and "reached in all 1 attempts" in answer["error"]


def test_a_file_that_is_not_utf8_is_refused_by_name(pg_server: PgServer, database: str, admin_target: DbTarget,
                                                    migrations_copy: Path, function_env: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from scripts.dbops import handlers

    (migrations_copy / "0100_latin1.sql").write_bytes("INSERT INTO t VALUES ('Gr\u00fc\u00dfe');\n".encode("latin-1"))
    with pytest.raises(cli.ScriptError, match=r"^0100_latin1\.sql: not UTF-8 text \(byte 0xfc at offset 25\)"):
        migrate(admin_target, migrations_copy)
    run = subprocess.run([sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir",
                          str(migrations_copy)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: 0100_latin1.sql: not UTF-8 text")
    monkeypatch.setenv("MIGRATIONS_DIR", str(migrations_copy))
    answer = handlers.migrate_handler({})
    assert answer["ok"] is False and answer["error"].startswith("0100_latin1.sql: not UTF-8 text")


def test_an_empty_directory_against_applied_versions_fails(pg_server: PgServer, database: str, migrated: DbTarget,
                                                           tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    applied = len(load_migrations())
    for dry_run in (True, False):
        with pytest.raises(cli.ScriptError, match=rf"^no migration files in {empty}, but the database records {applied} applied"):
            migrate(migrated, empty, dry_run=dry_run)
    run = subprocess.run([sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir", str(empty)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "error: no migration files in" in run.stderr


def test_a_file_older_than_the_latest_applied_needs_permission(pg_server: PgServer, database: str, admin_target: DbTarget,
                                                              migrations_copy: Path) -> None:
    (migrations_copy / "0102_later.sql").write_text("CREATE TABLE later (id int);\n")
    migrate(admin_target, migrations_copy)
    (migrations_copy / "0101_forgotten.sql").write_text("CREATE TABLE forgotten (id int);\n")
    with pytest.raises(cli.ScriptError, match=r"^0101_forgotten\.sql is older than the latest applied version "
                                              r"0102_later and would run out of order"):
        migrate(admin_target, migrations_copy)
    assert not table_exists(admin_target, "forgotten")
    base = [sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir", str(migrations_copy), "--json"]
    refused = subprocess.run(base, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 1 and "--allow-out-of-order" in refused.stderr.strip().splitlines()[-1]
    allowed = subprocess.run([*base, "--allow-out-of-order"], cwd=ROOT, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert [a["file"] for a in json.loads(allowed.stdout)["applied"]] == ["0101_forgotten.sql"]


def test_a_renamed_applied_file_is_reported(pg_server: PgServer, database: str, admin_target: DbTarget,
                                            migrations_copy: Path) -> None:
    (migrations_copy / "0100_first_name.sql").write_text("CREATE TABLE named (id int);\n")
    migrate(admin_target, migrations_copy)
    (migrations_copy / "0100_first_name.sql").rename(migrations_copy / "0100_second_name.sql")
    lines: list[str] = []
    result = migrate(admin_target, migrations_copy, log=lines.append)
    assert result.applied == [] and result.renamed == [
        {"version": 100, "recorded_name": "0100_first_name.sql", "file": "0100_second_name.sql"}]
    assert "0100_second_name.sql was applied as 0100_first_name.sql (renamed since; the record keeps the old name)" in lines
    run = subprocess.run([sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--dir",
                          str(migrations_copy), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and json.loads(run.stdout)["renamed"] == result.renamed
    assert "was applied as 0100_first_name.sql" in run.stderr

    # Renamed to another version, it would run a second time.
    (migrations_copy / "0100_second_name.sql").rename(migrations_copy / "0105_first_name.sql")
    with pytest.raises(cli.ScriptError, match=r"^0105_first_name\.sql has the contents of the applied 0100_first_name\.sql"):
        migrate(admin_target, migrations_copy)


def test_a_run_stops_between_files_before_the_invocations_deadline(admin_target: DbTarget) -> None:
    """A file starts only with its whole budget left (lock attempts, their waits, the statement
    timeout): the function stops between files, not killed inside one, and the next run goes on."""
    from scripts.dbops.elasticache import Deadline
    from scripts.dbops.migrations import Timeouts

    timeouts = Timeouts(lock_timeout_seconds=1, lock_attempts=2, statement_timeout_seconds=30)
    assert timeouts.file_budget_seconds() == 1 * 2 + 1 + 30
    with pytest.raises(cli.ScriptError, match=r"^stopped before 0001_bootstrap_roles\.sql with 0 applied in this run: "
                                              r"\d+ s left \(the test's invocation\), a file may need 33 s; run the migrations again"):
        migrate(admin_target, timeouts=timeouts, deadline=Deadline.after(20, what="the test's invocation"))
    assert records(admin_target) == []
    result = migrate(admin_target, timeouts=timeouts, deadline=Deadline.after(600, what="the test's invocation"))
    assert [a["file"] for a in result.applied] == [m.filename for m in load_migrations()]


@pytest.fixture
def lock_held_elsewhere(admin_target: DbTarget) -> Iterator[None]:
    """Another migration run's session, holding the migration lock."""
    with connect(admin_target, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        yield


def test_no_wait_for_the_migration_lock_fails_at_once(pg_server: PgServer, database: str, admin_target: DbTarget,
                                                      lock_held_elsewhere: None) -> None:
    """A lock wait of 0 (asked for, or all that an invocation's deadline leaves) fails at once:
    a lock_timeout of 0 would have made PostgreSQL wait for ever."""
    from scripts.dbops.elasticache import Deadline

    run = subprocess.run([sys.executable, "-m", "scripts.migrate", "--dsn", pg_server.dsn(database), "--lock-wait", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == ("error: another migration run holds the migration lock and no wait "
                                                   "is allowed; nothing was applied")
    timeouts = Timeouts(lock_timeout_seconds=1, lock_attempts=1, statement_timeout_seconds=9.5)
    deadline = Deadline.after(11, what="the test's invocation")  # leaves less than 1 s to wait for the lock
    with pytest.raises(cli.ScriptError, match="no wait is allowed"):
        migrate(admin_target, timeouts=timeouts, deadline=deadline)
    assert deadline.remaining() > 9


def test_timeouts_never_become_no_timeout() -> None:
    """PostgreSQL reads 0 as "no timeout": a positive setting is rounded up, and one below 1 ms
    (or not finite) is refused in the CLI, the function and the library."""
    assert Timeouts(lock_timeout_seconds=0.0015, statement_timeout_seconds=2.0001).settings() == ("2ms", "2001ms")
    assert Timeouts(lock_timeout_seconds=1.1, statement_timeout_seconds=0.3).settings() == ("1100ms", "300ms")
    for bad in (0.0004, float("nan"), float("inf")):
        with pytest.raises(cli.ScriptError, match="must be a finite number of seconds, at least 0.001") as refused:
            Timeouts(lock_timeout_seconds=bad)
        assert refused.value.exit_code == 2
    from scripts.dbops.handlers import migration_timeouts
    with pytest.raises(cli.ScriptError, match=r"^lock_timeout_seconds must be a finite number, not 'nan'$"):
        migration_timeouts({"lock_timeout_seconds": "nan"})
    with pytest.raises(cli.ScriptError, match=r"^lock_attempts must be a finite number, not inf$"):
        migration_timeouts({"lock_attempts": float("inf")})
