"""Backup and restore throughput against the floor set by PostgreSQL's own tools, in one run.

    python benchmarks/backup_throughput.py [--size-gb 1] [--json] [--variants]

1. Starts a throw-away PostgreSQL 15 (tests/services.py) and moto's S3 server (in this process,
   so it competes with nothing of the pipeline's for the GIL), builds a database of at least
   --size-gb GiB: a sessions table of realistic-ish rows (text from a word list, timestamps,
   numerics, arrays, a random 32-byte digest) with a primary key and an index, plus a
   smaller clients table. VACUUM sets hint bits so every later reader sees the same pages.
2. Backup floor: `pg_dump -Fc > /dev/null`. Nothing can back up faster than the dump itself.
3. The pipeline: `python -m scripts.backup` as a separate process (snapshot counts and
   checksums, two pg_restore verifiers, SHA-256, concurrent multipart upload to moto).
   With --variants also without table checksums and/or with `--verify toc`.
4. Restore floor: `pg_restore --single-transaction` of the same archive from a local file.
   Then `python -m scripts.restore` (download + SHA-256, pg_restore, ANALYZE, per-table
   counts and checksums), with --jobs 1 and --jobs 2.
5. Every configuration runs once per round (--rounds, interleaved); the best run counts.
   Prints MB/s (10^6 bytes of archive per second) and the ratios floor/pipeline; cleans up.

Timing figures depend on the machine; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.services import PgServer, start_moto, start_postgres, stop_postgres  # noqa: E402

BUCKET = "psychology-backups-bench"
GIB = 1024**3
BATCH_ROWS = 250_000

_WORDS = (
    "сессия клиент тревога сон настроение дыхание упражнение дневник терапевт запись цель неделя прогресс "
    "стресс работа семья отношения границы ресурс благодарность медитация прогулка энергия усталость "
    "session client anxiety sleep mood breathing exercise journal therapist goal week progress stress work "
    "family boundaries resource gratitude meditation walk energy fatigue reflection homework follow-up plan "
    "cognitive behavioural reframing trigger coping strategy relapse support insight motivation"
).split()

SCHEMA_SQL = """
create table clients (
    id int primary key,
    full_name text not null,
    email text not null,
    timezone text not null,
    created_at timestamptz not null,
    preferences jsonb not null
);
create table sessions (
    id bigint primary key,
    client_id int not null,
    therapist_id int not null,
    starts_at timestamptz not null,
    duration_minutes smallint not null,
    status text not null,
    price numeric(10, 2),
    mood_scores smallint[],
    digest bytea not null,
    notes text
);
"""

CLIENTS_SQL = """
insert into clients
select g, 'Client ' || g, 'client' || g || '@example.org',
       (array['Europe/Moscow', 'Europe/Berlin', 'Asia/Almaty', 'Europe/Riga'])[1 + g % 4],
       timestamptz '2023-01-01' + g * interval '7 minutes',
       jsonb_build_object('reminders', g % 2 = 0, 'language', (array['ru', 'en', 'kk'])[1 + g % 3], 'score', g % 100)
from generate_series(1, 200000) g
"""

SESSIONS_SQL = """
insert into sessions
select g, 1 + (random() * 199999)::int, 1 + (random() * 300)::int,
       timestamptz '2023-01-01' + g * interval '13 seconds',
       (array[30, 45, 50, 60, 90])[1 + g %% 5],
       (array['planned', 'done', 'done', 'done', 'cancelled', 'no-show'])[1 + g %% 6],
       case when g %% 9 = 0 then null else round((1500 + random() * 6000)::numeric, 2) end,
       array[(random() * 10)::int, (random() * 10)::int, (random() * 10)::int],
       decode(md5(random()::text || g) || md5(g || random()::text), 'hex'),
       case when g %% 5 = 0 then null else concat_ws(' ', w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], case when g %% 3 = 0 then concat_ws(' ', w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int], w[1 + (random() * 255)::int]) end) end
