"""Restore a complete backup (one with a manifest) into a PostgreSQL database.

    python -m scripts.restore --bucket BUCKET --latest --dsn "postgresql://user@host/db" [--force] [--jobs N] [--json]
    python -m scripts.restore --bucket BUCKET --key postgres/psychology/20250101T020000Z.dump --secret-id ARN --db-host H --db-name D

Order of a run, so that nothing touches the target before the backup is proven intact:

1. Find the backup: `--key`, or `--latest` (the newest manifest under --prefix, narrowed by
   --source-db). A dump without a manifest never completed and is refused, and so is a
   manifest that describes another bucket or key. --latest skips (and reports) manifests it
   cannot read or that do not describe the dump next to them.
2. Check the target is empty (no user tables, views or sequences); if not, refuse unless
   --force, which restores with `--clean --if-exists` (objects of the backup are replaced,
   others are left alone).
3. Download the exact S3 version the manifest pins into a spool file (the compressed,
   custom-format archive, mode 0600, on the host's encrypted volume; deleted afterwards),
   hashing it on the way; size and SHA-256 must equal the manifest's. Spool files a killed
   restore left behind are removed first, when no other restore is using the directory (each
   run holds a shared lock on it; the clean-up needs the exclusive one).
4. `pg_restore --no-owner --no-privileges --exit-on-error` (dies with this process, even one
   killed with SIGKILL: the kernel sends it SIGKILL; roles of the source such as RDS's
   rdsadmin or the app user need not exist in the target; everything is owned by the
   restoring user; --keep-roles keeps the dumped owners and grants instead). With --jobs 1
   (default) the restore is one transaction: it applies completely or not at all, --clean
   included. --jobs N restores faster in parallel but a failure can leave a partial restore.
5. ANALYZE, then count (and checksum, when the backup recorded checksums) every table and
   compare with the manifest. Any difference fails the run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from scripts.lib import aws, cli
from scripts.lib.db import DbTarget, add_target_arguments, connect, target_from_args
from scripts.lib.pgbackup import (
    DEFAULT_PREFIX,
    Manifest,
    SkippedManifest,
    TableComparison,
    checksum_methods,
    compare_tables,
    latest_complete,
    mismatches,
    normalize_prefix,
    pg_tool,
    read_manifest,
    table_stats,
    user_relations,
    user_tables,
)
from scripts.lib.signals import EXIT_TERMINATED, Terminated, sigterm_raises

MIB = 1024 * 1024
DOWNLOAD_CHUNK = 8 * MIB
PROGRESS_EVERY_SECONDS = 10.0
SPOOL_PREFIX = "psychology-restore-"
SPOOL_SUFFIX = ".dump"
PR_SET_PDEATHSIG = 1


@dataclass
class RestoreOptions:
    bucket: str
    key: Optional[str] = None
    latest: bool = False
    prefix: str = DEFAULT_PREFIX
    source_db: Optional[str] = None
    force: bool = False
    jobs: int = 1
    spool_dir: Optional[str] = None
    pg_bin: Optional[str] = None
    analyze: bool = True
    keep_roles: bool = False
    # Leave out the archive's extensions (CREATE and COMMENT ON EXTENSION): a restoring login
    # without rds_superuser cannot create e.g. pg_stat_statements. The restore drill's login.
    skip_extensions: bool = False


@dataclass
class RestoreResult:
    manifest: Manifest
    target: str
    comparisons: list[TableComparison]
    timings: dict[str, float] = field(default_factory=dict)
    skipped_manifests: list[SkippedManifest] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not mismatches(self.comparisons)

    def report(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "bucket": self.manifest.bucket, "key": self.manifest.key,
            "version_id": self.manifest.version_id, "database": self.manifest.database,
            "backup_finished_at": self.manifest.finished_at, "size_bytes": self.manifest.size_bytes,
            "sha256": self.manifest.sha256, "sha256_verified": True, "target": self.target,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "tables": [{"table": c.table, "rows": c.actual_rows, "backup_rows": c.expected_rows,
                        "checksum_match": (c.expected_checksum == c.actual_checksum) if c.expected_checksum else None,
                        "ok": c.ok if c.expected_rows is not None else None} for c in self.comparisons],
            "mismatches": [c.table for c in mismatches(self.comparisons)],
            "skipped_manifests": [m.to_json() for m in self.skipped_manifests],
        }


def resolve_backup(s3: Any, options: RestoreOptions) -> tuple[Manifest, list[SkippedManifest]]:
    """The backup to restore, and the manifests --latest skipped on the way (reported)."""
    if options.key:
        manifest = read_manifest(s3, options.bucket, options.key)
        if manifest is None:
            raise cli.ScriptError(f"s3://{options.bucket}/{options.key} has no manifest: the backup never completed "
                                  "(or is not a backup); refusing to restore it")
        return manifest, []
    prefix = normalize_prefix(options.prefix)
    if options.source_db:
        prefix = f"{prefix}{options.source_db}/"
    manifest, skipped = latest_complete(s3, options.bucket, prefix)
    for bad in skipped:
        cli.info(f"restore: skipped s3://{options.bucket}/{bad.key}: {bad.reason}")
    return manifest, skipped


def check_target_empty(target: DbTarget, force: bool) -> list[str]:
    with connect(target, application_name="psychology-api-restore") as conn:
        relations = user_relations(conn)
    if relations and not force:
        shown = ", ".join(relations[:5]) + (f" and {len(relations) - 5} more" if len(relations) > 5 else "")
        raise cli.ScriptError(f"target database {target.dbname} is not empty ({len(relations)} relations: {shown}); "
                              "pass --force to replace the backup's objects in it")
    return relations


def remove_stale_spools(directory: str) -> list[str]:
    """Spool files of restores that were killed (SIGKILL, a crash): only regular files of this
    user with the spool's name. Call it only while holding the directory exclusively."""
    removed = []
    for entry in os.scandir(directory):
        if not (entry.name.startswith(SPOOL_PREFIX) and entry.name.endswith((SPOOL_SUFFIX, SPOOL_SUFFIX + ".toc"))):
            continue
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            os.unlink(entry.path)
            removed.append(entry.name)
    return sorted(removed)


