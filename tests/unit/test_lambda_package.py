"""The functions' deployment package: contents, pins, determinism, and that it imports on its own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from components.lambda_package import (
    LAMBDA_REQUIREMENTS,
    build_lambda_package,
    dependency_closure,
    requirement_pins,
)
from harness.mock_engine import Plan, run_program

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def names() -> list[str]:
    with zipfile.ZipFile(build_lambda_package().path) as archive:
        return archive.namelist()


def test_contains_the_code_the_migrations_and_the_lambda_wheels(names: list[str]) -> None:
    for expected in ("scripts/__init__.py", "scripts/dbops/handlers.py", "scripts/dbops/rotation.py",
                     "scripts/lib/db.py", "scripts/lib/cli.py", "migrations/0001_bootstrap_roles.sql",
                     "boto3/__init__.py", "redis/__init__.py", "tenacity/__init__.py"):
        assert expected in names
    # The CLIs' console libraries are not the functions' business.
    assert not [n for n in names if n.split("/", 1)[0] in ("rich", "pygments", "markdown_it", "mdurl", "typer")]
    binaries = [n for n in names if n.startswith("psycopg_binary/") and n.endswith(".so")]
    assert binaries and all("cpython-312-x86_64-linux-gnu" in n for n in binaries)
    assert any(n.startswith("psycopg_binary.libs/libpq") for n in names)  # no libpq needed on Lambda
    assert not [n for n in names if n.startswith("bin/") or "__pycache__" in n or n.endswith((".pyc", "/RECORD"))]
    assert not [n for n in names if n.startswith(("tests/", "components/", "infra/"))]
    assert names == sorted(names)


def test_versions_are_the_pinned_ones() -> None:
    pins = requirement_pins()
    closure = dict(pin.split("==") for pin in dependency_closure())
    for name in LAMBDA_REQUIREMENTS:
        assert closure[name] == str(pins[name].specifier).removeprefix("==")
    assert closure["psycopg-binary"] == closure["psycopg"]
    assert "botocore" in closure and "async-timeout" not in closure  # markers evaluated for python 3.12


def test_fixed_timestamps_and_modes() -> None:
    with zipfile.ZipFile(build_lambda_package().path) as archive:
        infos = archive.infolist()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_cached_build_is_stable_and_follows_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_lambda_package()
    assert build_lambda_package() == first
    # Same sources, rebuilt from scratch on the same machine (the dependencies stay cached):
    # the same bytes, so the same code hash for Lambda.
    first.path.unlink()
    rebuilt = build_lambda_package()
    assert rebuilt.zip_sha256 == first.zip_sha256 and rebuilt.code_sha256 == first.code_sha256
    assert rebuilt.content_sha256 == first.content_sha256
    # A changed migration makes a different package (and so re-runs the migrations step).
    import components.lambda_package as lp

    scratch = tmp_path / "root"
    for entry in ("scripts/__init__.py", "scripts/lib", "scripts/dbops", "migrations"):
        source = ROOT / entry
        target = scratch / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            import shutil

            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.write_bytes(source.read_bytes())
    (scratch / "migrations" / "0100_new.sql").write_text("SELECT 1;\n")
    monkeypatch.setattr(lp, "ROOT", scratch)
    changed = lp.build_lambda_package()
    assert changed.content_sha256 != first.content_sha256 and changed.zip_sha256 != first.zip_sha256
    with zipfile.ZipFile(changed.path) as archive:
        assert "migrations/0100_new.sql" in archive.namelist()


def test_handlers_import_from_the_package_alone(tmp_path: Path) -> None:
    """Only the standard library and the zip: every packaged module imports, and rich (the CLIs'
    console) is neither packaged nor imported.
    (The binary wheels are for 3.12; here psycopg falls back to its pure-Python libpq binding.)"""
    with zipfile.ZipFile(build_lambda_package().path) as archive:
        archive.extractall(tmp_path)
    code = ("import sys, importlib, pathlib; sys.path.insert(0, sys.argv[1]); "
            "[importlib.import_module('.'.join(p.relative_to(sys.argv[1]).with_suffix('').parts)) "
            " for p in sorted(pathlib.Path(sys.argv[1], 'scripts').rglob('*.py')) if p.name != '__main__.py']; "
            "assert 'rich' not in sys.modules, 'a packaged module imports rich'; "
            "import scripts.dbops.handlers as h, scripts.dbops.migrations as m; "
            "print(len(m.load_migrations()), h.migrate_handler.__name__, h.health_handler.__name__, h.rotation_handler.__name__)")
    env = {"PATH": os.environ.get("PATH", ""), "PSYCOPG_IMPL": "python"}
    result = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:] == ["migrate_handler", "health_handler", "rotation_handler"]
    assert int(result.stdout.split()[0]) >= 3


def test_the_release_trigger_follows_the_contents_not_the_compression(monkeypatch: pytest.MonkeyPatch, staging: Plan) -> None:
    """Another machine's deflate (zlib-ng) writes other bytes for the same files, as another
    compression level does here: the release steps must not run again for that, while Lambda's
    code hash must still be the digest of the bytes uploaded."""
    import components.lambda_package as lp

    default = build_lambda_package()
    monkeypatch.setattr(lp, "ZIP_COMPRESSLEVEL", 1)
    fast = lp.build_lambda_package()
    try:
        assert fast.path != default.path and fast.size != default.size
        assert fast.zip_sha256 != default.zip_sha256 and fast.code_sha256 != default.code_sha256
        assert fast.zip_sha256 == hashlib.sha256(fast.path.read_bytes()).hexdigest()
        assert fast.content_sha256 == default.content_sha256
        with zipfile.ZipFile(default.path) as a, zipfile.ZipFile(fast.path) as b:  # the same files, byte for byte
            assert [(i.filename, i.CRC, i.file_size) for i in a.infolist()] == [
                (i.filename, i.CRC, i.file_size) for i in b.infolist()]

        # The whole program built on this machine's other bytes: the same release triggers.
        plan = run_program("staging")
        for step in ("release-migrations", "release-smoke-wait-healthy", "release-smoke-smoke"):
            assert plan.named(step).inputs["triggers"] == staging.named(step).inputs["triggers"]
        assert plan.named("release-migrations").inputs["triggers"] == [default.content_sha256]
        for function in ("dbops-migrate", "dbops-rotate-redis"):
            assert plan.named(function).inputs["codeSha256"] == fast.code_sha256
            assert staging.named(function).inputs["codeSha256"] == default.code_sha256
    finally:
        fast.path.unlink(missing_ok=True)


def test_the_rds_ca_bundle_travels_in_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The functions verify the database against the bundle in scripts/lib/certs/, inside their
    package: nothing is downloaded at run time."""
    import shutil

    import components.lambda_package as lp

    scratch = tmp_path / "root"
    for entry in ("scripts/__init__.py", "scripts/lib", "scripts/dbops", "migrations"):
        source, target = ROOT / entry, scratch / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.write_bytes(source.read_bytes())
    bundle = scratch / "scripts" / "lib" / "certs" / "rds-global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\ninvented test content\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(lp, "ROOT", scratch)
    package = lp.build_lambda_package()
    try:
        with zipfile.ZipFile(package.path) as archive:
            archive.extractall(tmp_path / "unpacked")
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from scripts.lib import rds_ca; "
                "print(rds_ca.RDS_CA_BUNDLE.relative_to(sys.argv[1]), rds_ca.bundle_sha256())")
        result = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "unpacked")], capture_output=True,
                                text=True, env={"PATH": os.environ.get("PATH", "")}, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["scripts/lib/certs/rds-global-bundle.pem",
                                         hashlib.sha256(bundle.read_bytes()).hexdigest()]
    finally:
        package.path.unlink(missing_ok=True)
