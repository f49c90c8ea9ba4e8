"""The deployment package of the database-operations functions, built by the program itself.

The zip holds `scripts/dbops`, `scripts/lib`, `scripts/__init__.py`, `migrations/` and the
dependencies for the Lambda platform (python3.12, manylinux2014 x86_64), installed with
`pip install --platform ... --only-binary=:all: --no-deps` at exactly the versions of the
environment that runs the program and the tests: the top-level pins come from
requirements.txt (and must match what is installed), the transitive ones from the installed
distributions' metadata. psycopg comes with its binary wheel, so no libpq is needed on Lambda.

Two digests, for two different questions:

* `content_sha256` says WHAT is in the package: the dependency pins (which fix the wheels'
  files), every project file's name and bytes, and the layout version. It depends on nothing
  about the machine, so it is what the release steps use as their trigger: a checkout on any
  machine gives the same value, and the snapshot, the migrations and the smoke tests run again
  only when the package's contents change.
* `code_sha256` is the SHA-256 of the zip's BYTES, what Lambda reports as CodeSha256. The
  bytes also depend on the deflate implementation (zlib vs zlib-ng produce different streams
  for the same input), so it can differ between machines for the same contents.

Builds are cached under `build/lambda/` (gitignored): the dependencies by their pin set, the
zip by its content hash and compression level. The zip is deterministic on one machine (sorted
entries, fixed timestamps and permissions, no bytecode, no pip records naming local paths).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "lambda"
LAMBDA_PYTHON = "3.12"
LAMBDA_PLATFORM = "manylinux2014_x86_64"
# What the handlers import; everything else they need follows from these distributions. The
# CLIs' libraries (rich for the console, typer...) stay out: scripts/lib/cli.py imports rich only
# when a script prints (tests/unit/test_lambda_package.py imports every packaged module without it).
LAMBDA_REQUIREMENTS = ("psycopg", "boto3", "redis", "tenacity")
SOURCES = ("scripts/__init__.py", "scripts/lib", "scripts/dbops", "migrations")
# pip's console scripts (top-level bin/) carry the local interpreter's path; nothing runs them.
_SKIPPED_TOP_LEVEL = {"bin"}
_SKIPPED_DIST_INFO_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
_FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
ZIP_COMPRESSLEVEL = 9
# Part of the content hash: raise it when what goes into the zip changes (files skipped,
# modes, layout) without any source file or pin changing.
PACKAGE_LAYOUT_VERSION = "1"


class PackageError(RuntimeError):
    pass


@dataclass(frozen=True)
class LambdaPackage:
    path: Path
    content_sha256: str  # hex; the files and their contents, independent of compression: the release triggers
    code_sha256: str  # base64 SHA-256 of the zip's bytes, what Lambda reports as CodeSha256
    zip_sha256: str  # the zip's digest in hex
    size: int
    pins: tuple[str, ...]


def _lambda_environment(extra: str = "") -> dict[str, str]:
    env = {key: str(value) for key, value in default_environment().items()}
    env.update({"python_version": LAMBDA_PYTHON, "python_full_version": f"{LAMBDA_PYTHON}.0",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "extra": extra})
    return env


def requirement_pins(requirements_file: Path = ROOT / "requirements.txt") -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for line in requirements_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def _pinned_version(requirement: Requirement) -> str:
    match = re.fullmatch(r"==([^,]+)", str(requirement.specifier))
    if not match:
        raise PackageError(f"requirements.txt must pin {requirement.name} exactly (==), not {requirement.specifier}")
    return match.group(1)


@lru_cache(maxsize=1)
def dependency_closure() -> tuple[str, ...]:
    """`name==version` for every distribution the functions need on python3.12/Linux."""
    pins = requirement_pins()
    wanted: list[tuple[str, frozenset[str]]] = []
    for name in LAMBDA_REQUIREMENTS:
        requirement = pins.get(canonicalize_name(name))
        if requirement is None:
            raise PackageError(f"{name} is not pinned in requirements.txt")
        installed = importlib.metadata.version(requirement.name)
        if installed != _pinned_version(requirement):
            raise PackageError(f"{requirement.name} {installed} is installed but requirements.txt pins "
                               f"{_pinned_version(requirement)}; reinstall the virtualenv from requirements.txt")
        wanted.append((requirement.name, frozenset(requirement.extras)))
    resolved: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        name, extras = wanted.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise PackageError(f"{name} is needed by the Lambda package but not installed here") from None
        resolved[canonicalize_name(name)] = distribution.version
        for text in distribution.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate(_lambda_environment(extra)) for extra in (extras or {""})):
                wanted.append((requirement.name, frozenset(requirement.extras)))
    return tuple(sorted(f"{name}=={version}" for name, version in resolved.items()))


def _source_files() -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for entry in SOURCES:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            relative = candidate.relative_to(ROOT)
            if "__pycache__" in relative.parts or candidate.suffix == ".pyc":
                continue
            files.append((relative.as_posix(), candidate))
    return sorted(files)


def _dependency_files(directory: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for candidate in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = candidate.relative_to(directory)
        if relative.parts[0] in _SKIPPED_TOP_LEVEL or "__pycache__" in relative.parts or candidate.suffix == ".pyc":
            continue
        if relative.parent.name.endswith(".dist-info") and relative.name in _SKIPPED_DIST_INFO_FILES:
            continue
        files.append((relative.as_posix(), candidate))
    return files


def _install_dependencies(pins: tuple[str, ...], key: str) -> Path:
    target = BUILD_DIR / f"deps-{key[:20]}"
    if target.is_dir():
        return target
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="deps-", dir=BUILD_DIR))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--no-deps", "--only-binary=:all:", "--platform", LAMBDA_PLATFORM, "--implementation", "cp",
               "--python-version", LAMBDA_PYTHON, "--target", str(staging), *pins]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise PackageError("pip could not install the Lambda dependencies: "
                           + (result.stderr.strip().splitlines() or ["no output"])[-1])
    try:
        staging.rename(target)
    except OSError:  # another build (a parallel test worker) finished first; use its result
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_zip(path: Path, entries: list[tuple[str, Path]], compresslevel: int) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        for name, source in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            # Readable is all Lambda needs (shared libraries are loaded, not executed); one mode
            # for every file keeps the archive independent of the local file system.
            info.external_attr = (0o100000 | 0o644) << 16
            info.create_system = 3  # Unix, so the permissions above are honoured
            # The level must be given here: a ZipInfo carries none of its own, and writestr
            # would otherwise use zlib's default whatever the archive was opened with.
            archive.writestr(info, source.read_bytes(), compresslevel=compresslevel)
    os.replace(staging, path)


def build_lambda_package() -> LambdaPackage:
    pins = dependency_closure()
    deps_key = hashlib.sha256("\n".join([LAMBDA_PLATFORM, LAMBDA_PYTHON, *pins]).encode()).hexdigest()
    sources = _source_files()
    content = hashlib.sha256(f"layout {PACKAGE_LAYOUT_VERSION}\0{deps_key}".encode())
    for name, source in sources:
        content.update(name.encode() + b"\0" + hashlib.sha256(source.read_bytes()).digest())
    content_sha256 = content.hexdigest()
    level = ZIP_COMPRESSLEVEL
    zip_path = BUILD_DIR / f"dbops-{content_sha256[:20]}-z{level}.zip"
    if not zip_path.is_file():
        deps = _install_dependencies(pins, deps_key)
        entries = dict(_dependency_files(deps))
        entries.update(dict(sources))  # the project's own code wins over anything of the same name
        _write_zip(zip_path, sorted(entries.items()), level)
    # Lambda's code hash must be the digest of the bytes uploaded: Lambda computes CodeSha256
    # from the zip it received, and the provider compares it with `code_sha256`; any other
    # value would show a change on every preview. So a machine whose deflate writes other bytes
    # (zlib-ng) uploads the same code again once (an update of the function, no downtime),
    # while the release triggers follow `content_sha256` and do not run again.
    digest = hashlib.sha256(zip_path.read_bytes()).digest()
    return LambdaPackage(path=zip_path, content_sha256=content_sha256, code_sha256=base64.b64encode(digest).decode(),
                         zip_sha256=digest.hex(), size=zip_path.stat().st_size, pins=pins)