@contextmanager
def spool_directory(spool_dir: Optional[str]) -> Iterator[str]:
    """The directory for this run's spool file, held with a shared lock for the whole run. A
    run that gets the exclusive lock first knows no other restore is using the directory, so
    any spool file there is a killed run's leftover and goes. The kernel drops the locks of a
    process that dies, however it dies."""
    directory = spool_dir or tempfile.gettempdir()
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise cli.ScriptError(f"spool directory {directory}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            cli.info(f"restore: another restore is using {directory}; any leftover spool files there stay for now")
        else:
            removed = remove_stale_spools(directory)
            if removed:
                cli.info(f"restore: removed {len(removed)} spool file(s) a killed restore left in {directory}: "
                         + ", ".join(removed))
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield directory
    finally:
        os.close(fd)


def download_verified(s3: Any, manifest: Manifest, spool_dir: Optional[str]) -> Path:
    """The exact version the manifest names, hashed while spooled; the file is deleted again
    when its size or SHA-256 is not the manifest's."""
    args: dict[str, Any] = {"Bucket": manifest.bucket, "Key": manifest.key}
    try:
        try:
            response = s3.get_object(**args, **({"VersionId": manifest.version_id} if manifest.version_id else {}))
        except s3.exceptions.ClientError as err:
            if not manifest.version_id or err.response.get("Error", {}).get("Code") not in ("403", "AccessDenied"):
                raise
            # Without s3:GetObjectVersion: the current version, held to the same size and SHA-256.
            cli.info("restore: no permission to read object versions; reading the current version instead")
            response = s3.get_object(**args)
    except s3.exceptions.NoSuchKey:
        raise cli.ScriptError(f"s3://{manifest.bucket}/{manifest.key} (version {manifest.version_id}) no longer exists") from None
    except s3.exceptions.ClientError as err:
        raise cli.ScriptError(f"cannot read s3://{manifest.bucket}/{manifest.key}: {err}") from None
    length = int(response.get("ContentLength", -1))
    if length != manifest.size_bytes:
        response["Body"].close()
        raise cli.ScriptError(f"s3://{manifest.bucket}/{manifest.key} holds {length} bytes, the manifest says "
                              f"{manifest.size_bytes}: refusing it (the target was not touched)")
    directory = spool_dir or tempfile.gettempdir()
    free = shutil.disk_usage(directory).free
    if free < manifest.size_bytes * 1.05:
        raise cli.ScriptError(f"{directory} has {free / 1e9:.1f} GB free, the archive needs {manifest.size_bytes / 1e9:.1f} GB; "
                              "use --spool-dir")
    fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=SPOOL_SUFFIX, dir=directory)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    t0 = last = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as spool:
            body = response["Body"]
            for chunk in iter(lambda: body.read(DOWNLOAD_CHUNK), b""):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_SECONDS:
                    last = now
                    cli.info(f"restore: {size / MIB:,.0f}/{manifest.size_bytes / MIB:,.0f} MiB downloaded, "
                             f"{size / 1e6 / (now - t0):.1f} MB/s")
        if size != manifest.size_bytes or digest.hexdigest() != manifest.sha256:
            raise cli.ScriptError(f"s3://{manifest.bucket}/{manifest.key} does not match its manifest "
                                  f"(size {size} vs {manifest.size_bytes}, sha256 {digest.hexdigest()[:16]}... vs "
                                  f"{manifest.sha256[:16]}...): refusing it (the target was not touched)")
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec function: the child gets SIGKILL when this process ends, however it ends, so
    no pg_restore keeps writing into a database after its restore was killed. Set up before
    the fork: between fork and exec the child may only make the system call."""
    prctl = _LIBC.prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the call: nobody would signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def pg_restore_argv(options: RestoreOptions, dbname: str, archive: Path, use_list: Optional[Path] = None) -> list[str]:
    argv = [pg_tool("pg_restore", options.pg_bin), "--exit-on-error", "--no-publications", "--no-subscriptions",
            "--no-security-labels", "--no-tablespaces", "--no-password", f"--dbname={dbname}"]
    if use_list is not None:
        argv.append(f"--use-list={use_list}")
    if not options.keep_roles:
        argv += ["--no-owner", "--no-privileges"]
    if options.force:
        argv += ["--clean", "--if-exists"]
    argv += ["--single-transaction"] if options.jobs == 1 else [f"--jobs={options.jobs}"]
    return argv + [str(archive)]


def toc_without_extensions(options: RestoreOptions, archive: Path) -> Path:
    """The archive's table of contents minus its EXTENSION entries and their comments, next to
    the archive (removed with it)."""
    listed = subprocess.run([pg_tool("pg_restore", options.pg_bin), "--list", str(archive)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        raise cli.ScriptError(f"pg_restore --list failed (exit {listed.returncode}): {cli.masker(listed.stderr.strip())}")
    kept = [line for line in listed.stdout.splitlines()
            if not re.match(r"^\d+; \d+ \d+ (EXTENSION|COMMENT - EXTENSION) ", line)]
    toc = archive.with_name(archive.name + ".toc")
    toc.write_text("\n".join(kept) + "\n")
    return toc


def restore_backup(target: DbTarget, s3: Any, options: RestoreOptions) -> RestoreResult:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    manifest, skipped = resolve_backup(s3, options)
    cli.info(f"restore: s3://{manifest.bucket}/{manifest.key} ({manifest.size_bytes / 1e6:.1f} MB, "
             f"finished {manifest.finished_at}) -> {target.describe()}")
    existing = check_target_empty(target, options.force)
    if existing:
        cli.info(f"restore: --force: replacing the backup's objects in {target.dbname} ({len(existing)} relations present)")

    with spool_directory(options.spool_dir) as directory:
        t = time.monotonic()
        archive = download_verified(s3, manifest, directory)
        timings["download_verify_seconds"] = time.monotonic() - t
        try:
            cli.info(f"restore: SHA-256 verified ({manifest.sha256[:16]}...); running pg_restore")
            t = time.monotonic()
            use_list = toc_without_extensions(options, archive) if options.skip_extensions else None
            completed = subprocess.run(pg_restore_argv(options, target.dbname, archive, use_list), env=target.libpq_env(),
                                       stdin=subprocess.DEVNULL, capture_output=True, check=False,
                                       preexec_fn=die_with_parent(os.getpid()))
            timings["pg_restore_seconds"] = time.monotonic() - t
        finally:
            archive.unlink(missing_ok=True)
            archive.with_name(archive.name + ".toc").unlink(missing_ok=True)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.decode(errors="replace").splitlines() if line.strip()]
        detail = cli.masker(" | ".join(lines[-3:]))
        partial = "" if options.jobs == 1 else " (parallel restore: the target may hold a partial restore)"
        raise cli.ScriptError(f"pg_restore failed (exit {completed.returncode}){partial}: {detail}")

    with connect(target, autocommit=True, application_name="psychology-api-restore") as conn:
        if options.analyze:
            t = time.monotonic()
            conn.execute("analyze")
            timings["analyze_seconds"] = time.monotonic() - t
        t = time.monotonic()
        actual = table_stats(conn, user_tables(conn), checksums=manifest.checksum_method is not None,
                             methods=checksum_methods(manifest.tables))
        timings["verify_tables_seconds"] = time.monotonic() - t
    timings["total_seconds"] = time.monotonic() - t0
    return RestoreResult(manifest=manifest, target=target.describe(), comparisons=compare_tables(manifest.tables, actual),
                         timings=timings, skipped_manifests=skipped)


def print_tables(result: RestoreResult) -> None:
    width = max((len(c.table) for c in result.comparisons), default=10)
    for c in result.comparisons:
        if c.expected_rows is None:
            state = "not in the backup"
        elif c.ok:
            state = "ok" + (" (checksum equal)" if c.expected_checksum else "")
        elif c.actual_rows is None:
            state = "MISSING"
        elif c.expected_rows != c.actual_rows:
            state = f"MISMATCH: backup had {c.expected_rows}"
        else:
            state = "CHECKSUM MISMATCH"
        rows = "-" if c.actual_rows is None else f"{c.actual_rows:,}"
        cli.info(f"  {c.table:<{width}}  {rows:>14} rows  {state}")


def skipped_note(result: RestoreResult) -> str:
    count = len(result.skipped_manifests)
    return f" ({count} manifest(s) skipped as unreadable or misplaced, see above)" if count else ""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m scripts.restore",
        description="Restore a verified backup from S3 into a PostgreSQL database and compare every table with the backup's manifest.")
    parser.add_argument("--bucket", required=True, help="backups bucket (stack output backup_bucket_name)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", default=None, help="object key of the dump (.../<UTC time>[-label].dump)")
    which.add_argument("--latest", action="store_true", help="the newest complete backup under --prefix (and --source-db)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix searched by --latest (default %(default)s)")
    parser.add_argument("--source-db", default=None, help="with --latest: only backups of this database")
    add_target_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="restore into a non-empty database: drop and recreate the backup's objects (--clean --if-exists)")
    parser.add_argument("--keep-roles", action="store_true",
                        help="keep the dumped owners and grants (restoring into the source's own server, e.g. a rollback: the "
                             "roles must exist and the restoring user must be allowed to act as them); default: everything "
                             "is owned by the restoring user, no grants")
    parser.add_argument("--jobs", type=int, default=1,
                        help="pg_restore parallel jobs; 1 (default) restores in one transaction, all or nothing")
    parser.add_argument("--spool-dir", type=cli.existing_dir, default=None,
                        help="directory for the downloaded (compressed, custom-format) archive; default TMPDIR")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false", help="skip ANALYZE after the restore")
    parser.add_argument("--pg-bin", type=cli.existing_dir, default=None,
                        help="directory of pg_restore (default: PG_BIN or PATH)")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.jobs <= 32:
        raise cli.ScriptError("--jobs must be between 1 and 32", 2)
    if args.source_db and not args.latest:
        raise cli.ScriptError("--source-db narrows --latest; with --key it would be ignored", cli.EXIT_USAGE)
    target = target_from_args(args)
    assert target is not None
    s3 = aws.client("s3", region=args.region, endpoint_url=args.endpoint_url)
    options = RestoreOptions(bucket=args.bucket, key=args.key, latest=args.latest, prefix=args.prefix,
                             source_db=args.source_db, force=args.force, jobs=args.jobs, spool_dir=args.spool_dir,
                             pg_bin=args.pg_bin, analyze=args.analyze, keep_roles=args.keep_roles)
    try:
        with sigterm_raises():
            result = restore_backup(target, s3, options)
    except Terminated:
        state = "nothing was applied (one transaction)" if options.jobs == 1 else "the target may hold a partial restore"
        raise cli.ScriptError(f"terminated by SIGTERM; pg_restore stopped, {state}", EXIT_TERMINATED) from None
    print_tables(result)
    if args.json:
        cli.emit_json(result.report())
    rows = sum(c.actual_rows or 0 for c in result.comparisons)
    bad = mismatches(result.comparisons)
    # The outcome first, the backup's (long) name last: the verdict line is cut at its end.
    outcome = (f"{len(bad)} tables differ from the backup: {', '.join(c.table for c in bad[:5])}" if bad
               else "every table matches the backup")
    cli.verdict(not bad, f"restore into {target.dbname}: {outcome}{skipped_note(result)}; "
                         f"{len(result.comparisons)} tables, {rows:,} rows, {result.timings['total_seconds']:.1f} s; "
                         f"from s3://{result.manifest.bucket}/{result.manifest.key}")
    return cli.EXIT_FAILURE if bad else cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
