"""Restore drill: prove the newest backup restores, on the same server, into a scratch database.

    python -m scripts.restore_drill --bucket BUCKET --secret-id ARN --db-host HOST --db-name psychology \\
        [--scratch-db psychology_restore_drill] \\
        [--textfile /var/lib/node_exporter/textfile/psychology_restore_drill.prom] [--json]

1. Finds the newest complete backup of the source database (`<prefix><dbname>/`); manifests
   that cannot be read, or do not describe the dump next to them, are skipped and reported.
2. (Re)creates the scratch database from template0, restores the backup into it with the
   restore command's checks (SHA-256 before anything is restored, one transaction, per-table
   comparison with the snapshot counts and checksums recorded by the backup).
3. Counts the live source tables for information: the source has moved on since the
   backup, so differences there are reported, not judged.
4. Drops the scratch database (also after a failure, unless --keep-scratch) and writes the
   psychology_restore_drill_* metrics. Exits non-zero unless every table matched.

The scratch database needs as much space as the restored data for the drill's duration.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from psycopg import sql

from scripts.lib import aws, cli
from scripts.lib.db import DbConnectError, DbTarget, add_target_arguments, connect, target_from_args
from scripts.lib.pgbackup import (
    DEFAULT_PREFIX,
    DRILL_GAUGES,
    DRILL_LAST_RUN,
    DRILL_LAST_STATUS,
    DRILL_LAST_SUCCESS,
    latest_complete,
    mismatches,
    normalize_prefix,
    table_stats,
    user_tables,
)
from scripts.lib.signals import EXIT_TERMINATED, Terminated, sigterm_ignored, sigterm_raises
from scripts.lib.textfile import update_metrics
from scripts.restore import RestoreOptions, RestoreResult, print_tables, restore_backup, skipped_note

DEFAULT_SCRATCH_DB = "psychology_restore_drill"
_SCRATCH_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PROTECTED = {"postgres", "template0", "template1", "rdsadmin"}
_LOCK_NAMESPACE = "psychology-api-restore-drill"


def _validate_scratch(scratch: str, source: DbTarget) -> None:
    if not _SCRATCH_NAME.match(scratch):
        raise cli.ScriptError(f"--scratch-db {scratch!r}: use lower-case letters, digits and '_' (at most 63)", 2)
    if scratch == source.dbname or scratch in _PROTECTED:
        raise cli.ScriptError(f"--scratch-db {scratch!r} must not be the source database or a system database; "
                              "the drill drops and recreates it", 2)


class DrillInProgress(cli.ScriptError):
    """Another drill into the same scratch database runs: this one must not touch it."""


@contextmanager
def _drill_lock(source: DbTarget, scratch: str) -> Iterator[None]:
    """One drill per scratch database at a time: a second one would drop the first one's
    database in the middle of its restore. The lock is a session-level advisory lock on the
    source database, so it goes with its connection when the drill ends, however it ends; the
    connection is the drill's admin connection in the connection budget. With the drill login's
    CONNECTION LIMIT reached, a running drill holds them all: that is the same answer."""
    try:
        conn = connect(source, autocommit=True, application_name="psychology-api-restore-drill")
    except DbConnectError as err:
        if err.role_connection_limit:
            raise DrillInProgress(f"another restore drill is running (it holds every connection of the login "
                                  f"{source.user}); this one changed nothing and recorded nothing") from None
        raise
    with conn:
        got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"{_LOCK_NAMESPACE}:{scratch}",)).fetchone()
        if not (got and got[0]):
            raise DrillInProgress(f"another restore drill into scratch database {scratch} is running; "
                                  "this one changed nothing and recorded nothing")
        yield


def _recreate(admin: DbTarget, scratch: str) -> None:
    with connect(admin, autocommit=True, application_name="psychology-api-restore-drill") as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(scratch)))
        conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(scratch)))


def _drop(admin: DbTarget, scratch: str) -> None:
    with connect(admin, autocommit=True, application_name="psychology-api-restore-drill") as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(scratch)))


def run_drill(source: DbTarget, s3: Any, *, bucket: str, prefix: str, scratch: str, jobs: int = 1,
              spool_dir: Optional[str] = None, pg_bin: Optional[str] = None, source_counts: bool = True,
              keep_scratch: bool = False) -> tuple[RestoreResult, dict[str, int]]:
    _validate_scratch(scratch, source)
    manifest, skipped = latest_complete(s3, bucket, f"{normalize_prefix(prefix)}{source.dbname}/")
    for bad in skipped:
        cli.info(f"drill: skipped s3://{bucket}/{bad.key}: {bad.reason}")
    cli.info(f"drill: restoring s3://{bucket}/{manifest.key} (finished {manifest.finished_at}) into scratch database {scratch}")
    with _drill_lock(source, scratch):
        _recreate(source, scratch)
        try:
            result = restore_backup(source.with_dbname(scratch), s3, RestoreOptions(
                bucket=bucket, key=manifest.key, jobs=jobs, spool_dir=spool_dir, pg_bin=pg_bin,
                # The drill's login cannot create extensions (only rds_superuser can); they hold no rows.
                skip_extensions=True))
        finally:
            if not keep_scratch:
                with sigterm_ignored():
                    _drop(source, scratch)
    result.skipped_manifests = skipped
    live: dict[str, int] = {}
    if source_counts:
        with connect(source, application_name="psychology-api-restore-drill") as conn:
            live = {s.qualified: s.rows for s in table_stats(conn, user_tables(conn), checksums=False)}
    return result, live


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m scripts.restore_drill",
        description="Restore the newest backup of the source database into a scratch database on the same server, "
                    "compare every table with the backup, drop the scratch database, record the result.")
    parser.add_argument("--bucket", required=True, help="backups bucket (stack output backup_bucket_name)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix of the backups (default %(default)s)")
    add_target_arguments(parser)
    parser.add_argument("--scratch-db", default=DEFAULT_SCRATCH_DB,
                        help="database created, restored into and dropped by the drill (default %(default)s)")
    parser.add_argument("--textfile", type=Path, default=None,
                        help="write the psychology_restore_drill_* metrics to this node_exporter textfile (atomically)")
    parser.add_argument("--jobs", type=cli.int_range(1, 32), default=1,
                        help="pg_restore parallel jobs, 1-32 (default 1: one transaction)")
    parser.add_argument("--spool-dir", type=cli.existing_dir, default=None,
                        help="directory for the downloaded archive (default TMPDIR)")
    parser.add_argument("--no-source-counts", dest="source_counts", action="store_false",
                        help="do not count the live source tables (they are informational only)")
    parser.add_argument("--keep-scratch", action="store_true", help="leave the scratch database for inspection")
    parser.add_argument("--pg-bin", type=cli.existing_dir, default=None,
                        help="directory of pg_restore (default: PG_BIN or PATH)")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    textfile: Optional[Path] = args.textfile
    try:
        source = target_from_args(args)
        assert source is not None
        s3 = aws.client("s3", region=args.region, endpoint_url=args.endpoint_url)
        with sigterm_raises():
            result, live = run_drill(source, s3, bucket=args.bucket, prefix=args.prefix, scratch=args.scratch_db,
                                     jobs=args.jobs, spool_dir=args.spool_dir, pg_bin=args.pg_bin,
                                     source_counts=args.source_counts, keep_scratch=args.keep_scratch)
    except DrillInProgress:
        raise  # the running drill records its own result
    except BaseException as err:
        update_metrics(textfile, DRILL_GAUGES, {DRILL_LAST_RUN.name: round(time.time(), 3), DRILL_LAST_STATUS.name: 0},
                       defaults={DRILL_LAST_SUCCESS.name: 0})
        if isinstance(err, Terminated):
            raise cli.ScriptError("terminated by SIGTERM; the scratch database was dropped, the drill recorded as failed",
                                  EXIT_TERMINATED) from None
        raise

    ok = result.ok
    now = round(time.time(), 3)
    values = {DRILL_LAST_RUN.name: now, DRILL_LAST_STATUS.name: 1 if ok else 0}
    if ok:
        values[DRILL_LAST_SUCCESS.name] = now
    update_metrics(textfile, DRILL_GAUGES, values, defaults={DRILL_LAST_SUCCESS.name: 0})

    print_tables(result)
    drift = {table: {"backup": c.expected_rows, "live": live.get(table)} for c in result.comparisons
             for table in [c.table] if live and c.expected_rows is not None and live.get(table) != c.expected_rows}
    if drift:
        cli.info(f"drill: {len(drift)} tables changed in the live database since the backup (expected, not a failure)")
    if args.json:
        report = result.report()
        report.update({"scratch_db": args.scratch_db, "source_live_rows": live, "changed_since_backup": drift})
        cli.emit_json(report)
    bad = mismatches(result.comparisons)
    age_hours = (time.time() - _epoch(result.manifest.finished_at)) / 3600
    # The outcome first, the backup's (long) name last: the verdict line is cut at its end.
    outcome = (f"{len(bad)} tables differ from the backup: {', '.join(c.table for c in bad[:5])}" if bad
               else "every table matches the backup")
    cli.verdict(not bad, f"restore drill: {outcome}{skipped_note(result)}; {len(result.comparisons)} tables, "
                         f"{result.timings['total_seconds']:.1f} s; backup {age_hours:.1f} h old, "
                         f"s3://{result.manifest.bucket}/{result.manifest.key}")
    return cli.EXIT_FAILURE if bad else cli.EXIT_OK


def _epoch(iso_text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    cli.run(main)
