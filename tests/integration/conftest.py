"""Real services for the integration tests: PostgreSQL 15, Redis and moto's server mode.

Each is started once per session; tests get a fresh database (pytest-postgresql's janitor),
a flushed Redis and a reset moto, so they never see each other's data."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from pytest_redis import factories as redis_factories

from tests.services import MotoServer, PgServer, start_moto, start_postgres, stop_postgres

REDIS_PASSWORD = "redis-test-password-0123456789"

redis_proc = redis_factories.redis_proc(executable=shutil.which("redis-server") or "/usr/bin/redis-server",
                                        password=REDIS_PASSWORD)
redisdb = redis_factories.redisdb("redis_proc")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's server. Its CA is in PGSSLROOTCERT, as an operator's shell or a function's
    environment would name it: code that builds its connection from a secret (no DSN to carry
    sslrootcert) verifies the server against it instead of the RDS bundle."""
    server = start_postgres()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PGSSLROOTCERT", str(server.ca_file))
            yield server
    finally:
        stop_postgres(server)


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; yields its name."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(user=pg_server.superuser, host=pg_server.host, port=pg_server.port,
                              password=pg_server.password, dbname=name)
    janitor.init()
    try:
        yield name
    finally:
        janitor.drop()


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.server.stop()  # type: ignore[attr-defined]


@pytest.fixture
def moto(moto_session: MotoServer) -> Iterator[MotoServer]:
    moto_session.reset()
    yield moto_session
