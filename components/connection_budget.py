"""The PostgreSQL connection budget: every client that can hold a connection at the same
moment, in the worst case, against the parameter group's `max_connections`.

The worst case is an instance refresh (or a health replacement) while the group runs at
`apiMaxSize`: the group launches new hosts before it retires old ones, up to the refresh's
maximum healthy percentage of the desired capacity. Each host runs `2 * vCPUs + 1` sync gunicorn
workers (components/templates/api/gunicorn.conf.py.j2), one thread each, and Django keeps one
connection per worker. On top come the in-VPC functions (each capped by its reserved
concurrency), the monitoring host (postgres_exporter, the nightly backup, the restore drill:
each capped by its roles' CONNECTION LIMIT) and the slots PostgreSQL and RDS keep for
superusers, which no client of ours may count on.

The spec's `max_connections = 100` stays (it is static on RDS: a change waits for a reboot);
the refresh surge is what gives way: `refresh_max_healthy_percent` is the largest maximum
healthy percentage whose worst case still fits, at most 200 (launch a whole new group at
once). Configuration that cannot fit even one extra host is refused (infra/config.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# PostgreSQL's superuser_reserved_connections and RDS's rds.rds_superuser_reserved_connections
# (both left at their defaults by the parameter group).
SUPERUSER_RESERVED = 3
RDS_SUPERUSER_RESERVED = 2
RESERVED_CONNECTIONS = SUPERUSER_RESERVED + RDS_SUPERUSER_RESERVED

# Django: one connection per worker thread; gunicorn's sync workers have one thread.
CONNECTIONS_PER_WORKER = 1
# Launch before terminate: the group never goes below its desired capacity during a refresh.
REFRESH_MIN_HEALTHY_PERCENT = 100
REFRESH_MAX_HEALTHY_PERCENT_LIMIT = 200  # AWS's upper bound (and min + 100)


@dataclass(frozen=True)
class FunctionLimit:
    """A database-operations function: reserved concurrency (the most invocations at once) and
    the connections one invocation holds at the same time, at most."""

    reserved_concurrency: int
    connections: int


# Keyed like components.dbops.FUNCTIONS. `rotate` serves the four database secrets, whose
# schedules start on the same day: each may rotate at once without being throttled.
FUNCTION_LIMITS: dict[str, FunctionLimit] = {
    "migrate": FunctionLimit(reserved_concurrency=1, connections=2),
    "health": FunctionLimit(reserved_concurrency=2, connections=1),
    "rotate": FunctionLimit(reserved_concurrency=4, connections=2),
    "rotate-redis": FunctionLimit(reserved_concurrency=1, connections=0),
    "check-rotation": FunctionLimit(reserved_concurrency=1, connections=0),
    # The Django secret and Grafana's admin secret share a schedule: both may rotate at once.
    "rotate-generated": FunctionLimit(reserved_concurrency=2, connections=0),
}

# The monitoring host's database logins, each capped by the CONNECTION LIMIT of its login users
# (migration 0004 for the exporter, 0005 for the backup and the drill). The host uses the user
# its secret names, one of each pair at a time.
MONITORING_CONNECTION_LIMITS: dict[str, int] = {
    "postgres_exporter": 5,    # psychology_monitor_a/_b: CONNECTION LIMIT 5
    "backup": 2,               # psychology_backup_a/_b: the snapshot holder and pg_dump
    "restore_drill": 2,        # psychology_drill_a/_b: the admin connection and pg_restore (--jobs 1)
}

# vCPUs by instance size (the part after the dot). Burstable and Graviton "medium" and smaller
# sizes have 1 or 2 vCPUs: 2 is the upper bound used for them.
_SMALL_SIZES = {"nano": 2, "micro": 2, "small": 2, "medium": 2, "large": 2, "xlarge": 4}
_MULTIPLE_XLARGE = re.compile(r"^(\d+)xlarge$")


def vcpus_at_most(instance_type: str) -> int:
    """The most vCPUs an instance of this type has, from its size; ValueError when unknown."""
    size = instance_type.rsplit(".", 1)[-1]
    if size in _SMALL_SIZES:
        return _SMALL_SIZES[size]
    multiple = _MULTIPLE_XLARGE.match(size)
    if multiple is None:
        raise ValueError(f"{instance_type}: unknown instance size {size!r} (expected medium, large, xlarge, 2xlarge, ...)")
    return 4 * int(multiple.group(1))


def gunicorn_workers(vcpus: int) -> int:
    """What components/templates/api/gunicorn.conf.py.j2 computes on a host with that many CPUs."""
    return vcpus * 2 + 1


def hosts_during_refresh(max_size: int, max_healthy_percent: int) -> int:
    """Hosts in service or pending at the peak of a refresh of a group at max_size: AWS launches
    up to the percentage of the desired capacity, and always at least one host."""
    surge = math.ceil(max_size * (max_healthy_percent - 100) / 100)
    return max_size + max(1, surge)


def other_connections() -> int:
    """Everything except the API hosts: functions, monitoring host, reserved slots."""
    functions = sum(f.reserved_concurrency * f.connections for f in FUNCTION_LIMITS.values())
    return functions + sum(MONITORING_CONNECTION_LIMITS.values()) + RESERVED_CONNECTIONS


def worst_case(max_size: int, instance_type: str, max_healthy_percent: int) -> int:
    hosts = hosts_during_refresh(max_size, max_healthy_percent)
    return hosts * gunicorn_workers(vcpus_at_most(instance_type)) * CONNECTIONS_PER_WORKER + other_connections()


def refresh_max_healthy_percent(max_size: int, instance_type: str, max_connections: int) -> int:
    """The largest maximum healthy percentage (101..200) whose worst case fits max_connections;
    ValueError when not even one extra host fits."""
    for percent in range(REFRESH_MAX_HEALTHY_PERCENT_LIMIT, REFRESH_MIN_HEALTHY_PERCENT, -1):
        if worst_case(max_size, instance_type, percent) <= max_connections:
            return percent
    needed = worst_case(max_size, instance_type, REFRESH_MIN_HEALTHY_PERCENT + 1)
    raise ValueError(f"{max_size} hosts of {instance_type} need {needed} database connections during a refresh "
                     f"(one extra host), more than max_connections {max_connections}")


def max_api_hosts(instance_type: str, max_connections: int) -> int:
    """The largest apiMaxSize that still fits with one extra host during a refresh."""
    per_host = gunicorn_workers(vcpus_at_most(instance_type)) * CONNECTIONS_PER_WORKER
    return (max_connections - other_connections()) // per_host - 1
