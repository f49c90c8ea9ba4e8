"""The PostgreSQL settings of the RDS parameter group: the spec's postgresql.conf (section 3.2.2)
converted to the units RDS stores, plus the settings this platform adds (TLS only, statement
statistics, slow-query and connection logging, idle-transaction timeout).

Units. RDS takes a bare number in the parameter's base unit, which is PostgreSQL's own unit
(`SELECT name, unit FROM pg_settings`): shared_buffers, effective_cache_size and wal_buffers in
8 kB pages, maintenance_work_mem and work_mem in kB, min_wal_size and max_wal_size in MB,
durations in ms. `2GB` of shared_buffers is therefore 2 * 1024^3 / 8192 = 262144. The spec's
text stays next to each value and the number is computed from it, so the conversion is visible
and tested (tests/integration/test_data_parameters.py feeds every value to a real
PostgreSQL and reads back the spec's text).

Memory sizing. The spec's numbers are sized for its recommended 8 GB of RAM (shared_buffers =
RAM/4, effective_cache_size = 3/4, maintenance_work_mem = 1/16). RDS instance classes differ per
stack: prod runs db.m6g.xlarge (16 GiB), staging db.t4g.medium (4 GiB), where the fixed 2 GB of
shared_buffers would be half the memory and a 6 GB cache hint a lie. The three memory-sized
settings are therefore the spec's proportion of the instance's memory, capped at the spec's
value: `LEAST({DBInstanceClassMemory/32768},262144)`. On prod (and any class with at least the
spec's 8 GB plus RDS's own reserve) the cap applies and the value is exactly the spec's; on
staging the proportion applies and the instance is not over-committed. Moving prod to a class
with far more memory is the moment to raise the caps here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from typing import Optional

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
PAGE_8K = 8 * KIB

# The spec's values assume this much RAM (spec 3.2.2: "RAM 8GB recommended").
SPEC_RAM_BYTES = 8 * GIB

_SIZE = re.compile(r"^(\d+)(kB|MB|GB)$")
_SIZE_UNITS = {"kB": KIB, "MB": MIB, "GB": GIB}


def size_bytes(text: str) -> int:
    """'2GB' -> bytes, with PostgreSQL's meaning of the suffixes (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a PostgreSQL memory size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def in_unit(text: str, unit_bytes: int) -> int:
    size = size_bytes(text)
    if size % unit_bytes:
        raise ValueError(f"{text} is not a whole number of {unit_bytes}-byte units")
    return size // unit_bytes


@dataclass(frozen=True)
class PgParameter:
    name: str
    # Exactly what RDS stores: a number in the parameter's base unit, a word, or an RDS formula.
    value: str
    # True when the server must restart for a change to take effect (PostgreSQL context
    # "postmaster", or static on RDS). RDS refuses apply_method "immediate" for those.
    static: bool
    # Where the value comes from: the spec's line, or why the platform sets it.
    source: str
    # The spec's postgresql.conf value, as written there ("2GB"), for the spec's parameters.
    spec: Optional[str] = None
    # Set for settings sized by memory: the spec's value in the base unit (the cap of the formula).
    cap: Optional[int] = None

    @property
    def apply_method(self) -> str:
        return "pending-reboot" if self.static else "immediate"


def _memory_proportional(name: str, spec_text: str, unit_bytes: int, static: bool) -> PgParameter:
    """The spec's share of its 8 GB, as an RDS formula over the instance's memory, capped at
    the spec's value."""
    share = Fraction(size_bytes(spec_text), SPEC_RAM_BYTES)
    numerator, denominator = share.numerator, share.denominator * unit_bytes
    common = gcd(numerator, denominator)
    numerator, denominator = numerator // common, denominator // common
    term = "DBInstanceClassMemory" + (f"*{numerator}" if numerator != 1 else "") + f"/{denominator}"
    cap = in_unit(spec_text, unit_bytes)
    return PgParameter(name, f"LEAST({{{term}}},{cap})", static,
                       f"spec: {name} = {spec_text} (= RAM*{share} of 8 GB, capped)", spec=spec_text, cap=cap)


