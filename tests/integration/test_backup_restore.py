"""Backup, restore and restore drill against a real PostgreSQL 15 and S3/KMS on moto's server.

The data set has several schemas and types (identity, uuid, numeric, float specials, arrays,
jsonb, bytea, NULLs, unicode, a quoted table name), a sequence, indexes and a view. "Identical"
is judged by the tests' own fingerprint (md5 of every table's rows in order, sequence values,
view output, index names), not by the scripts' checksums.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from psycopg import sql

from scripts import backup, restore, restore_drill
from scripts.lib import cli
from scripts.lib.pgbackup import MANIFEST_SUFFIX
from tests.services import MotoServer, PgServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "psychology-backups-test"

DATASET_SQL = r"""
-- As on RDS (migration 0003): extension objects are neither user tables nor "not empty".
create extension if not exists pg_stat_statements;
create sequence invoice_number_seq start 1000;
create table clients (
    id bigint generated always as identity primary key,
    full_name text not null,
    email text unique,
    born date,
    balance numeric(12, 2),
    rating double precision,
    active boolean,
    tags text[],
    profile jsonb,
    created_at timestamptz not null default now(),
    note text
);
insert into clients (full_name, email, born, balance, rating, active, tags, profile, created_at, note)
select 'Клиент ' || g || ' ✓ 心理 🙂',
       case when g % 10 = 0 then null else 'client' || g || '@example.org' end,
       date '1960-01-01' + (g * 37 % 20000),
       case when g % 7 = 0 then null else (g * 13.37)::numeric(12, 2) end,
       case when g % 5 = 0 then null when g % 11 = 0 then 'NaN'::float8 when g % 13 = 0 then '-Infinity'::float8
            else g / 3.0::float8 end,
       case when g % 3 = 0 then null else g % 2 = 0 end,
       array['tag' || (g % 5), 'ярлык' || (g % 3)],
       jsonb_build_object('n', g, 'язык', case when g % 2 = 0 then 'ru' else 'en' end, 'nested', jsonb_build_object('k', g * 2)),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '17 minutes',
       case when g % 4 = 0 then null else repeat('заметка ', g % 5) || E'\ttab\nnewline "quote" \\backslash' end
from generate_series(1, 3000) g;

create table sessions (
    id uuid primary key,
    client_id bigint not null references clients (id),
    starts_at timestamp,
    duration interval,
    status text check (status in ('planned', 'done', 'cancelled')),
    invoice bigint not null default nextval('invoice_number_seq'),
    attachment bytea
);
insert into sessions (id, client_id, starts_at, duration, status, attachment)
select md5('s' || g)::uuid, 1 + g % 3000, timestamp '2024-03-01 09:00' + g * interval '1 hour',
       (g % 90) * interval '1 minute', (array['planned', 'done', 'cancelled'])[1 + g % 3],
       case when g % 6 = 0 then null else decode(md5(g::text) || '00ff00', 'hex') end
from generate_series(1, 5000) g;
create index sessions_client_starts on sessions (client_id, starts_at);

create schema billing;
create table billing.payments (
    id serial primary key,
    session_id uuid references sessions (id),
    amount numeric(10, 2),
    paid_at timestamptz,
    raw_payload bytea
);
insert into billing.payments (session_id, amount, paid_at, raw_payload)
select md5('s' || g)::uuid, (g % 500) + 0.99, timestamptz '2024-03-02 10:00+03' + g * interval '90 minutes',
       case when g % 9 = 0 then ''::bytea else convert_to('платёж ' || g, 'UTF8') end
from generate_series(1, 2000) g;

create table "Audit Log" ("When" timestamptz, "What" text);
insert into "Audit Log" select timestamptz '2024-01-01' + g * interval '1 day', 'событие ' || g from generate_series(1, 365) g;
create table empty_table (id int);
-- point and json have no hash functions: this table's checksum takes the text-form fallback.
create table places (id int, location point, raw json);
insert into places select g, point(g / 7.0, -g / 3.0), json_build_object('place', 'место ' || g) from generate_series(1, 300) g;

create view client_session_counts as
    select c.id, c.full_name, count(s.id) as sessions
    from clients c left join sessions s on s.client_id = c.id group by c.id, c.full_name;
