"""Back up a PostgreSQL database to S3: pg_dump's custom format streamed into an SSE-KMS
multipart upload, verified, then marked complete by a manifest.

    python -m scripts.backup --secret-id ARN --db-host HOST --db-name psychology \\
        --bucket BUCKET [--prefix postgres/] [--label pre-release] [--kms-key-id KEY] \\
        [--textfile /var/lib/node_exporter/textfile/psychology_backup.prom] [--json]

How one run goes:

1. A REPEATABLE READ, READ ONLY transaction exports its snapshot; `pg_dump --snapshot` dumps
   exactly that snapshot while the same transaction counts the rows (and, with --checksums,
   checksums them) of every table, so the manifest describes what the archive holds.
2. pg_dump's stdout (a pipe: nothing is written to disk) is read in parts of --part-size-mib.
   Each part is uploaded by a bounded pool of threads with its own SHA-256 (S3 checks it on
   receipt); in order, the whole stream is hashed and fed to `pg_restore --list` (the archive's
   table of contents must parse) and, unless --verify toc, to `pg_restore --file /dev/null`
   (every data block must read and decompress to the end). Memory stays within
   (concurrency + 5) parts.
3. After pg_dump, the verifiers and all part uploads succeeded, the upload is completed and
   S3's own checksum of the object (SHA-256 over the part digests) and its size are compared
   with what was streamed. Only then is `<key>.manifest.json` written: the marker of a
   complete backup, with the dump's version id, size, SHA-256 and table counts.
4. Any failure or interruption (pg_dump error, upload error, SIGTERM, Ctrl-C) aborts the
   multipart upload (or deletes the unverified object) and writes no manifest.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import queue
import resource
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

import psycopg
from botocore.exceptions import ClientError
from psycopg import IsolationLevel

from scripts.lib import aws, cli
from scripts.lib.db import DbTarget, add_target_arguments, connect, target_from_args
from scripts.lib.pgbackup import (
    BACKUP_GAUGES,
    BACKUP_LAST_DURATION,
    BACKUP_LAST_SIZE,
    BACKUP_LAST_STATUS,
    BACKUP_LAST_SUCCESS,
    CHECKSUM_METHOD,
    DEFAULT_PREFIX,
    Manifest,
    TableStat,
    composite_sha256,
    dump_key,
    iso,
    manifest_key,
    normalize_prefix,
    pg_tool,
    strip_part_count,
    table_stats,
    user_tables,
    utc_now,
    validate_label,
)
from scripts.lib.signals import EXIT_TERMINATED, Terminated, sigterm_ignored, sigterm_raises
from scripts.lib.textfile import update_metrics

MIB = 1024 * 1024
S3_MAX_PARTS = 10_000
# Past this many parts the part size is quadrupled, so a 16 MiB base still fits
# 5,000 x 16 MiB + 5,000 x 64 MiB (about 390 GiB) into S3's 10,000-part limit.
PART_GROWTH_AFTER = 5_000
PIPE_SIZE = MIB
READ_CHUNK = MIB
PROGRESS_EVERY_SECONDS = 10.0
_TAIL_BYTES = 16 * 1024


@dataclass
class BackupOptions:
    bucket: str
    prefix: str = DEFAULT_PREFIX
    label: Optional[str] = None
    kms_key_id: Optional[str] = None
    part_size: int = 16 * MIB
    concurrency: int = 4
    checksums: bool = False
    verify_full: bool = True
    compress: Optional[str] = None
    pg_bin: Optional[str] = None


@dataclass
class BackupResult:
    manifest: Manifest
    manifest_key: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mb_per_second(self) -> float:
        return self.manifest.size_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class _Tail:
    """Collects the last bytes of a child's stderr (for one-line error messages)."""

    def __init__(self, stream: IO[bytes]):
        self.data = b""
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for chunk in iter(lambda: stream.read(4096), b""):
            self.data = (self.data + chunk)[-_TAIL_BYTES:]

    def text(self, timeout: float = 5.0) -> str:
        self._thread.join(timeout)
        lines = [line for line in self.data.decode(errors="replace").splitlines() if line.strip()]
        return cli.masker(" | ".join(lines[-3:]))


