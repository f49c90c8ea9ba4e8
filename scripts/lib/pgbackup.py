"""What the backup, restore and restore-drill commands share: object and manifest names, the
manifest itself, per-table row counts and checksums taken the same way on both sides, finding
the newest complete backup, and the metric names of the textfile collector.

A backup is two objects under `<prefix><database>/`:

* `<UTC timestamp>[-label]-<run token>.dump`: the `pg_dump --format=custom` archive (compressed by pg_dump),
  uploaded as an SSE-KMS multipart upload with a SHA-256 checksum per part;
* `<same>.dump.manifest.json`: written only after the upload was verified. Its presence is
  what makes a backup complete; restores refuse dumps without one. It pins the dump's S3
  version, its size and SHA-256, and the row count (and checksum) of every table in the
  snapshot that was dumped. A manifest counts only for the bucket and dump key it names: one
  that describes another object is refused (a restore downloads what the manifest names).
  When looking for the newest backup, a manifest that cannot be read or does not match its
  location is skipped and reported, so one bad object never stops restores and drills.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg import sql

from scripts.lib.cli import ScriptError
from scripts.lib.textfile import Gauge

DEFAULT_PREFIX = "postgres/"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"

# The textfile collector's metric names are a contract with the alert rules; do not rename.
BACKUP_LAST_SUCCESS = Gauge("psychology_backup_last_success_timestamp_seconds",
                            "Unix time the last successful, verified database backup finished (0: none yet).")
BACKUP_LAST_SIZE = Gauge("psychology_backup_last_size_bytes",
                         "Size in bytes of the last successful database backup object.")
BACKUP_LAST_DURATION = Gauge("psychology_backup_last_duration_seconds",
                             "Wall-clock duration in seconds of the last backup run, successful or not.")
BACKUP_LAST_STATUS = Gauge("psychology_backup_last_status", "1 if the last backup run succeeded, 0 if it failed.")
BACKUP_GAUGES = [BACKUP_LAST_SUCCESS, BACKUP_LAST_SIZE, BACKUP_LAST_DURATION, BACKUP_LAST_STATUS]

DRILL_LAST_RUN = Gauge("psychology_restore_drill_last_run_timestamp_seconds",
                       "Unix time the last restore drill finished, successful or not.")
DRILL_LAST_SUCCESS = Gauge("psychology_restore_drill_last_success_timestamp_seconds",
                           "Unix time of the last restore drill whose restored tables matched the backup (0: none yet).")
DRILL_LAST_STATUS = Gauge("psychology_restore_drill_last_status", "1 if the last restore drill succeeded, 0 if it failed.")
DRILL_GAUGES = [DRILL_LAST_RUN, DRILL_LAST_SUCCESS, DRILL_LAST_STATUS]

# Order-independent checksums of a table's rows: one sequential scan, no sort, no memory growth.
# "h:" sums hash_record_extended over the rows: the types' own hash functions on the stored
# values, independent of output settings (PostgreSQL 14+, every column type hashable). "t:"
# is the fallback: the rows' text form hashed, with the settings that shape it pinned.
CHECKSUM_METHOD = ("per table, h: sum(hash_record_extended(row, 0)); t: sum(hashtextextended(row::text, 0)) "
                   "with DateStyle=ISO,YMD IntervalStyle=postgres TimeZone=UTC extra_float_digits=1 bytea_output=hex")
_DETERMINISTIC_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

# Relations a dump carries data for: ordinary tables (partitions included, partitioned parents
# excluded since they hold no rows of their own), not temporary, not owned by an extension.
_USER_TABLES_SQL = """
select n.nspname, c.relname
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'r' and c.relpersistence <> 't'
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  and not exists (select 1 from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
order by 1, 2
"""

# "Not empty" means any user relation at all: tables, views, sequences, foreign tables.
_USER_RELATIONS_SQL = """
select n.nspname || '.' || c.relname
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and c.relpersistence <> 't'
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  and not exists (select 1 from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
order by 1
"""


@dataclass
class TableStat:
    schema: str
    table: str
    rows: int
    checksum: Optional[str] = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def normalize_prefix(prefix: str) -> str:
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def dump_key(prefix: str, database: str, started: datetime, label: Optional[str] = None, attempt: int = 0,
             unique: Optional[str] = None) -> str:
    """`unique` is a token of the run (scripts/backup.py): two backups started in the same
    second never aim at the same key."""
    name = started.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    if label:
        name += f"-{label}"
    if unique:
        name += f"-{unique}"
    if attempt:
        name += f"-{attempt + 1}"
    return f"{normalize_prefix(prefix)}{database}/{name}{DUMP_SUFFIX}"


def manifest_key(key: str) -> str:
    return key + MANIFEST_SUFFIX


def validate_label(label: Optional[str]) -> Optional[str]:
    if label is not None and not LABEL_PATTERN.match(label):
        raise ScriptError(f"--label {label!r}: use 1-64 letters, digits, '.', '_' or '-'", 2)
    return label


def composite_sha256(part_digests: Sequence[bytes]) -> str:
    """S3's checksum of a multipart object: SHA-256 over the concatenated part digests,
    base64, without the "-<parts>" suffix S3 appends."""
    return base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode()


def strip_part_count(checksum: Optional[str]) -> Optional[str]:
    return checksum.split("-", 1)[0] if checksum else checksum


# --- PostgreSQL side ---------------------------------------------------------------------

def pg_tool(name: str, pg_bin: Optional[str] = None) -> str:
    """Path of a PostgreSQL client program: --pg-bin, then PG_BIN, then PATH."""
    directory = pg_bin or os.environ.get("PG_BIN")
    if directory:
        candidate = Path(directory, name)
        if candidate.exists():
            return str(candidate)
        raise ScriptError(f"{name} not found in {directory}")
    found = shutil.which(name)
    if not found:
        raise ScriptError(f"{name} not found on PATH; install the PostgreSQL client (same major version as the server or newer)")
    return found


def pin_output_settings(conn: psycopg.Connection) -> None:
    for name, value in _DETERMINISTIC_SETTINGS.items():
        conn.execute("select set_config(%s, %s, false)", (name, value))


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(str(s), str(t)) for s, t in conn.execute(_USER_TABLES_SQL).fetchall()]


def user_relations(conn: psycopg.Connection) -> list[str]:
    return [str(row[0]) for row in conn.execute(_USER_RELATIONS_SQL).fetchall()]


def table_stats(conn: psycopg.Connection, tables: Iterable[tuple[str, str]], *, checksums: bool,
                methods: Optional[dict[str, str]] = None) -> list[TableStat]:
    """Rows (and checksums) per table as the connection's snapshot sees them. ONLY: rows of
    inheritance children belong to the child's own entry, as in pg_dump's COPY. `methods`
    (table -> "h" or "t") makes a restore use the method its backup used."""
    pin_output_settings(conn)
    stats = []
    for schema, table in tables:
        relation = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        if not checksums:
            row = conn.execute(sql.SQL("select count(*) from only {}").format(relation)).fetchone()
            stats.append(TableStat(schema, table, int(row[0]) if row else 0))
            continue
        method = (methods or {}).get(f"{schema}.{table}", "h")
        if method == "h":
            try:
                # A savepoint: a type without a hash function must not end the snapshot's transaction.
                with conn.transaction():
                    count, total = conn.execute(sql.SQL(
                        "select count(*), coalesce(sum(hash_record_extended(t, 0)), 0)::text from only {} as t").format(
                        relation)).fetchone() or (0, "0")
                stats.append(TableStat(schema, table, int(count), f"h:{total}"))
                continue
            except psycopg.errors.UndefinedFunction:
                pass
        count, total = conn.execute(sql.SQL(
            "select count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text from only {} as t").format(
            relation)).fetchone() or (0, "0")
        stats.append(TableStat(schema, table, int(count), f"t:{total}"))
    return stats


def checksum_methods(tables: Iterable[TableStat]) -> dict[str, str]:
    return {t.qualified: t.checksum.split(":", 1)[0] for t in tables if t.checksum and ":" in t.checksum}


@dataclass
class TableComparison:
    table: str
    expected_rows: Optional[int]
    actual_rows: Optional[int]
    expected_checksum: Optional[str] = None
    actual_checksum: Optional[str] = None

    @property
    def ok(self) -> bool:
        if self.expected_rows != self.actual_rows:
            return False
        return self.expected_checksum is None or self.expected_checksum == self.actual_checksum


def compare_tables(expected: Sequence[TableStat], actual: Sequence[TableStat]) -> list[TableComparison]:
    """Every table of the backup must be present with the same rows (and checksum when the
    backup recorded one). Tables only in the restored database are listed with no expectation."""
    found = {s.qualified: s for s in actual}
    result = []
    for want in expected:
        got = found.pop(want.qualified, None)
        result.append(TableComparison(want.qualified, want.rows, got.rows if got else None,
                                      want.checksum, (got.checksum if got else None) if want.checksum else None))
    for extra in found.values():
        result.append(TableComparison(extra.qualified, None, extra.rows))
    return result


def mismatches(comparisons: Sequence[TableComparison]) -> list[TableComparison]:
    return [c for c in comparisons if c.expected_rows is not None and not c.ok]


# --- manifests -----------------------------------------------------------------------------

@dataclass
class Manifest:
    bucket: str
    key: str
    version_id: Optional[str]
    database: str
    label: Optional[str]
    server_version: str
    pg_dump_version: str
    size_bytes: int
    sha256: str
    s3_checksum_sha256: str
    parts: int
    part_size_bytes: int
    started_at: str
    finished_at: str
    duration_seconds: float
    snapshot_id: str
    tables: list[TableStat]
    checksum_method: Optional[str]
    toc_entries: int
    verified: list[str]
    kms_key_id: Optional[str] = None
    status: str = "complete"
    manifest_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        doc = asdict(self)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> Manifest:
        try:
            doc = json.loads(text)
            if doc.get("manifest_version") != MANIFEST_VERSION or doc.get("status") != "complete":
                raise ScriptError(f"{source}: not a complete backup manifest (version {doc.get('manifest_version')}, status {doc.get('status')})")
            doc["tables"] = [TableStat(**t) for t in doc["tables"]]
            known = set(cls.__dataclass_fields__)
            manifest = cls(**{k: v for k, v in doc.items() if k in known})
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ScriptError(f"{source}: unreadable backup manifest ({err})") from None
        wrong = [name for name, kind in _FIELD_TYPES.items() if not isinstance(getattr(manifest, name), kind)]
        if wrong or not re.fullmatch(r"[0-9a-f]{64}", manifest.sha256):
            raise ScriptError(f"{source}: unreadable backup manifest (bad {', '.join(wrong) or 'sha256'})")
        return manifest

    def check_location(self, bucket: str, key: str, source: str) -> None:
        """A manifest is evidence only for the dump it sits next to."""
        if (self.bucket, self.key) != (bucket, key):
            raise ScriptError(f"{source} describes s3://{self.bucket}/{self.key}, not s3://{bucket}/{key}: "
                              "refusing it (a manifest counts only for the dump it was written for)")


# What restores rely on; a manifest with anything else there is not one a backup wrote.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "bucket": str, "key": str, "database": str, "size_bytes": int, "sha256": str, "finished_at": str, "tables": list}


@dataclass
class SkippedManifest:
    key: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason}


def read_manifest(s3: Any, bucket: str, key: str) -> Optional[Manifest]:
    """The manifest of dump `key`, or None when the backup never completed. Listed first: a
    GET of a missing key answers 403, not 404, when s3:ListBucket is limited to a prefix."""
    name = manifest_key(key)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=name, MaxKeys=1).get("Contents", [])
    if not any(obj["Key"] == name for obj in listed):
        return None
    try:
        body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    source = f"s3://{bucket}/{name}"
    manifest = Manifest.from_json(body, source)
    manifest.check_location(bucket, key, source)
    return manifest


def list_manifest_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=normalize_prefix(prefix)):
        keys.extend(obj["Key"] for obj in page.get("Contents", []) if obj["Key"].endswith(DUMP_SUFFIX + MANIFEST_SUFFIX))
    return keys


def _listed_manifest(s3: Any, bucket: str, key: str) -> Manifest:
    source = f"s3://{bucket}/{key}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.ClientError as err:
        error = err.response.get("Error", {})
        raise ScriptError(f"{source}: cannot be read ({error.get('Code', 'error')}: {error.get('Message', '')})") from None
    manifest = Manifest.from_json(body, source)
    manifest.check_location(bucket, key.removesuffix(MANIFEST_SUFFIX), source)
    return manifest


def complete_backups(s3: Any, bucket: str, prefix: str) -> tuple[list[Manifest], list[SkippedManifest]]:
    """Every backup under the prefix whose manifest can be read and names it, newest first (by
    the time the backup finished, which the manifest records to the microsecond); and the
    manifests skipped, with the reason."""
    manifests: list[Manifest] = []
    skipped: list[SkippedManifest] = []
    for key in list_manifest_keys(s3, bucket, prefix):
        try:
            manifests.append(_listed_manifest(s3, bucket, key))
        except ScriptError as err:
            skipped.append(SkippedManifest(key, str(err).removeprefix(f"s3://{bucket}/{key}").lstrip(": ")))
    manifests.sort(key=lambda m: (m.finished_at, m.key), reverse=True)
    return manifests, skipped


def latest_complete(s3: Any, bucket: str, prefix: str) -> tuple[Manifest, list[SkippedManifest]]:
    """The newest complete backup, and the manifests skipped on the way (unreadable, or not
    describing the dump next to them)."""
    backups, skipped = complete_backups(s3, bucket, prefix)
    if not backups:
        also = f"; {len(skipped)} manifest(s) skipped: " + "; ".join(f"{s.key}: {s.reason}" for s in skipped[:3]) \
            if skipped else ""
        raise ScriptError(f"no complete backup (dump with a manifest) under s3://{bucket}/{normalize_prefix(prefix)}{also}")
    return backups[0], skipped