"""

# About 40 MB of incompressible bytea (80 MB as COPY text): several 5 MiB parts, and a few
# seconds of pg_dump, long enough to interrupt a run while it streams.
LARGE_SQL = """
create table blobs (id int primary key, payload bytea not null);
insert into blobs
select g, decode(string_agg(md5(random()::text || g || '-' || i), ''), 'hex')
from generate_series(1, 2500) g, generate_series(1, 1000) i group by g;
"""


@dataclass
class Env:
    endpoint: str
    bucket: str
    kms_key_arn: str
    s3: Any


@pytest.fixture
def env(moto: MotoServer) -> Env:
    """A bucket as the stack builds it: versioned, SSE-KMS by default with a bucket key."""
    kms = boto3.client("kms", endpoint_url=moto.endpoint_url)
    key_arn = kms.create_key(Description="backups test key")["KeyMetadata"]["Arn"]
    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True}]})
    return Env(moto.endpoint_url, BUCKET, key_arn, s3)


@pytest.fixture
def make_db(pg_server: PgServer) -> Iterator[Callable[[str], str]]:
    """Creates databases (optionally filled with SQL) and drops them after the test."""
    created: list[str] = []

    def create(fill_sql: str = "") -> str:
        name = f"bk_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        if fill_sql:
            with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
                conn.execute(fill_sql)
        return name

    yield create
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def large_db(pg_server: PgServer) -> Iterator[str]:
    name = f"bk_large_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(LARGE_SQL)
    yield name
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# --- helpers ---------------------------------------------------------------------------------

def fingerprint(dsn: str) -> dict[str, Any]:
    """Everything a restore must reproduce, computed independently of the scripts."""
    with psycopg.connect(dsn) as conn:
        conn.execute("set timezone = 'UTC'")
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE' "
            "and table_schema not in ('pg_catalog', 'information_schema') order by 1, 2").fetchall()
        result: dict[str, Any] = {"tables": {}}
        for schema, table in tables:
            query = sql.SQL("select count(*), md5(coalesce(string_agg(x::text, E'\\n' order by x::text), '')) from {}.{} x").format(
                sql.Identifier(schema), sql.Identifier(table))
            result["tables"][f"{schema}.{table}"] = tuple(conn.execute(query).fetchone() or ())
        result["sequences"] = conn.execute(
            "select schemaname, sequencename, last_value from pg_sequences order by 1, 2").fetchall()
        result["indexes"] = conn.execute(
            "select schemaname, indexname from pg_indexes where schemaname not in ('pg_catalog') order by 1, 2").fetchall()
        result["view"] = conn.execute(
            "select md5(string_agg(v::text, ',' order by v.id)) from client_session_counts v").fetchone() \
            if any(t == ("public", "clients") for t in tables) else None
    return result


def relations(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind in ('r', 'v', 'S', 'p', 'm') and n.nspname not in ('pg_catalog', 'information_schema') "
            "and n.nspname !~ '^pg_toast' order by 1").fetchall()]


def run_json(main: Callable[..., int], argv: list[str], capsys: pytest.CaptureFixture[str], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main([*argv, "--json"], **kwargs)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def backup_args(pg: PgServer, db: str, env: Env, *extra: str) -> list[str]:
    return ["--dsn", pg.dsn(db), "--bucket", env.bucket, "--endpoint-url", env.endpoint, "--kms-key-id", env.kms_key_arn, *extra]


def restore_args(pg: PgServer, db: str, env: Env, *extra: str) -> list[str]:
    return ["--dsn", pg.dsn(db), "--bucket", env.bucket, "--endpoint-url", env.endpoint, *extra]


def all_keys(env: Env) -> list[str]:
    return [o["Key"] for o in env.s3.list_objects_v2(Bucket=env.bucket).get("Contents", [])]


def pending_uploads(env: Env) -> list[dict[str, Any]]:
    return list(env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", []))


def promtool_check(path: Path) -> None:
    checked = subprocess.run(["promtool", "check", "metrics"], input=path.read_bytes(), capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def metrics(path: Path) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in path.read_text().splitlines() if line and not line.startswith("#")}


def rewrite_manifest(env: Env, key: str, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(env.s3.get_object(Bucket=env.bucket, Key=key + MANIFEST_SUFFIX)["Body"].read())
    change(doc)
    env.s3.put_object(Bucket=env.bucket, Key=key + MANIFEST_SUFFIX, Body=json.dumps(doc).encode(),
                      ServerSideEncryption="aws:kms", SSEKMSKeyId=env.kms_key_arn)


# --- tests -----------------------------------------------------------------------------------

def test_round_trip_is_identical(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = make_db(DATASET_SQL)
    textfile = tmp_path / "psychology_backup.prom"
    code, report = run_json(backup.main, backup_args(pg_server, source, env, "--label", "nightly",
                                                     "--textfile", str(textfile)), capsys)
    assert code == 0 and report["ok"]
    key = report["key"]
    # <timestamp>-<label>-<run token>.dump: two runs in the same second never share a key.
    assert re.fullmatch(rf"postgres/{source}/\d{{8}}T\d{{6}}Z-nightly-[0-9a-f]{{8}}\.dump", key), key
    assert {t["table"]: t["rows"] for t in report["tables"]} == {
        "billing.payments": 2000, "public.Audit Log": 365, "public.clients": 3000, "public.empty_table": 0,
        "public.places": 300, "public.sessions": 5000}
    methods = {t["table"]: t["checksum"].split(":")[0] for t in report["tables"]}
    assert methods.pop("public.places") == "t" and set(methods.values()) == {"h"}

    # What S3 holds: encrypted with our key, the declared metadata, the checksum we computed.
    head = env.s3.head_object(Bucket=env.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == env.kms_key_arn
    assert head["Metadata"]["database"] == source and head["Metadata"]["server-version"].startswith("15.")
    assert head["ContentLength"] == report["size_bytes"]
    assert report["s3_checksum_sha256"].startswith(head["ChecksumSHA256"].split("-")[0])
    manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=key + MANIFEST_SUFFIX)["Body"].read())
    assert manifest["status"] == "complete" and manifest["sha256"] == report["sha256"]
    assert manifest["version_id"] == head["VersionId"] and manifest["checksum_method"]
    assert env.s3.head_object(Bucket=env.bucket, Key=key + MANIFEST_SUFFIX)["ServerSideEncryption"] == "aws:kms"
    assert pending_uploads(env) == []

    values = metrics(textfile)
    assert values["psychology_backup_last_status"] == 1
    assert values["psychology_backup_last_size_bytes"] == report["size_bytes"]
    assert abs(values["psychology_backup_last_success_timestamp_seconds"] - time.time()) < 120
    promtool_check(textfile)

    target = make_db()
    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--key", key), capsys)
    assert code == 0 and restored["ok"] and restored["sha256_verified"] and restored["mismatches"] == []
    assert all(t["checksum_match"] for t in restored["tables"])
    assert fingerprint(pg_server.dsn(target)) == fingerprint(pg_server.dsn(source))


def test_names_with_line_breaks_back_up_and_restore(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """pg_restore --list prints a CR or LF in a name as a space; the archive check knows, so such
    a table (legal, if odd) does not stop every backup."""
    schema, table, crlf = "two\nlines", "new\nline", "cr\r\nlf"
    source = make_db(f'''create schema "{schema}";
        create table "{schema}"."{table}" (id int);
        insert into "{schema}"."{table}" select generate_series(1, 10);
        create table "{crlf}" (id int);
        insert into "{crlf}" values (1);''')
    code, report = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    assert code == 0 and report["ok"], report
    assert sorted(t["table"] for t in report["tables"]) == sorted([f"public.{crlf}", f"{schema}.{table}"])
    target = make_db()
    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--key", report["key"]), capsys)
    assert code == 0 and restored["ok"] and restored["mismatches"] == []
    assert fingerprint(pg_server.dsn(target)) == fingerprint(pg_server.dsn(source))


def test_truncated_or_altered_backup_is_refused_before_the_target_is_touched(
        pg_server: PgServer, env: Env, make_db: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    source = make_db(DATASET_SQL)
    _, report = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    key = report["key"]
    original = env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read()
    target = make_db()

    # A newer object version at the key is not what the manifest verified: it is ignored.
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=b"not a dump", ServerSideEncryption="aws:kms")
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0xFF
    for body, reason in ((original[: len(original) // 2], "bytes, the manifest says"), (bytes(altered), "does not match its manifest")):
        version = env.s3.put_object(Bucket=env.bucket, Key=key, Body=body, ServerSideEncryption="aws:kms")["VersionId"]
        # Someone repointed the manifest at the damaged version, keeping its size and SHA-256.
        rewrite_manifest(env, key, lambda doc, v=version: doc.update(version_id=v))
        with pytest.raises(cli.ScriptError, match=reason):
            restore.main(restore_args(pg_server, target, env, "--latest"))
        assert relations(pg_server.dsn(target)) == []

    rewrite_manifest(env, key, lambda doc: doc.update(version_id=report["version_id"]))
    assert restore.main(restore_args(pg_server, target, env, "--latest", "--source-db", source)) == 0
    assert fingerprint(pg_server.dsn(target)) == fingerprint(pg_server.dsn(source))


def test_non_empty_target_needs_force(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = make_db(DATASET_SQL)
    _, report = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    target = make_db(DATASET_SQL + "delete from billing.payments where id > 10; create table unrelated (x int);"
                     "insert into unrelated values (1);")
    before = fingerprint(pg_server.dsn(target))

    with pytest.raises(cli.ScriptError, match="is not empty"):
        restore.main(restore_args(pg_server, target, env, "--key", report["key"]))
    assert fingerprint(pg_server.dsn(target)) == before

    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--key", report["key"], "--force"), capsys)
    assert code == 0 and restored["ok"]
    after = fingerprint(pg_server.dsn(target))
    assert after["tables"].pop("public.unrelated") == before["tables"]["public.unrelated"]
    assert after == fingerprint(pg_server.dsn(source))


def test_parallel_restore(pg_server: PgServer, env: Env, make_db: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    source = make_db(DATASET_SQL)
    _, report = run_json(backup.main, backup_args(pg_server, source, env, "--no-checksums", "--verify", "toc"), capsys)
    target = make_db()
    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--key", report["key"], "--jobs", "2"), capsys)
    assert code == 0 and restored["ok"]
    assert all(t["checksum_match"] is None for t in restored["tables"])
    assert fingerprint(pg_server.dsn(target)) == fingerprint(pg_server.dsn(source))


def _kill_pg_dump(pipeline: backup.BackupPipeline, part: int) -> None:
    if part == 1:
        assert pipeline.dump_process is not None and pipeline.dump_process.poll() is None, "pg_dump already finished"
        pipeline.dump_process.kill()


def _uploader_fails(pipeline: backup.BackupPipeline, part: int) -> None:
    if part == 2:
        raise ConnectionError("injected upload failure")


@pytest.mark.parametrize("mode", ["pg_dump killed", "upload fails", "database unreachable"])
def test_interrupted_backup_leaves_nothing(mode: str, pg_server: PgServer, env: Env, large_db: str, tmp_path: Path) -> None:
    textfile = tmp_path / "backup.prom"
    argv = backup_args(pg_server, large_db, env, "--part-size-mib", "5", "--concurrency", "1", "--textfile", str(textfile))
    hook = {"pg_dump killed": _kill_pg_dump, "upload fails": _uploader_fails}.get(mode)
    if mode == "database unreachable":
        closed_port = str(pg_server.port + 1 if pg_server.port < 65535 else 1)
        argv[1] = argv[1].replace(f":{pg_server.port}/", f":{closed_port}/")
    with pytest.raises(cli.ScriptError, match={"pg_dump killed": "pg_dump failed", "upload fails": "injected upload failure",
                                               "database unreachable": "cannot connect"}[mode]):
        backup.main(argv, on_part=hook)
    assert all_keys(env) == []
    assert pending_uploads(env) == []
    values = metrics(textfile)
    assert values["psychology_backup_last_status"] == 0
    assert values["psychology_backup_last_success_timestamp_seconds"] == 0
    promtool_check(textfile)


def test_sigterm_aborts_the_upload(pg_server: PgServer, env: Env, large_db: str, tmp_path: Path) -> None:
    """systemd stops the unit with SIGTERM: the real process aborts its upload and says so."""
    textfile = tmp_path / "backup.prom"
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.backup", *backup_args(pg_server, large_db, env, "--part-size-mib", "5",
                                                              "--concurrency", "1", "--compress", "9", "--textfile", str(textfile))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        uploads = pending_uploads(env)
        if uploads and env.s3.list_parts(Bucket=env.bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]).get("Parts"):
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr.decode()
    assert "terminated by SIGTERM" in stderr.decode()
    assert pg_server.password not in stderr.decode()
    assert all_keys(env) == [] and pending_uploads(env) == []
    assert metrics(textfile)["psychology_backup_last_status"] == 0


def test_latest_picks_the_newest_complete_backup(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = make_db(DATASET_SQL)
    _, first = run_json(backup.main, backup_args(pg_server, source, env, "--label", "first"), capsys)
    with psycopg.connect(pg_server.dsn(source), autocommit=True) as conn:
        conn.execute("delete from billing.payments where id % 2 = 0")
    _, second = run_json(backup.main, backup_args(pg_server, source, env, "--label", "second"), capsys)
    expected = fingerprint(pg_server.dsn(source))
    with pytest.raises(cli.ScriptError):
        backup.main(backup_args(pg_server, source, env, "--label", "failed", "--part-size-mib", "5"),
                    on_part=lambda pipeline, part: (_ for _ in ()).throw(ConnectionError("injected")))
    # What a SIGKILLed run leaves (no cleanup possible): a pending upload and a dump without manifest.
    stray = f"postgres/{source}/29991231T235959Z-killed.dump"
    env.s3.create_multipart_upload(Bucket=env.bucket, Key=stray.replace("killed", "pending"), ServerSideEncryption="aws:kms")
    env.s3.put_object(Bucket=env.bucket, Key=stray, Body=b"PGDMP partial", ServerSideEncryption="aws:kms")
    assert first["key"] != second["key"]

    target = make_db()
    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--latest"), capsys)
    assert code == 0 and restored["key"] == second["key"]
    assert restored["tables"][0] == {"table": "billing.payments", "rows": 1000, "backup_rows": 1000,
                                     "checksum_match": True, "ok": True}
    assert fingerprint(pg_server.dsn(target)) == expected

    other = make_db()
    with pytest.raises(cli.ScriptError, match="has no manifest"):
        restore.main(restore_args(pg_server, other, env, "--key", stray))
    assert relations(pg_server.dsn(other)) == []


def test_restore_drill_passes_then_fails_on_a_mismatching_backup(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = make_db(DATASET_SQL)
    _, report = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    scratch = f"drill_{uuid.uuid4().hex[:8]}"
    textfile = tmp_path / "psychology_restore_drill.prom"
    drill_args = ["--dsn", pg_server.dsn(source), "--bucket", env.bucket, "--endpoint-url", env.endpoint,
                  "--scratch-db", scratch, "--textfile", str(textfile)]

    code, drilled = run_json(restore_drill.main, drill_args, capsys)
    assert code == 0 and drilled["ok"] and drilled["key"] == report["key"] and drilled["scratch_db"] == scratch
    assert drilled["source_live_rows"]["public.sessions"] == 5000 and drilled["changed_since_backup"] == {}
    first = metrics(textfile)
    assert first["psychology_restore_drill_last_status"] == 1
    assert first["psychology_restore_drill_last_success_timestamp_seconds"] == first["psychology_restore_drill_last_run_timestamp_seconds"]
    promtool_check(textfile)

    # The backup claims rows the archive does not hold: exactly what the drill exists to catch.
    rewrite_manifest(env, report["key"], lambda doc: doc["tables"][2].update(rows=doc["tables"][2]["rows"] + 1))
    time.sleep(0.01)
    code, drilled = run_json(restore_drill.main, drill_args, capsys)
    assert code == 1 and not drilled["ok"] and drilled["mismatches"] == ["public.clients"]
    second = metrics(textfile)
    assert second["psychology_restore_drill_last_status"] == 0
    assert second["psychology_restore_drill_last_success_timestamp_seconds"] == first["psychology_restore_drill_last_success_timestamp_seconds"]
    assert second["psychology_restore_drill_last_run_timestamp_seconds"] > first["psychology_restore_drill_last_run_timestamp_seconds"]
    promtool_check(textfile)
    with psycopg.connect(pg_server.dsn("postgres")) as conn:
        assert conn.execute("select count(*) from pg_database where datname = %s", (scratch,)).fetchone() == (0,)

    with pytest.raises(cli.ScriptError, match="must not be the source database"):
        restore_drill.main([*drill_args[:-4], "--scratch-db", source])


def test_drill_without_any_backup_records_a_failure(pg_server: PgServer, env: Env, make_db: Callable[..., str], tmp_path: Path) -> None:
    source = make_db(DATASET_SQL)
    textfile = tmp_path / "drill.prom"
    with pytest.raises(cli.ScriptError, match="no complete backup"):
        restore_drill.main(["--dsn", pg_server.dsn(source), "--bucket", env.bucket, "--endpoint-url", env.endpoint,
                            "--textfile", str(textfile)])
    values = metrics(textfile)
    assert values["psychology_restore_drill_last_status"] == 0
    assert values["psychology_restore_drill_last_success_timestamp_seconds"] == 0
    promtool_check(textfile)


def test_commands_as_processes_with_secrets_manager_credentials(pg_server: PgServer, env: Env, make_db: Callable[..., str]) -> None:
    """The way the monitoring host runs them: separate processes, credentials from the RDS
    master secret by ARN, the password in no output."""
    source, target = make_db(DATASET_SQL), make_db()
    secret_arn = boto3.client("secretsmanager", endpoint_url=env.endpoint).create_secret(
        Name="rds-master", SecretString=json.dumps({"username": pg_server.superuser, "password": pg_server.password}))["ARN"]
    child_env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["--secret-id", secret_arn, "--db-host", pg_server.host, "--db-port", str(pg_server.port),
              "--bucket", env.bucket, "--endpoint-url", env.endpoint, "--json"]

    made = subprocess.run([sys.executable, "-m", "scripts.backup", *common, "--db-name", source], cwd=REPO,
                          capture_output=True, env=child_env, timeout=300, check=False)
    assert made.returncode == 0, made.stderr.decode()
    report = json.loads(made.stdout)
    assert "PASS: backup" in made.stderr.decode()
    restored = subprocess.run([sys.executable, "-m", "scripts.restore", *common, "--db-name", target, "--latest"], cwd=REPO,
                              capture_output=True, env=child_env, timeout=300, check=False)
    assert restored.returncode == 0, restored.stderr.decode()
    assert json.loads(restored.stdout)["key"] == report["key"]
    for output in (made.stdout, made.stderr, restored.stdout, restored.stderr):
        assert pg_server.password.encode() not in output
    assert fingerprint(pg_server.dsn(target)) == fingerprint(pg_server.dsn(source))

    helped = subprocess.run([sys.executable, "-m", "scripts.restore_drill", "--help"], cwd=REPO, capture_output=True,
                            env=child_env, timeout=60, check=False)
    assert helped.returncode == 0 and b"--scratch-db" in helped.stdout


@pytest.fixture
def app_roles(pg_server: PgServer) -> Iterator[tuple[str, str]]:
    """An owning role and a read-only role, as the application's database has them."""
    owner, reader = f"app_owner_{uuid.uuid4().hex[:6]}", f"app_reader_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        for role in (owner, reader):
            conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
    yield owner, reader
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        for role in (owner, reader):
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def _owners_and_grants(dsn: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "select c.relname, pg_get_userbyid(c.relowner), coalesce(c.relacl::text, '') from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r' order by 1").fetchall()]