from generate_series(%(start)s, %(stop)s) g, (select %(words)s::text[] as w) vocabulary
"""


def _pg_env(pg: PgServer, dbname: str) -> dict[str, str]:
    return {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.superuser, "PGPASSWORD": pg.password,
            "PGDATABASE": dbname, "PGSSLMODE": "require"}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_database(pg: PgServer, dbname: str, size_bytes: int) -> int:
    import random

    rng = random.Random(5)  # noqa: S311 - test data, not secrets
    # 256 distinct words, each note a random choice of them: text that compresses like text,
    # not like one repeated string.
    suffixes = ["", "s", "ing", "ed", "а", "ы", "ом", "ами"]
    vocabulary = sorted({w + rng.choice(suffixes) for w in _WORDS for _ in range(12)})
    while len(vocabulary) < 256:
        vocabulary.append(f"{rng.choice(_WORDS)}-{len(vocabulary)}")
    vocabulary = vocabulary[:256]
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(CLIENTS_SQL)
        start = 1
        while True:
            conn.execute(SESSIONS_SQL, {"start": start, "stop": start + BATCH_ROWS - 1, "words": vocabulary})
            start += BATCH_ROWS
            # Leave room for the index built below.
            current = int(conn.execute("select pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
            _say(f"  loaded {start - 1:,} sessions, database {current / GIB:.2f} GiB")
            if current >= size_bytes * 0.85:
                break
        conn.execute("create index sessions_client_starts on sessions (client_id, starts_at)")
        conn.execute("vacuum analyze")
        return int(conn.execute("select pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]


def timed(argv: list[str], env: dict[str, str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    t0 = time.monotonic()
    done = subprocess.run(argv, env=env, check=False, **kwargs)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace")[-2000:] if isinstance(done.stderr, bytes) else ""
        raise SystemExit(f"benchmark step failed: {argv[:3]}... exit {done.returncode}\n{err}")
    return seconds, done


def pg_dump_floor(pg: PgServer, dbname: str) -> float:
    with open(os.devnull, "wb") as sink:
        seconds, _ = timed(["pg_dump", "-Fc"], _pg_env(pg, dbname), stdout=sink, stderr=subprocess.PIPE)
    return seconds


def run_script(module: str, args: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    seconds, done = timed([sys.executable, "-m", module, *args, "--json"], env, cwd=REPO, capture_output=True)
    return seconds, json.loads(done.stdout)


def recreate(pg: PgServer, dbname: str) -> None:
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))


BACKUP_VARIANTS = {
    "no_table_checksums": ["--no-checksums"],
    "toc_only_verify": ["--verify", "toc"],
    "no_checksums_toc_only": ["--no-checksums", "--verify", "toc"],
}


def delete_backup(s3: Any, key: str) -> None:
    """moto keeps every object version in memory; measured runs are dropped once timed."""
    for name in (key, key + ".manifest.json"):
        for version in s3.list_object_versions(Bucket=BUCKET, Prefix=name).get("Versions", []):
            if version["Key"] == name:
                s3.delete_object(Bucket=BUCKET, Key=name, VersionId=version["VersionId"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-gb", type=float, default=1.0, help="database size to build, in GiB (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document with every figure on stdout")
    parser.add_argument("--variants", action="store_true",
                        help="also time the pipeline without table checksums and/or with --verify toc (what each check costs)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="every configuration runs once per round, interleaved; the best run of each counts (default 2)")
    parser.add_argument("--part-size-mib", type=int, default=16, help="--part-size-mib of the pipeline (default 16)")
    parser.add_argument("--concurrency", type=int, default=4, help="--concurrency of the pipeline (default 4)")
    args = parser.parse_args(argv)
    # A stopped benchmark still stops its PostgreSQL and removes its files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log

    pg = start_postgres({"shared_buffers": "'512MB'", "maintenance_work_mem": "'256MB'", "max_wal_size": "'4GB'",
                         "checkpoint_timeout": "'30min'"})
    moto = start_moto()
    spool = Path(tempfile.mkdtemp(prefix="backup-bench-"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "load_average_at_start": round(os.getloadavg()[0], 2)}}
    try:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="eu-central-1")
        kms = boto3.client("kms", endpoint_url=moto.endpoint_url, region_name="eu-central-1")
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [{
            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
            "BucketKeyEnabled": True}]})

        _say(f"building a database of at least {args.size_gb} GiB ...")
        t0 = time.monotonic()
        db_size = build_database(pg, "bench", int(args.size_gb * GIB))
        results["database_bytes"] = db_size
        results["build_seconds"] = round(time.monotonic() - t0, 1)
        _say(f"database: {db_size / GIB:.2f} GiB ({db_size:,} bytes) in {results['build_seconds']} s")

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        common = ["--bucket", BUCKET, "--endpoint-url", moto.endpoint_url]
        pipeline_args = ["--dsn", pg.dsn("bench"), *common, "--kms-key-id", key_arn,
                         "--part-size-mib", str(args.part_size_mib), "--concurrency", str(args.concurrency)]

        # Every configuration runs once per round, interleaved, and its best run counts: a burst
        # of load from elsewhere on the machine then penalises no configuration alone.
        configs = ["floor", "pipeline"] + (list(BACKUP_VARIANTS) if args.variants else [])
        runs: dict[str, list[float]] = {name: [] for name in configs}
        kept: dict[str, Any] = {}
        for round_number in range(1, args.rounds + 1):
            for name in configs:
                if name == "floor":
                    runs[name].append(pg_dump_floor(pg, "bench"))
                    _say(f"round {round_number}: floor pg_dump -Fc > /dev/null {runs[name][-1]:.1f} s")
                    continue
                seconds, report = run_script("scripts.backup", [*pipeline_args, *BACKUP_VARIANTS.get(name, [])], env)
                runs[name].append(seconds)
                _say(f"round {round_number}: {name} {seconds:.1f} s, {report['size_bytes'] / 1e6:.0f} MB, cpu {report['cpu_seconds']}")
                if name == "pipeline" and (not kept or seconds <= min(runs[name])):
                    if kept:
                        delete_backup(s3, kept["key"])
                    kept = report
                else:
                    delete_backup(s3, report["key"])
        floor = min(runs["floor"])
        best = min(runs["pipeline"])
        archive_mb = kept["size_bytes"] / 1e6
        results["backup"] = {
            "archive_bytes": kept["size_bytes"], "parts": kept["parts"],
            "floor_seconds": floor, "floor_mb_per_s": round(archive_mb / floor, 1),
            "floor_db_mb_per_s": round(db_size / 1e6 / floor, 1),
            "pipeline_seconds": best, "pipeline_mb_per_s": round(archive_mb / best, 1),
            "pipeline_db_mb_per_s": round(db_size / 1e6 / best, 1),
            "ratio_pipeline_to_floor": round(floor / best, 3),
            "pipeline_timings": kept["timings"], "pipeline_cpu_seconds": kept["cpu_seconds"],
            "variants": {name: {"seconds": min(runs[name]), "ratio_to_floor": round(floor / min(runs[name]), 3)}
                         for name in BACKUP_VARIANTS if name in runs},
            "runs_seconds": {name: [round(x, 2) for x in values] for name, values in runs.items()},
        }

        # Restore: the floor is pg_restore of the same archive from a local file (no download,
        # no checks); the script downloads and verifies, restores, analyzes and compares.
        local = spool / "archive.dump"
        s3.download_file(BUCKET, kept["key"], str(local))
        restore_runs: dict[str, list[float]] = {"floor": [], "jobs1": [], "jobs2": []}
        restore_timings: dict[str, Any] = {}
        for round_number in range(1, args.rounds + 1):
            for name in restore_runs:
                recreate(pg, "bench_restore")
                if name == "floor":
                    seconds, _ = timed(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                                        "--dbname=bench_restore", str(local)], _pg_env(pg, "bench_restore"), capture_output=True)
                else:
                    seconds, restored = run_script("scripts.restore", [
                        "--dsn", pg.dsn("bench_restore"), *common, "--key", kept["key"], "--jobs", name[-1],
                        "--spool-dir", str(spool)], env)
                    if not restored["ok"]:
                        raise SystemExit(f"restore reported mismatches: {restored['mismatches']}")
                    if seconds <= min(restore_runs[name], default=seconds):
                        restore_timings[name] = restored["timings"]
                restore_runs[name].append(seconds)
                _say(f"round {round_number}: restore {name} {seconds:.1f} s {restore_timings.get(name, '') if name != 'floor' else ''}")
        local.unlink()
        restore_floor = min(restore_runs["floor"])
        results["restore"] = {"floor_seconds": restore_floor, "floor_mb_per_s": round(archive_mb / restore_floor, 1),
                              "runs_seconds": {k: [round(x, 2) for x in v] for k, v in restore_runs.items()}}
        for name in ("jobs1", "jobs2"):
            seconds = min(restore_runs[name])
            results["restore"][name] = {"seconds": seconds, "mb_per_s": round(archive_mb / seconds, 1),
                                        "db_mb_per_s": round(db_size / 1e6 / seconds, 1),
                                        "ratio_to_floor": round(restore_floor / seconds, 3), "timings": restore_timings[name]}
    finally:
        try:
            moto.server.stop()  # type: ignore[attr-defined]
        finally:
            stop_postgres(pg)
            for leftover in spool.glob("*"):
                leftover.unlink()
            spool.rmdir()

    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    b, r = results["backup"], results["restore"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine             {results['machine']['cpus']} CPUs, load average {results['machine']['load_average_at_start']} "
          f"at start, {results['machine']['load_average_at_end']} at end; best of {args.rounds} rounds")
    print(f"database            {results['database_bytes'] / GIB:8.2f} GiB   archive {b['archive_bytes'] / 1e6:,.0f} MB "
          f"({b['parts']} parts)")
    print(f"pg_dump -Fc floor   {b['floor_seconds']:8.1f} s     {b['floor_mb_per_s']:7.1f} MB/s archive, "
          f"{b['floor_db_mb_per_s']:.1f} MB/s of database")
    print(f"backup pipeline     {b['pipeline_seconds']:8.1f} s     {b['pipeline_mb_per_s']:7.1f} MB/s archive, "
          f"{b['pipeline_db_mb_per_s']:.1f} MB/s of database")
    print(f"pipeline/floor      {b['ratio_pipeline_to_floor']:8.3f}       (target >= 0.8)")
    for name, figures in b["variants"].items():
        print(f"  {name:<22}{figures['seconds']:6.1f} s   ratio {figures['ratio_to_floor']:.3f}")
    print(f"pg_restore floor    {r['floor_seconds']:8.1f} s     {r['floor_mb_per_s']:7.1f} MB/s archive")
    for name in ("jobs1", "jobs2"):
        x = r[name]
        print(f"restore --jobs {name[-1]}    {x['seconds']:8.1f} s     {x['mb_per_s']:7.1f} MB/s archive, "
              f"{x['db_mb_per_s']:.1f} MB/s of database, floor/restore {x['ratio_to_floor']:.3f} "
              f"(download+SHA-256 {x['timings']['download_verify_seconds']:.1f} s, pg_restore {x['timings']['pg_restore_seconds']:.1f} s, "
              f"checks {x['timings']['analyze_seconds'] + x['timings']['verify_tables_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