def _sized(name: str, spec_text: str, unit_bytes: int, static: bool) -> PgParameter:
    return PgParameter(name, str(in_unit(spec_text, unit_bytes)), static, f"spec: {name} = {spec_text}", spec=spec_text)


def _plain(name: str, spec_text: str, static: bool) -> PgParameter:
    return PgParameter(name, spec_text, static, f"spec: {name} = {spec_text}", spec=spec_text)


# The spec's postgresql.conf, in its order.
SPEC_PARAMETERS: tuple[PgParameter, ...] = (
    _memory_proportional("shared_buffers", "2GB", PAGE_8K, static=True),
    _memory_proportional("effective_cache_size", "6GB", PAGE_8K, static=False),
    _memory_proportional("maintenance_work_mem", "512MB", KIB, static=False),
    _plain("checkpoint_completion_target", "0.9", static=False),
    _sized("wal_buffers", "16MB", PAGE_8K, static=True),
    _plain("default_statistics_target", "100", static=False),
    _plain("random_page_cost", "1.1", static=False),
    _plain("effective_io_concurrency", "200", static=False),
    _sized("work_mem", "16MB", KIB, static=False),
    _sized("min_wal_size", "1GB", MIB, static=False),
    _sized("max_wal_size", "4GB", MIB, static=False),
    _plain("max_connections", "100", static=True),
)

PLATFORM_PARAMETERS: tuple[PgParameter, ...] = (
    # The spec's sslmode=require, enforced by the server: plain TCP connections are refused.
    # Static in some RDS families, so it is applied at the next reboot there (and at creation,
    # when the group is attached, in all of them).
    PgParameter("rds.force_ssl", "1", True, "spec: sslmode=require, enforced server-side"),
    # Query statistics for Performance Insights' SQL view and the postgres_exporter.
    PgParameter("shared_preload_libraries", "pg_stat_statements", True, "statement statistics"),
    PgParameter("log_min_duration_statement", "500", False, "slow-query log: statements over 500 ms"),
    # Statement logs must not carry user data: bind parameters are left out of them.
    PgParameter("log_parameter_max_length", "0", False, "no bind parameter values in the logs"),
    PgParameter("log_connections", "1", False, "audit: every connection"),
    PgParameter("log_disconnections", "1", False, "audit: every disconnection, with session length"),
    PgParameter("log_lock_waits", "1", False, "log waits longer than deadlock_timeout"),
    # A session idle inside a transaction holds locks and blocks vacuum; 5 minutes is far
    # beyond any request or task of the application.
    PgParameter("idle_in_transaction_session_timeout", "300000", False, "end sessions idle in a transaction for 5 min"),
    PgParameter("password_encryption", "scram-sha-256", False, "new passwords hashed with SCRAM, never MD5"),
)

PARAMETERS: tuple[PgParameter, ...] = SPEC_PARAMETERS + PLATFORM_PARAMETERS

_FORMULA = re.compile(r"^LEAST\(\{DBInstanceClassMemory(?:\*(\d+))?/(\d+)\},(\d+)\)$")


def effective_value(parameter: PgParameter, instance_memory_bytes: int) -> str:
    """The value PostgreSQL gets on an instance whose DBInstanceClassMemory is given (RDS
    evaluates formulas with integer arithmetic, truncating)."""
    match = _FORMULA.match(parameter.value)
    if match is None:
        return parameter.value
    numerator = int(match.group(1) or 1)
    proportional = instance_memory_bytes * numerator // int(match.group(2))
    return str(min(proportional, int(match.group(3))))


def parameter(name: str) -> PgParameter:
    """The parameter group's setting of that name."""
    for candidate in PARAMETERS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"the parameter group does not set {name}")


def max_connections() -> int:
    """The connection limit the parameter group sets (the CloudWatch alarm's reference)."""
    return int(parameter("max_connections").value)
