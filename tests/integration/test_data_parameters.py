"""The data tier's parameter groups checked against the real servers.

PostgreSQL converts the spec's postgresql.conf lines itself (`postgres -C name -c name=2GB`
prints the value in the parameter's base unit, which is what RDS stores), so the RDS numbers
are compared with PostgreSQL's own conversion, not with a second copy of ours. Whether a
parameter needs a restart comes from pg_settings.context. Redis accepts and reports the
parameter group's settings."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from components.cache import PARAMETERS as REDIS_PARAMETERS
from components.postgres_parameters import GIB, PARAMETERS, PLATFORM_PARAMETERS, SPEC_PARAMETERS, PgParameter, effective_value
from tests.services import PgServer, _as_postgres

# DBInstanceClassMemory of prod's db.m6g.xlarge (16 GiB less RDS's reserve): the caps apply.
PROD_CLASS_MEMORY = 15 * GIB


def base_unit_value(server: PgServer, name: str, setting: str) -> str:
    """What PostgreSQL makes of `name = setting`, in the parameter's base unit."""
    done = subprocess.run(
        _as_postgres([str(server.bin_dir / "postgres"), "-D", str(server.data_dir), "-C", name, "-c", f"{name}={setting}"]),
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"PostgreSQL refused {name}={setting}: {done.stderr.strip()}"
    return done.stdout.strip()


@pytest.mark.parametrize("parameter", SPEC_PARAMETERS, ids=lambda p: p.name)
def test_rds_value_is_postgresqls_own_conversion_of_the_spec(pg_server: PgServer, parameter: PgParameter) -> None:
    assert parameter.spec is not None
    spec = parameter.spec
    on_prod = effective_value(parameter, PROD_CLASS_MEMORY)
    assert base_unit_value(pg_server, parameter.name, spec) == on_prod
    assert base_unit_value(pg_server, parameter.name, on_prod) == on_prod


@pytest.mark.parametrize("parameter", [p for p in PLATFORM_PARAMETERS if not p.name.startswith("rds.")],
                         ids=lambda p: p.name)
def test_platform_parameters_are_accepted(pg_server: PgServer, parameter: PgParameter) -> None:
    value = base_unit_value(pg_server, parameter.name, parameter.value)
    assert value in (parameter.value, "on" if parameter.value == "1" else parameter.value)


def test_apply_method_follows_postgresqls_restart_requirement(pg_server: PgServer) -> None:
    names = [p.name for p in PARAMETERS if not p.name.startswith("rds.")]
    with psycopg.connect(pg_server.dsn()) as conn:
        context = dict(conn.execute("select name, context from pg_settings where name = any(%s)", [names]).fetchall())
    assert set(context) == set(names)
    for parameter in PARAMETERS:
        if parameter.name in context:
            needs_restart = context[parameter.name] == "postmaster"
            assert parameter.static == needs_restart, f"{parameter.name}: context {context[parameter.name]}"
            assert parameter.apply_method == ("pending-reboot" if needs_restart else "immediate")


def test_redis_accepts_the_parameter_group(redisdb) -> None:  # type: ignore[no-untyped-def]
    before = redisdb.config_get("maxmemory-policy")
    try:
        for name, value in REDIS_PARAMETERS.items():
            redisdb.config_set(name, value)
            assert redisdb.config_get(name) == {name: value}
    finally:
        redisdb.config_set("maxmemory-policy", before["maxmemory-policy"])