class _Verifier:
    """A pg_restore reading the stream on its stdin. `--list` stops after the table of contents;
    its closed pipe then just means it has read what it needed."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], capture_stdout: bool):
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env)
        self.stderr = _Tail(self.process.stderr)  # type: ignore[arg-type]
        self.stdout_lines: list[str] = []
        self.open = True
        self._reader: Optional[threading.Thread] = None
        if capture_stdout:
            self._reader = threading.Thread(target=self._read_stdout, daemon=True)
            self._reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_lines.append(line.decode(errors="replace").rstrip("\n"))

    def feed(self, data: memoryview) -> None:
        if not self.open:
            return
        try:
            self.process.stdin.write(data)  # type: ignore[union-attr]
        except BrokenPipeError:
            self.open = False

    def close_input(self) -> None:
        if self.open:
            self.open = False
            try:
                self.process.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

    def finish(self, timeout: float) -> None:
        self.close_input()
        rc = self.process.wait(timeout)
        if self._reader:
            self._reader.join(timeout)
        if rc != 0:
            raise cli.ScriptError(f"verification by {self.name} failed (exit {rc}): {self.stderr.text()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass


class BackupPipeline:
    """One backup run. `on_part(pipeline, part_number)` is called after each part is uploaded
    (tests use it to interrupt a run at a known point)."""

    def __init__(self, target: DbTarget, s3: Any, options: BackupOptions,
                 on_part: Optional[Callable[[BackupPipeline, int], None]] = None):
        self.target = target
        self.s3 = s3
        self.options = options
        self.on_part = on_part
        self.dump_process: Optional[subprocess.Popen[bytes]] = None
        self._upload_id: Optional[str] = None
        self._key: Optional[str] = None
        # Part of the key: two runs started in the same second (the timer and an operator's
        # pre-release backup) never aim at the same object.
        self._run_token = secrets.token_hex(4)
        self._completed_version: Optional[str] = None
        self._completed = False
        self._error: Optional[BaseException] = None
        self._error_lock = threading.Lock()
        self._sink_queue: Optional[queue.Queue[Optional[memoryview]]] = None

    # -- helpers ---------------------------------------------------------------------------

    def _record_error(self, err: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _pg_dump_version(self) -> str:
        out = subprocess.run([pg_tool("pg_dump", self.options.pg_bin), "--version"], capture_output=True, text=True,
                             check=False, timeout=30)
        return out.stdout.strip()

    def _free_key(self, database: str, started: Any) -> str:
        """A key no earlier backup used (two runs in the same second get a counter suffix).
        Listing, not HeadObject: with s3:ListBucket limited to the backups prefix, a HEAD of a
        missing key answers 403 rather than 404."""
        for attempt in range(20):
            key = dump_key(self.options.prefix, database, started, self.options.label, attempt, unique=self._run_token)
            listed = self.s3.list_objects_v2(Bucket=self.options.bucket, Prefix=key, MaxKeys=1)
            if not listed.get("KeyCount") and not listed.get("Contents"):
                return key
        raise cli.ScriptError("could not find a free object key for this backup")

    def _part_size(self, part_number: int) -> int:
        return self.options.part_size * (4 if part_number > PART_GROWTH_AFTER else 1)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> BackupResult:
        opts = self.options
        started = utc_now()
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        conn = connect(self.target, application_name="psychology-api-backup")
        stats_thread: Optional[threading.Thread] = None
        verifiers: list[_Verifier] = []
        pool: Optional[ThreadPoolExecutor] = None
        try:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            snapshot_row = conn.execute("select pg_export_snapshot(), current_setting('server_version')").fetchone()
            assert snapshot_row is not None
            snapshot_id, server_version = str(snapshot_row[0]), str(snapshot_row[1])
            tables = user_tables(conn)
            pg_dump_version = self._pg_dump_version()
            key = self._free_key(self.target.dbname, started)
            self._key = key

            sse: dict[str, Any] = {"ServerSideEncryption": "aws:kms", "BucketKeyEnabled": True}
            if opts.kms_key_id:
                sse["SSEKMSKeyId"] = opts.kms_key_id
            upload = self.s3.create_multipart_upload(
                Bucket=opts.bucket, Key=key, ChecksumAlgorithm="SHA256", ContentType="application/octet-stream",
                Metadata={"database": self.target.dbname, "server-version": server_version,
                          "pg-dump-version": pg_dump_version, "format": "pg_dump-custom",
                          "started-at": iso(started), "label": opts.label or "",
                          "complete-when": f"{key.rsplit('/', 1)[-1]}.manifest.json exists"},
                **sse)
            self._upload_id = upload["UploadId"]
            cli.info(f"backup: {self.target.describe()} (PostgreSQL {server_version}, {len(tables)} tables) "
                     f"-> s3://{opts.bucket}/{key}")

            env = self.target.libpq_env()
            dump_argv = [pg_tool("pg_dump", opts.pg_bin), "--format=custom", f"--snapshot={snapshot_id}", "--no-password"]
            if opts.compress is not None:
                dump_argv.append(f"--compress={opts.compress}")
            self.dump_process = subprocess.Popen(dump_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, env=env)
            dump_stderr = _Tail(self.dump_process.stderr)  # type: ignore[arg-type]
            dump_out = self.dump_process.stdout
            assert dump_out is not None
            try:
                fcntl.fcntl(dump_out.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # a smaller pipe only costs more system calls

            restore = pg_tool("pg_restore", opts.pg_bin)
            verifiers.append(_Verifier("pg_restore --list", [restore, "--list"], env, capture_stdout=True))
            if opts.verify_full:
                verifiers.append(_Verifier("pg_restore (full read)", [restore, "--file=/dev/null"], env, capture_stdout=False))

            stats: list[TableStat] = []

            def count_rows() -> None:
                try:
                    stats.extend(table_stats(conn, tables, checksums=opts.checksums))
                except BaseException as err:  # noqa: BLE001 - handed to the main thread
                    self._record_error(cli.ScriptError(f"counting rows in the snapshot failed: {cli.masker(str(err)).strip()}"))

            stats_thread = threading.Thread(target=count_rows, daemon=True)
            stats_thread.start()

            stream_hash = hashlib.sha256()
            sink_queue: queue.Queue[Optional[memoryview]] = queue.Queue(maxsize=2)
            self._sink_queue = sink_queue

            def sink() -> None:
                """In stream order: the whole-archive hash and the pg_restore verifiers."""
                try:
                    while True:
                        part = sink_queue.get()
                        if part is None:
                            return
                        stream_hash.update(part)
                        for verifier in verifiers:
                            verifier.feed(part)
                except BaseException as err:  # noqa: BLE001 - handed to the main thread
                    self._record_error(err)

            sink_thread = threading.Thread(target=sink, daemon=True)
            sink_thread.start()

            pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="upload")
            upload_slots = threading.BoundedSemaphore(opts.concurrency + 1)
            futures: list[Future[tuple[int, str, bytes]]] = []

            def upload_part(number: int, data: memoryview) -> tuple[int, str, bytes]:
                try:
                    digest = hashlib.sha256(data).digest()
                    response = self.s3.upload_part(Bucket=opts.bucket, Key=key, UploadId=self._upload_id,
                                                   PartNumber=number, Body=_body(data),
                                                   ChecksumSHA256=base64.b64encode(digest).decode())
                    if self.on_part:
                        self.on_part(self, number)
                    return number, str(response["ETag"]), digest
                except BaseException as err:
                    self._record_error(err)
                    raise
                finally:
                    upload_slots.release()

            size = 0
            part_number = 0
            last_progress = t0
            eof = False
            while not eof:
                self._raise_if_failed()
                part_number += 1
                if part_number > S3_MAX_PARTS:
                    raise cli.ScriptError("the dump exceeds S3's 10,000 parts; raise --part-size-mib")
                buffer = bytearray(self._part_size(part_number))
                view = memoryview(buffer)
                filled = 0
                while filled < len(buffer):
                    got = dump_out.readinto(view[filled:filled + READ_CHUNK])  # type: ignore[attr-defined]
                    if not got:
                        eof = True
                        break
                    filled += got
                if filled == 0:
                    break
                size += filled
                part = view[:filled]
                # Both hand-offs block when their consumers lag: backpressure up to pg_dump.
                while not upload_slots.acquire(timeout=1.0):
                    self._raise_if_failed()
                futures.append(pool.submit(upload_part, part_number, part))
                while True:
                    self._raise_if_failed()
                    try:
                        sink_queue.put(part, timeout=1.0)
                        break
                    except queue.Full:
                        continue
                now = time.monotonic()
                if now - last_progress >= PROGRESS_EVERY_SECONDS:
                    last_progress = now
                    cli.info(f"backup: {size / MIB:,.0f} MiB dumped, {size / 1e6 / (now - t0):.1f} MB/s, "
                             f"{sum(f.done() for f in futures)}/{len(futures)} parts uploaded")
            timings["dump_seconds"] = time.monotonic() - t0

            rc = self.dump_process.wait()
            if rc != 0:
                raise cli.ScriptError(f"pg_dump failed (exit {rc}): {dump_stderr.text()}")
            if size == 0:
                raise cli.ScriptError("pg_dump produced no output")
            results = sorted(f.result() for f in futures)
            timings["upload_wait_seconds"] = time.monotonic() - t0 - timings["dump_seconds"]
            sink_queue.put(None)
            self._sink_queue = None
            sink_thread.join()
            self._raise_if_failed()
            for verifier in verifiers:
                verifier.finish(timeout=600)
            toc = verifiers[0].stdout_lines
            self._check_toc(toc, tables)
            stats_thread.join()
            self._raise_if_failed()
            conn.commit()
            timings["verify_seconds"] = time.monotonic() - t0 - timings["dump_seconds"] - timings["upload_wait_seconds"]

            parts = [{"PartNumber": n, "ETag": etag, "ChecksumSHA256": base64.b64encode(d).decode()} for n, etag, d in results]
            # Conditional writes: an object already at the key (another run's) is never replaced.
            with refuse_existing(opts.bucket, key):
                completed = self.s3.complete_multipart_upload(Bucket=opts.bucket, Key=key, UploadId=self._upload_id,
                                                              MultipartUpload={"Parts": parts}, IfNoneMatch="*")
            self._completed = True
            # An unversioned bucket has no versions to pin ("null" on a suspended one).
            version = completed.get("VersionId")
            self._completed_version = version if version and version != "null" else None
            expected_checksum = composite_sha256([d for _, _, d in results])
            head = self._head_completed(key)
            stored_checksum = strip_part_count(head.get("ChecksumSHA256"))
            if int(head["ContentLength"]) != size:
                raise cli.ScriptError(f"S3 holds {head['ContentLength']} bytes, {size} were streamed")
            if stored_checksum != expected_checksum:
                raise cli.ScriptError(f"S3's SHA-256 of the object ({stored_checksum}) differs from the streamed parts' ({expected_checksum})")
            if head.get("ServerSideEncryption") != "aws:kms":
                raise cli.ScriptError(f"the object is not encrypted with KMS (ServerSideEncryption={head.get('ServerSideEncryption')})")

            finished = utc_now()
            manifest = Manifest(
                bucket=opts.bucket, key=key, version_id=self._completed_version, database=self.target.dbname,
                label=opts.label, server_version=server_version, pg_dump_version=pg_dump_version,
                size_bytes=size, sha256=stream_hash.hexdigest(), s3_checksum_sha256=f"{expected_checksum}-{len(parts)}",
                parts=len(parts), part_size_bytes=opts.part_size, started_at=iso(started), finished_at=iso(finished),
                duration_seconds=round(time.monotonic() - t0, 3), snapshot_id=snapshot_id, tables=stats,
                checksum_method=CHECKSUM_METHOD if opts.checksums else None, toc_entries=_toc_entry_count(toc),
                verified=["pg_dump exit 0", "pg_restore --list"] + (["pg_restore full read"] if opts.verify_full else [])
                + ["S3 SHA-256 of every part", "S3 composite SHA-256 and size"],
                kms_key_id=head.get("SSEKMSKeyId"))
            with refuse_existing(opts.bucket, manifest_key(key)):
                self.s3.put_object(Bucket=opts.bucket, Key=manifest_key(key), Body=manifest.to_json().encode(),
                                   ContentType="application/json", ChecksumAlgorithm="SHA256", IfNoneMatch="*", **sse)
            seconds = time.monotonic() - t0
            timings["total_seconds"] = seconds
            return BackupResult(manifest=manifest, manifest_key=manifest_key(key), seconds=seconds, timings=timings)
        except BaseException:
            self._cleanup(verifiers, pool, conn)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=False)
            if self._sink_queue is not None:
                try:
                    self._sink_queue.put(None, timeout=5)
                except queue.Full:
                    pass
            if stats_thread is not None:
                stats_thread.join(10)
            if not conn.closed:
                conn.close()

    def _head_completed(self, key: str) -> dict[str, Any]:
        """HEAD of the version just completed; without s3:GetObjectVersion, of the current
        version (a different object there fails the checksum comparison all the same)."""
        args: dict[str, Any] = {"Bucket": self.options.bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if self._completed_version:
            try:
                return dict(self.s3.head_object(**args, VersionId=self._completed_version))
            except self.s3.exceptions.ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("403", "AccessDenied"):
                    raise
        return dict(self.s3.head_object(**args))

    @staticmethod
    def _check_toc(toc: list[str], tables: list[tuple[str, str]]) -> None:
        data_entries = [line for line in toc if " TABLE DATA " in line]

        def listed(name: str) -> str:
            # pg_restore --list prints each CR and LF in a name as a space (its sanitize_line).
            return name.replace("\n", " ").replace("\r", " ")

        missing = [f"{s}.{t}" for s, t in tables
                   if not any(f" TABLE DATA {listed(s)} {listed(t)} " in line for line in data_entries)]
        if missing:
            raise cli.ScriptError(f"the archive's table of contents lacks data for {', '.join(missing[:5])}")

    def _cleanup(self, verifiers: list[_Verifier], pool: Optional[ThreadPoolExecutor], conn: psycopg.Connection) -> None:
        """Leave nothing that looks like a backup: stop the children, let in-flight part uploads
        end, abort the upload (or delete the completed but unverified object)."""
        # A second SIGTERM while cleaning up must not cut the cleanup short.
        with sigterm_ignored():
            try:
                self._cleanup_steps(verifiers, pool, conn)
            except Exception as err:  # noqa: BLE001 - the original failure matters more
                cli.info(f"backup: cleanup incomplete ({cli.masker(str(err))}); the bucket lifecycle aborts stale uploads after 1 day")

    def _cleanup_steps(self, verifiers: list[_Verifier], pool: Optional[ThreadPoolExecutor], conn: psycopg.Connection) -> None:
        if self.dump_process and self.dump_process.poll() is None:
            self.dump_process.kill()
        for verifier in verifiers:
            verifier.kill()
        try:
            conn.cancel()
        except (psycopg.Error, OSError):
            pass
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bucket, key = self.options.bucket, self._key
        if key and self._completed:
            args: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if self._completed_version:
                args["VersionId"] = self._completed_version
            try:
                self.s3.delete_object(**args)
                cli.info(f"backup: deleted the unverified object s3://{bucket}/{key}")
            except self.s3.exceptions.ClientError:
                # Hosts may write but not delete backups; without a manifest the object is
                # no backup, and the lifecycle rule expires it.
                cli.info(f"backup: left the unverified object s3://{bucket}/{key} without a manifest "
                         "(no delete permission); restores ignore it and the lifecycle rule expires it")
        elif key and self._upload_id:
            # S3 may keep a part whose upload was in flight during the abort; abort until
            # the upload is gone (the bucket lifecycle is the last resort).
            for _ in range(3):
                try:
                    self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=self._upload_id)
                except self.s3.exceptions.NoSuchUpload:
                    break
                try:
                    pending = self.s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
                except self.s3.exceptions.ClientError:
                    break  # cannot look; the abort itself succeeded
                if not any(u["UploadId"] == self._upload_id for u in pending):
                    break
            cli.info(f"backup: aborted the multipart upload of s3://{bucket}/{key}")
        if self.dump_process:
            try:
                self.dump_process.wait(10)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def refuse_existing(bucket: str, key: str) -> Iterator[None]:
    """S3 answers 412 to a conditional write (If-None-Match: *) when the key exists."""
    try:
        yield
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "PreconditionFailed":
            raise
        raise cli.ScriptError(f"s3://{bucket}/{key} already exists (another backup wrote it); "
                              "nothing was overwritten") from None


def _body(view: memoryview) -> bytes | bytearray:
    """A full part is sent from its own buffer; only the short last part is copied."""
    owner = view.obj
    if isinstance(owner, bytearray) and view.nbytes == len(owner):
        return owner
    return view.tobytes()


def _cpu_seconds() -> dict[str, float]:
    """CPU used by this process and by its children (pg_dump and the pg_restore verifiers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": round(own.ru_utime + own.ru_stime, 2), "children": round(children.ru_utime + children.ru_stime, 2)}


def _toc_entry_count(toc: list[str]) -> int:
    return sum(1 for line in toc if line and not line.startswith(";"))


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m scripts.backup",
        description="Stream pg_dump (custom format) into an SSE-KMS multipart upload in S3, verify it, and mark it "
                    "complete with a manifest. Nothing unencrypted is written to disk.")
    add_target_arguments(parser)
    parser.add_argument("--bucket", required=True, help="backups bucket (stack output backup_bucket_name)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix; the dump goes to <prefix><database>/<UTC time>[-label].dump (default %(default)s)")
    parser.add_argument("--label", default=None, help="suffix of the object name, e.g. pre-release-1.4.0")
    parser.add_argument("--kms-key-id", default=None, help="KMS key for SSE-KMS (default: the bucket's default key)")
    parser.add_argument("--textfile", type=Path, default=None,
                        help="write the psychology_backup_* metrics to this node_exporter textfile (atomically, also on failure)")
    parser.add_argument("--part-size-mib", type=int, default=16, help="multipart part size, 5-512 MiB (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="parts uploaded in parallel, 1-10 (default %(default)s)")
    parser.add_argument("--checksums", action=argparse.BooleanOptionalAction, default=True,
                        help="also checksum every table's rows in the dumped snapshot (a second scan of the data; default on)")
    parser.add_argument("--verify", choices=("full", "toc"), default="full",
                        help="full: read and decompress the whole archive with pg_restore while streaming; toc: only its table of contents")
    parser.add_argument("--compress", default=None, help="pg_dump --compress value (default: pg_dump's own)")
    parser.add_argument("--pg-bin", type=cli.existing_dir, default=None,
                        help="directory of pg_dump/pg_restore (default: PG_BIN or PATH)")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None, *, on_part: Optional[Callable[[BackupPipeline, int], None]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 5 <= args.part_size_mib <= 512:
        raise cli.ScriptError("--part-size-mib must be between 5 and 512", 2)
    if not 1 <= args.concurrency <= 10:
        raise cli.ScriptError("--concurrency must be between 1 and 10", 2)
    validate_label(args.label)
    textfile: Optional[Path] = args.textfile
    started = time.time()
    try:
        with sigterm_raises():
            target = target_from_args(args)
            assert target is not None
            s3 = aws.client("s3", region=args.region, endpoint_url=args.endpoint_url)
            options = BackupOptions(bucket=args.bucket, prefix=normalize_prefix(args.prefix), label=args.label,
                                    kms_key_id=args.kms_key_id, part_size=args.part_size_mib * MIB,
                                    concurrency=args.concurrency, checksums=args.checksums,
                                    verify_full=args.verify == "full", compress=args.compress, pg_bin=args.pg_bin)
            result = BackupPipeline(target, s3, options, on_part=on_part).run()
    except BaseException as err:
        update_metrics(textfile, BACKUP_GAUGES, {BACKUP_LAST_STATUS.name: 0, BACKUP_LAST_DURATION.name: round(time.time() - started, 3)},
                       defaults={BACKUP_LAST_SUCCESS.name: 0, BACKUP_LAST_SIZE.name: 0})
        if isinstance(err, Terminated):
            raise cli.ScriptError("terminated by SIGTERM; the upload was aborted, no backup recorded", EXIT_TERMINATED) from None
        if isinstance(err, KeyboardInterrupt):
            raise cli.ScriptError("interrupted; the upload was aborted, no backup recorded", 130) from None
        if isinstance(err, cli.ScriptError):
            raise
        if isinstance(err, Exception):
            raise cli.ScriptError(f"backup failed: {type(err).__name__}: {cli.masker(str(err)).strip().splitlines()[0] if str(err).strip() else ''}") from err
        raise

    manifest = result.manifest
    update_metrics(textfile, BACKUP_GAUGES, {
        BACKUP_LAST_SUCCESS.name: round(time.time(), 3), BACKUP_LAST_SIZE.name: manifest.size_bytes,
        BACKUP_LAST_DURATION.name: round(result.seconds, 3), BACKUP_LAST_STATUS.name: 1})
    rows = sum(t.rows for t in manifest.tables)
    if args.json:
        cli.emit_json({
            "ok": True, "bucket": manifest.bucket, "key": manifest.key, "version_id": manifest.version_id,
            "manifest_key": result.manifest_key, "database": manifest.database, "server_version": manifest.server_version,
            "size_bytes": manifest.size_bytes, "sha256": manifest.sha256, "s3_checksum_sha256": manifest.s3_checksum_sha256,
            "parts": manifest.parts, "duration_seconds": round(result.seconds, 3), "mb_per_second": round(result.mb_per_second, 2),
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
            "cpu_seconds": _cpu_seconds(),
            "tables": [{"table": t.qualified, "rows": t.rows, "checksum": t.checksum} for t in manifest.tables],
            "verified": manifest.verified,
        })
    cli.verdict(True, f"backup s3://{manifest.bucket}/{manifest.key}: {manifest.size_bytes / 1e6:.1f} MB, "
                      f"{len(manifest.tables)} tables, {rows} rows, {result.seconds:.1f} s ({result.mb_per_second:.1f} MB/s), "
                      f"sha256 {manifest.sha256[:16]}...")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
