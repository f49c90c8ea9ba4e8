"""Configuration the data tier refuses: each mistake is one line naming the key, before any
resource is registered."""

from __future__ import annotations

import re
from typing import Any

import pytest

from harness.mock_engine import run_program
from infra.config import ConfigError


def refused(stack: str, key: str, value: Any) -> str:
    """Run the program with one bad value; return the one line that names the key."""
    with pytest.raises(ConfigError) as caught:
        run_program(stack, overrides={key: value})
    lines = str(caught.value).splitlines()
    assert all(line.startswith("invalid configuration: ") for line in lines)
    naming = [line for line in lines if f"psychology-api:{key} = " in line]
    assert len(naming) == 1, lines
    return naming[0]


@pytest.mark.parametrize("days", [0, 36])
def test_backup_retention_out_of_range(days: int) -> None:
    line = refused("staging", "dbBackupRetentionDays", days)
    assert re.search(rf'= "?{days}"? is not allowed: an integer from 1 to 35$', line), line


@pytest.mark.parametrize("version", ["13", "9.6", "abc", "16.x"])
def test_unknown_engine_version(version: str) -> None:
    line = refused("staging", "dbEngineVersion", version)
    assert re.search(rf'= "?{re.escape(version)}"? is not allowed', line), line
    assert "14, 15, 16, 17" in line


def test_prod_needs_two_redis_nodes() -> None:
    line = refused("prod", "redisNumNodes", 1)
    assert "at least 2 when environment is prod" in line


def test_prod_needs_multi_az_postgres() -> None:
    line = refused("prod", "dbMultiAz", False)
    assert "true when environment is prod" in line


@pytest.mark.parametrize("days", [0, 45, 10000, 30, 180])
def test_data_log_retention_must_be_a_cloudwatch_value_of_at_least_a_year(days: int) -> None:
    line = refused("staging", "dataLogRetentionDays", days)
    assert "one of 365, 400, 545, 731" in line


def test_staging_may_run_a_single_az_database_and_one_redis_node() -> None:
    plan = run_program("staging", overrides={"dbMultiAz": False, "redisNumNodes": 1})
    assert plan.one("aws:rds/instance:Instance").inputs["multiAz"] is False
