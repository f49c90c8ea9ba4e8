"""The database's max_connections against the worst case of each stack, computed from what the
plan really builds: the group's maximum size and refresh surge, the launch template's instance
type and the gunicorn configuration rendered into its user data, the functions' reserved
concurrency, the monitoring logins' CONNECTION LIMITs in the migrations, and the parameter group."""

from __future__ import annotations

import math
import multiprocessing
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from components.connection_budget import (
    CONNECTIONS_PER_WORKER,
    FUNCTION_LIMITS,
    MONITORING_CONNECTION_LIMITS,
    RESERVED_CONNECTIONS,
    hosts_during_refresh,
    vcpus_at_most,
)
from components.userdata import decode_user_data
from harness.mock_engine import Plan
from infra.config import ConfigError, parse_stack_config
from tests.unit.test_config import raw_config

ROOT = Path(__file__).resolve().parents[2]
ASG = "aws:autoscaling/group:Group"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
FUNCTION = "aws:lambda/function:Function"
PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"
# Which login users each monitoring-host client uses (migrations 0004 and 0005).
MONITORING_LOGINS = {
    "postgres_exporter": ("psychology_monitor_a", "psychology_monitor_b"),
    "backup": ("psychology_backup_a", "psychology_backup_b"),
    "restore_drill": ("psychology_drill_a", "psychology_drill_b"),
}


def gunicorn_settings(plan: Plan, vcpus: int) -> dict[str, Any]:
    """The rendered gunicorn.conf.py of the user data, executed as on a host with that many CPUs."""
    document = yaml.safe_load(decode_user_data(plan.one(LT).inputs["userData"]))
    source = next(e["content"] for e in document["write_files"] if e["path"] == "/etc/psychology-api/gunicorn.conf.py")
    namespace: dict[str, Any] = {}
    with mock.patch.object(multiprocessing, "cpu_count", return_value=vcpus):
        exec(compile(source, "gunicorn.conf.py", "exec"), namespace)  # noqa: S102 - our own rendered file
    return namespace


def connections_per_host(plan: Plan) -> int:
    settings = gunicorn_settings(plan, vcpus_at_most(plan.one(LT).inputs["instanceType"]))
    assert settings["worker_class"] == "sync" and settings.get("threads", 1) == 1
    return int(settings["workers"]) * CONNECTIONS_PER_WORKER


def refresh_peak_hosts(plan: Plan) -> int:
    group = plan.one(ASG).inputs
    refresh = group["instanceRefresh"]["preferences"]["maxHealthyPercentage"]
    maintenance = group["instanceMaintenancePolicy"]["maxHealthyPercentage"]
    return hosts_during_refresh(int(group["maxSize"]), max(int(refresh), int(maintenance)))


def function_connections(plan: Plan) -> int:
    total = 0
    for function in plan.of_type(FUNCTION):
        role = function.inputs["name"].rsplit("-db-", 1)[1]
        concurrency = function.inputs.get("reservedConcurrentExecutions")
        assert isinstance(concurrency, int) and concurrency > 0, f"{role}: no reserved concurrency, no bound"
        total += concurrency * FUNCTION_LIMITS[role].connections
    return total


def connection_limit(user: str) -> int:
    pattern = re.compile(rf"CREATE ROLE {user}\b[^;]*CONNECTION LIMIT (\d+)")
    found = [int(m.group(1)) for path in sorted((ROOT / "migrations").glob("*.sql"))
             for m in pattern.finditer(path.read_text())]
    assert len(found) == 1, f"{user}: one CREATE ROLE with a CONNECTION LIMIT in migrations/"
    return found[0]


def monitoring_connections() -> int:
    total = 0
    for client, users in MONITORING_LOGINS.items():
        limits = {connection_limit(user) for user in users}
        assert limits == {MONITORING_CONNECTION_LIMITS[client]}, client
        total += max(limits)
    return total


def max_connections(plan: Plan) -> int:
    parameters = {p["name"]: p["value"] for p in plan.one(PARAMETER_GROUP).inputs["parameters"]}
    return int(parameters["max_connections"])


def test_worst_case_fits_max_connections(plan: Plan) -> None:
    api = refresh_peak_hosts(plan) * connections_per_host(plan)
    worst = api + function_connections(plan) + monitoring_connections() + RESERVED_CONNECTIONS
    assert worst <= max_connections(plan), (
        f"{plan.stack}: {refresh_peak_hosts(plan)} hosts x {connections_per_host(plan)} + functions "
        f"{function_connections(plan)} + monitoring {monitoring_connections()} + reserved {RESERVED_CONNECTIONS} "
        f"= {worst} > {max_connections(plan)}")


def test_prod_still_refreshes_more_than_one_host_at_a_time(prod: Plan) -> None:
    """The surge is capped, not removed: a release of a full prod group is not one host at a time."""
    group = prod.one(ASG).inputs
    percent = group["instanceRefresh"]["preferences"]["maxHealthyPercentage"]
    assert group["instanceRefresh"]["preferences"]["minHealthyPercentage"] == 100
    assert math.ceil(int(group["maxSize"]) * (percent - 100) / 100) >= 2
    assert group["instanceMaintenancePolicy"]["maxHealthyPercentage"] == percent


def test_every_database_function_has_a_reserved_concurrency(plan: Plan) -> None:
    for function in plan.of_type(FUNCTION):
        role = function.inputs["name"].rsplit("-db-", 1)[1]
        assert function.inputs["reservedConcurrentExecutions"] == FUNCTION_LIMITS[role].reserved_concurrency


@pytest.mark.parametrize(("instance_type", "vcpus"), [
    ("t3.medium", 2), ("m6g.large", 2), ("c6i.xlarge", 4), ("m7i.2xlarge", 8), ("c6g.16xlarge", 64)])
def test_vcpus_from_the_instance_size(instance_type: str, vcpus: int) -> None:
    assert vcpus_at_most(instance_type) == vcpus


def test_too_many_hosts_for_the_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw_config("prod", apiMaxSize="8"))
    assert "psychology-api:apiMaxSize = 8" in str(err.value)
    assert "at most 7 with apiInstanceType c6i.xlarge" in str(err.value)
    with pytest.raises(ConfigError, match=r"apiInstanceType = \"c6i\.metal\" .*Nxlarge"):
        parse_stack_config(raw_config("prod", apiInstanceType="c6i.metal"))
