"""Fixtures for the Redis token rotation: a real TLS-only Redis with AUTH (like ElastiCache with
in-transit encryption) whose default user holds the first token, the Redis secret in moto's
Secrets Manager, and `RedisAclTokens` (redis_rotation_support.py) acting on that Redis.
Imported with `pytest_plugins`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.redis_rotation_support import ADMIN_PASSWORD, ADMIN_USER, FIRST_TOKEN, LocalRedis, RedisAclTokens
from tests.services import self_signed_certificate, tls_redis_server


@pytest.fixture(scope="module")
def redis_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("redis-tls")
    return self_signed_certificate(directory)


@pytest.fixture
def local_redis(redis_certificate: tuple[Path, Path], tmp_path: Path) -> Iterator[LocalRedis]:
    """A fresh TLS-only Redis whose default user has the first token (what Pulumi created the
    replication group with), plus an administrator user for RedisAclTokens."""
    cert, key = redis_certificate
    with tls_redis_server(cert, key, FIRST_TOKEN, tmp_path) as port:
        server = LocalRedis("127.0.0.1", port, str(cert))
        with server.client(FIRST_TOKEN) as setup:
            setup.acl_setuser(ADMIN_USER, enabled=True, passwords=[f"+{ADMIN_PASSWORD}"], keys=["*"], channels=["*"],
                              commands=["+@all"])
        yield server


@pytest.fixture
def acl_tokens(local_redis: LocalRedis) -> RedisAclTokens:
    return RedisAclTokens(local_redis)


@pytest.fixture
def redis_secret(sm: Any, local_redis: LocalRedis) -> str:
    """The Redis secret as components/cache.py writes its first version."""
    return str(sm.create_secret(Name="psychology-api/test/redis", SecretString=json.dumps(
        {"host": local_redis.host, "port": local_redis.port, "auth_token": FIRST_TOKEN, "tls": True}))["ARN"])