def test_rollback_restore_keeps_roles_and_replaces_the_release(app_roles: tuple[str, str], pg_server: PgServer, env: Env,
                                                               make_db: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    """The go-live rollback: the pre-release backup restored over the released database, with
    its owners and grants, in one transaction."""
    owner, reader = app_roles
    prod = make_db(DATASET_SQL + "".join(
        f'alter table {t} owner to {owner}; grant select on {t} to {reader};'
        for t in ("clients", "sessions", '"Audit Log"', "empty_table")))
    before = fingerprint(pg_server.dsn(prod))
    roles_before = _owners_and_grants(pg_server.dsn(prod))
    _, pre_release = run_json(backup.main, backup_args(pg_server, prod, env, "--label", "pre-release-1.4.0"), capsys)

    # The release: a migration and new data.
    with psycopg.connect(pg_server.dsn(prod), autocommit=True) as conn:
        conn.execute("alter table clients add column referral text; update clients set referral = 'x' where id < 100;"
                      "create table release_only (id int); delete from billing.payments where id > 1500")

    code, restored = run_json(restore.main, restore_args(pg_server, prod, env, "--key", pre_release["key"], "--force",
                                                         "--keep-roles"), capsys)
    assert code == 0 and restored["ok"]
    assert {"table": "public.release_only", "rows": 0, "backup_rows": None, "checksum_match": None, "ok": None} in restored["tables"]
    after = fingerprint(pg_server.dsn(prod))
    after["tables"].pop("public.release_only")
    assert after == before
    assert [r for r in _owners_and_grants(pg_server.dsn(prod)) if r[0] != "release_only"] == roles_before

    # Elsewhere (no --keep-roles) everything belongs to the restoring user and carries no grants.
    elsewhere = make_db()
    assert restore.main(restore_args(pg_server, elsewhere, env, "--key", pre_release["key"])) == 0
    assert {(owner_, acl) for _, owner_, acl in _owners_and_grants(pg_server.dsn(elsewhere))} == {(pg_server.superuser, "")}


def test_restore_fails_when_a_table_checksum_differs(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Same row count, different content: only the checksum can tell."""
    source = make_db(DATASET_SQL)
    _, report = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    sessions = next(i for i, t in enumerate(report["tables"]) if t["table"] == "public.sessions")
    rewrite_manifest(env, report["key"], lambda doc: doc["tables"][sessions].update(checksum="h:12345"))
    target = make_db()
    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--latest"), capsys)
    assert code == 1 and not restored["ok"] and restored["mismatches"] == ["public.sessions"]
    row = next(t for t in restored["tables"] if t["table"] == "public.sessions")
    assert row["rows"] == row["backup_rows"] == 5000 and row["checksum_match"] is False


def test_toc_listing_alone_accepts_a_truncated_archive(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Why the backup also reads the whole archive: `pg_restore --list` stops after the table
    of contents and passes a truncated custom archive; the full read does not."""
    source = make_db(DATASET_SQL)
    _, report = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    truncated = env.s3.get_object(Bucket=env.bucket, Key=report["key"])["Body"].read()[:report["size_bytes"] // 2]
    listed = subprocess.run(["pg_restore", "--list"], input=truncated, capture_output=True, check=False)
    assert listed.returncode == 0 and b"TABLE DATA public sessions" in listed.stdout
    full = subprocess.run(["pg_restore", "--file=/dev/null"], input=truncated, capture_output=True, check=False)
    assert full.returncode != 0


def test_sigterm_stops_a_drill_cleanly(pg_server: PgServer, env: Env, large_db: str, tmp_path: Path) -> None:
    """Stopped mid-restore (systemd timeout): pg_restore stops, the scratch database is dropped,
    the spool file is gone and the failure is recorded."""
    assert backup.main(backup_args(pg_server, large_db, env, "--no-checksums")) == 0
    scratch = f"drill_{uuid.uuid4().hex[:8]}"
    textfile = tmp_path / "drill.prom"
    spool = tmp_path / "spool"
    spool.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.restore_drill", "--dsn", pg_server.dsn(large_db), "--bucket", env.bucket,
         "--endpoint-url", env.endpoint, "--scratch-db", scratch, "--spool-dir", str(spool), "--textfile", str(textfile)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        deadline = time.time() + 60
        while time.time() < deadline and process.poll() is None:
            if conn.execute("select 1 from pg_stat_activity where datname = %s and application_name = 'pg_restore'",
                            (scratch,)).fetchone():
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 143, stderr.decode()
        assert conn.execute("select count(*) from pg_database where datname = %s", (scratch,)).fetchone() == (0,)
    assert list(spool.iterdir()) == []
    values = metrics(textfile)
    assert values["psychology_restore_drill_last_status"] == 0 and values["psychology_restore_drill_last_success_timestamp_seconds"] == 0


def test_a_second_drill_into_the_same_scratch_database_leaves_the_first_alone(pg_server: PgServer, env: Env,
                                                                              large_db: str, tmp_path: Path) -> None:
    """Two drills at once (the timer and an operator), as the host's drill login with its
    CONNECTION LIMIT 2 (migration 0005): the second refuses at once, without dropping the first
    one's scratch database mid-restore and without recording anything."""
    assert backup.main(backup_args(pg_server, large_db, env, "--no-checksums")) == 0
    login, password = f"drill_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login createdb connection limit 2 password {}").format(
            sql.Identifier(login), sql.Literal(password)))
    scratch = f"drill_{uuid.uuid4().hex[:8]}"
    textfile = tmp_path / "drill.prom"
    args = ["--dsn", pg_server.dsn(large_db, user=login, password=password), "--bucket", env.bucket,
            "--endpoint-url", env.endpoint, "--scratch-db", scratch, "--textfile", str(textfile), "--no-source-counts"]
    first = subprocess.Popen([sys.executable, "-m", "scripts.restore_drill", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        deadline = time.time() + 60
        while time.time() < deadline and first.poll() is None and not conn.execute(
                "select 1 from pg_stat_activity where datname = %s and application_name = 'pg_restore'", (scratch,)).fetchone():
            time.sleep(0.02)
    assert first.poll() is None, "the first drill ended before its restore could be seen"
    with pytest.raises(restore_drill.DrillInProgress,
                       match=rf"^another restore drill is running \(it holds every connection of the login {login}\); "
                             "this one changed nothing and recorded nothing$"):
        restore_drill.main(args)
    # The lock alone (a login with connections to spare) gives the same answer.
    with pytest.raises(restore_drill.DrillInProgress,
                       match=f"^another restore drill into scratch database {scratch} is running; this one changed nothing"):
        restore_drill.main(["--dsn", pg_server.dsn(large_db), *args[2:]])
    assert not textfile.exists()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr.decode()
    assert metrics(textfile)["psychology_restore_drill_last_status"] == 1
    # The lock went with the first drill's session: the next drill runs.
    assert restore_drill.main(args) == 0


# --- bad manifests, killed restores (issue 9, item 9) --------------------------------------------

def put_object(env: Env, key: str, body: bytes) -> None:
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=env.kms_key_arn)


def test_an_unreadable_manifest_is_skipped_and_reported(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = make_db(DATASET_SQL)
    _, good = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    # Newer than the good one, so --latest looks at it first.
    corrupt = f"postgres/{source}/29991231T235959Z.dump"
    put_object(env, corrupt, b"PGDMP whatever")
    put_object(env, corrupt + MANIFEST_SUFFIX, b'{"manifest_version": 1, "status": "comp')
    wrong_types = f"postgres/{source}/29991231T235958Z.dump"
    rewrite = json.loads(env.s3.get_object(Bucket=env.bucket, Key=good["key"] + MANIFEST_SUFFIX)["Body"].read())
    put_object(env, wrong_types + MANIFEST_SUFFIX, json.dumps({**rewrite, "key": wrong_types, "size_bytes": "big"}).encode())

    code, restored = run_json(restore.main, restore_args(pg_server, make_db(), env, "--latest"), capsys)
    assert code == 0 and restored["ok"] and restored["key"] == good["key"]
    skipped = {s["key"]: s["reason"] for s in restored["skipped_manifests"]}
    assert set(skipped) == {corrupt + MANIFEST_SUFFIX, wrong_types + MANIFEST_SUFFIX}
    assert skipped[corrupt + MANIFEST_SUFFIX].startswith("unreadable backup manifest")
    assert skipped[wrong_types + MANIFEST_SUFFIX] == "unreadable backup manifest (bad size_bytes)"

    scratch = f"drill_{uuid.uuid4().hex[:8]}"
    drill_args = ["--dsn", pg_server.dsn(source), "--bucket", env.bucket, "--endpoint-url", env.endpoint, "--scratch-db", scratch]
    code, drilled = run_json(restore_drill.main, drill_args, capsys)
    assert code == 0 and drilled["ok"] and drilled["key"] == good["key"]
    assert {s["key"]: s["reason"] for s in drilled["skipped_manifests"]} == skipped
    capsys.readouterr()
    assert restore_drill.main(drill_args) == 0
    err = capsys.readouterr().err
    assert f"drill: skipped s3://{env.bucket}/{corrupt}{MANIFEST_SUFFIX}: unreadable backup manifest" in err
    assert "(2 manifest(s) skipped as unreadable or misplaced, see above)" in err.strip().splitlines()[-1]


def test_a_manifest_counts_only_for_the_dump_it_names(pg_server: PgServer, env: Env, make_db: Callable[..., str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source = make_db(DATASET_SQL)
    _, good = run_json(backup.main, backup_args(pg_server, source, env), capsys)
    # The good manifest copied next to another (newer) dump: it would restore the good dump under that name.
    elsewhere = f"postgres/{source}/29991231T235959Z-copied.dump"
    put_object(env, elsewhere, b"PGDMP not this one")
    env.s3.copy_object(Bucket=env.bucket, Key=elsewhere + MANIFEST_SUFFIX,
                       CopySource={"Bucket": env.bucket, "Key": good["key"] + MANIFEST_SUFFIX},
                       ServerSideEncryption="aws:kms", SSEKMSKeyId=env.kms_key_arn)

    target = make_db()
    with pytest.raises(cli.ScriptError, match=rf"describes s3://{env.bucket}/{good['key']}, not s3://{env.bucket}/{elsewhere}"):
        restore.main(restore_args(pg_server, target, env, "--key", elsewhere))
    assert relations(pg_server.dsn(target)) == []
    code, restored = run_json(restore.main, restore_args(pg_server, target, env, "--latest"), capsys)
    assert code == 0 and restored["key"] == good["key"]
    assert [s["key"] for s in restored["skipped_manifests"]] == [elsewhere + MANIFEST_SUFFIX]

    # A manifest naming another bucket is refused for its own key too: the download would go there.
    rewrite_manifest(env, good["key"], lambda doc: doc.update(bucket="someone-elses-bucket"))
    with pytest.raises(cli.ScriptError, match="describes s3://someone-elses-bucket/"):
        restore.main(restore_args(pg_server, make_db(), env, "--key", good["key"]))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it was re-parented when its parent died)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_kill_9_of_a_restore_takes_pg_restore_along_and_the_next_run_removes_its_spool(
        pg_server: PgServer, env: Env, large_db: str, make_db: Callable[..., str], tmp_path: Path) -> None:
    assert backup.main(backup_args(pg_server, large_db, env, "--no-checksums")) == 0
    target = make_db()
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "unrelated.dump").write_text("not ours")  # other files in the directory stay
    command = [sys.executable, "-m", "scripts.restore", *restore_args(pg_server, target, env, "--latest"),
               "--spool-dir", str(spool)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        running = "select count(*) from pg_stat_activity where datname = %s and application_name = 'pg_restore'"
        deadline = time.time() + 60
        while time.time() < deadline and process.poll() is None and conn.execute(running, (target,)).fetchone() == (0,):
            time.sleep(0.02)
        children = _children(process.pid)
        assert process.poll() is None and len(children) == 1, "pg_restore did not start"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        deadline = time.time() + 120
        while time.time() < deadline and not (_dead(children[0]) and conn.execute(running, (target,)).fetchone() == (0,)):
            time.sleep(0.05)
        assert _dead(children[0])
    # pg_restore died mid-restore: its one transaction never committed.
    assert relations(pg_server.dsn(target)) == []
    leftovers = sorted(p.name for p in spool.iterdir())
    assert len(leftovers) == 2 and [n for n in leftovers if n.startswith("psychology-restore-")]

    again = subprocess.run(command, cwd=REPO, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr.decode()
    assert b"removed 1 spool file(s) a killed restore left" in again.stderr
    assert [p.name for p in spool.iterdir()] == ["unrelated.dump"]
