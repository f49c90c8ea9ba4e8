"""The pure parts of the backup layer: object names, S3's composite checksum, manifests,
table comparison and the textfile writer (the integration tests run the real pipeline)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scripts.lib import cli
from scripts.lib.pgbackup import (
    BACKUP_GAUGES,
    DRILL_GAUGES,
    Manifest,
    TableStat,
    compare_tables,
    composite_sha256,
    dump_key,
    manifest_key,
    mismatches,
    normalize_prefix,
    strip_part_count,
    validate_label,
)
from scripts.lib.textfile import read_values, update_metrics


def test_keys_sort_by_time_and_carry_the_label() -> None:
    moment = datetime(2025, 3, 1, 23, 0, 5, tzinfo=UTC)
    assert dump_key("postgres/", "psychology", moment) == "postgres/psychology/20250301T230005Z.dump"
    assert dump_key("postgres", "psychology", moment, "pre-release-1.4.0", attempt=1) == \
        "postgres/psychology/20250301T230005Z-pre-release-1.4.0-2.dump"
    assert manifest_key("postgres/p/x.dump") == "postgres/p/x.dump.manifest.json"
    assert normalize_prefix("/backups") == "backups/"


@pytest.mark.parametrize("label", ["", "a b", "../x", "x" * 65, "ярлык"])
def test_labels_that_would_break_keys_are_refused(label: str) -> None:
    with pytest.raises(cli.ScriptError) as err:
        validate_label(label)
    assert err.value.exit_code == 2


def test_composite_checksum_is_what_s3_computes() -> None:
    parts = [b"a" * 10, b"b" * 3]
    digests = [hashlib.sha256(p).digest() for p in parts]
    expected = base64.b64encode(hashlib.sha256(digests[0] + digests[1]).digest()).decode()
    assert composite_sha256(digests) == expected
    assert strip_part_count(expected + "-2") == expected


def _manifest(**changes: object) -> Manifest:
    values: dict[str, object] = dict(
        bucket="b", key="postgres/db/x.dump", version_id="v1", database="db", label=None, server_version="16.4",
        pg_dump_version="pg_dump (PostgreSQL) 16.4", size_bytes=10, sha256="00" * 32, s3_checksum_sha256="x-1", parts=1,
        part_size_bytes=16 << 20, started_at="2025-01-01T02:00:00.000000Z", finished_at="2025-01-01T02:01:00.000000Z",
        duration_seconds=60.0, snapshot_id="00000003-1", tables=[TableStat("public", "t", 5, "42")],
        checksum_method="m", toc_entries=3, verified=["x"])
    values.update(changes)
    return Manifest(**values)  # type: ignore[arg-type]


def test_manifest_round_trip_and_refusals() -> None:
    manifest = _manifest()
    assert Manifest.from_json(manifest.to_json(), "s") == manifest
    with pytest.raises(cli.ScriptError, match="not a complete backup manifest"):
        Manifest.from_json(_manifest(status="started").to_json(), "s")
    with pytest.raises(cli.ScriptError, match="unreadable"):
        Manifest.from_json(b"{not json", "s")


def test_comparison_flags_rows_checksums_and_missing_tables() -> None:
    expected = [TableStat("public", "a", 1, "1"), TableStat("public", "b", 2, "2"), TableStat("public", "c", 3, None),
                TableStat("public", "d", 4, "4")]
    actual = [TableStat("public", "a", 1, "1"), TableStat("public", "b", 2, "9"), TableStat("public", "c", 3, "7"),
              TableStat("public", "extra", 8, None)]
    result = compare_tables(expected, actual)
    assert [c.table for c in mismatches(result)] == ["public.b", "public.d"]
    assert result[-1].table == "public.extra" and result[-1].expected_rows is None


@pytest.mark.tools
def test_textfile_keeps_the_last_success_when_a_run_fails(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "psychology_backup.prom"
    update_metrics(path, BACKUP_GAUGES, {"psychology_backup_last_status": 0, "psychology_backup_last_duration_seconds": 3.5},
                   defaults={"psychology_backup_last_success_timestamp_seconds": 0, "psychology_backup_last_size_bytes": 0})
    assert read_values(path) == {"psychology_backup_last_success_timestamp_seconds": 0, "psychology_backup_last_size_bytes": 0,
                                 "psychology_backup_last_duration_seconds": 3.5, "psychology_backup_last_status": 0}
    update_metrics(path, BACKUP_GAUGES, {"psychology_backup_last_success_timestamp_seconds": 1700000000.25,
                                         "psychology_backup_last_size_bytes": 123, "psychology_backup_last_duration_seconds": 9,
                                         "psychology_backup_last_status": 1})
    update_metrics(path, BACKUP_GAUGES, {"psychology_backup_last_status": 0, "psychology_backup_last_duration_seconds": 1})
    values = read_values(path)
    assert values["psychology_backup_last_success_timestamp_seconds"] == 1700000000.25
    assert values["psychology_backup_last_size_bytes"] == 123 and values["psychology_backup_last_status"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["psychology_backup.prom"]  # no temp files left
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    checked = subprocess.run(["promtool", "check", "metrics"], input=path.read_bytes(), capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metric_names_are_the_contract() -> None:
    assert [g.name for g in BACKUP_GAUGES] == [
        "psychology_backup_last_success_timestamp_seconds", "psychology_backup_last_size_bytes",
        "psychology_backup_last_duration_seconds", "psychology_backup_last_status"]
    assert [g.name for g in DRILL_GAUGES] == [
        "psychology_restore_drill_last_run_timestamp_seconds", "psychology_restore_drill_last_success_timestamp_seconds",
        "psychology_restore_drill_last_status"]


def test_stale_spools_go_only_when_no_other_restore_uses_the_directory(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A killed restore's spool file is removed at the next start; a running restore's (it holds
    the directory's shared lock) is not, nor anything that is not a spool file of this user."""
    import fcntl
    import os

    from scripts.restore import spool_directory

    stale = tmp_path / "psychology-restore-abc123.dump"
    stale.write_bytes(b"PGDMP left by a killed run")
    (tmp_path / "psychology-restore-dir.dump").mkdir()
    (tmp_path / "psychology-restore-link.dump").symlink_to(tmp_path / "target.txt")
    (tmp_path / "target.txt").write_text("kept")
    (tmp_path / "notes.dump").write_text("kept")
    keep = {"psychology-restore-dir.dump", "psychology-restore-link.dump", "target.txt", "notes.dump"}

    running = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # another restore, still running
    fcntl.flock(running, fcntl.LOCK_SH)
    try:
        with spool_directory(str(tmp_path)) as directory:
            assert directory == str(tmp_path)
        assert stale.exists()
        assert "another restore is using" in capsys.readouterr().err
    finally:
        os.close(running)

    with spool_directory(str(tmp_path)):
        assert {p.name for p in tmp_path.iterdir()} == keep
    assert "removed 1 spool file(s) a killed restore left" in capsys.readouterr().err


def test_a_missing_spool_directory_is_one_line(tmp_path: Path) -> None:
    from scripts.restore import spool_directory

    with pytest.raises(cli.ScriptError, match=r"^spool directory .*/absent: No such file or directory$"):
        with spool_directory(str(tmp_path / "absent")):
            pass
