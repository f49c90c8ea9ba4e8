"""Typed, validated stack configuration.

`load_stack_config()` reads every project key declared in Pulumi.yaml from `pulumi.Config`,
parses it into one frozen `StackConfig` and checks every rule before the program registers a
single resource. All problems are collected and reported together, one line each, naming the
key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Optional

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.connection_budget import max_api_hosts
from components.postgres_parameters import max_connections

PROJECT = "psychology-api"

# CloudWatch Logs accepts only these retention periods.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
# Application Load Balancer policies that offer TLS 1.3 and keep TLS 1.2 as the minimum
# (spec 3.4.1). Policies allowing TLS 1.0/1.1 are deliberately absent.
TLS13_POLICIES = (
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-2023-04",
)
# Logs that record who did what (network flows, requests, database sessions, credential
# rotations) are kept at least a year wherever the key is security-relevant.
SECURITY_LOG_MIN_DAYS = 365
# The rate-based rule's limit per IP and 5 minutes: the provider's validator accepts 100 to
# 2,000,000,000 (the WAF API itself has accepted 10 since 2024).
WAF_RATE_LIMIT_RANGE = (100, 2_000_000_000)
WAF_MODES = ("block", "count")
POSTGRES_MAJORS = (14, 15, 16, 17)
REDIS_VERSIONS = ("7.0", "7.1")
RDS_MONITORING_INTERVALS = (0, 1, 5, 10, 15, 30, 60)

# Keys whose values are credentials: read with get_secret and refused when set in plain text.
SECRET_KEYS = (
    "paymentsShopId", "paymentsSecretKey", "telegramBotToken", "telegramChannelId",
    "googleCalendarClientId", "googleCalendarClientSecret", "smtpPassword",
    "alertWebhookUrl", "pagerdutyRoutingKey",
)

_INSTANCE_TYPE = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"

# A rotation does not start while the previous one is younger than the clients' refresh allows
# (scripts/dbops/rotation.py: MIN_HOURS_BETWEEN_ROTATIONS, 28 h): scheduled rotations must be
# further apart than that.
MIN_ROTATION_DAYS = 2


def _allowed(text: str) -> Any:
    return {"allowed": text}


class StackConfig(BaseModel):
    """Every non-secret setting of one stack. Attribute names are snake_case; each field's
    alias is the camelCase key of Pulumi.yaml."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    region: str = Field(alias="aws:region", pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$",
                        json_schema_extra=_allowed("an AWS region such as eu-central-1"))
    environment: Literal["staging", "prod"] = Field(
        json_schema_extra=_allowed("'staging' or 'prod'"))

    vpc_cidr: str = Field(alias="vpcCidr", json_schema_extra=_allowed(
        "an IPv4 network such as 10.20.0.0/16, prefix /16 to /28"))
    az_count: int = Field(alias="azCount", ge=2, le=6, json_schema_extra=_allowed(
        "an integer from 2 to 6 (prod at least 3)"))
    public_subnet_cidrs: tuple[str, ...] = Field(alias="publicSubnetCidrs",
                                                 json_schema_extra=_allowed("a list of IPv4 CIDRs"))
    private_subnet_cidrs: tuple[str, ...] = Field(alias="privateSubnetCidrs",
                                                  json_schema_extra=_allowed("a list of IPv4 CIDRs"))
    database_subnet_cidrs: tuple[str, ...] = Field(alias="databaseSubnetCidrs",
                                                   json_schema_extra=_allowed("a list of IPv4 CIDRs"))
    nat_gateway_per_az: bool = Field(alias="natGatewayPerAz",
                                     json_schema_extra=_allowed("true or false"))
    interface_endpoints: bool = Field(alias="interfaceEndpoints",
                                      json_schema_extra=_allowed("true or false"))
    flow_log_retention_days: int = Field(alias="flowLogRetentionDays", json_schema_extra=_allowed(
        "one of " + ", ".join(str(d) for d in LOG_RETENTION_DAYS if d >= SECURITY_LOG_MIN_DAYS)))

    admin_cidrs: tuple[str, ...] = Field(alias="adminCidrs", json_schema_extra=_allowed(
        "a list of IPv4/IPv6 networks, never 0.0.0.0/0 or ::/0"))
    ssh_cidrs: tuple[str, ...] = Field(alias="sshCidrs", json_schema_extra=_allowed(
        "a list of IPv4/IPv6 networks, never 0.0.0.0/0 or ::/0"))

    kms_deletion_window_days: int = Field(alias="kmsDeletionWindowDays", ge=7, le=30,
                                          json_schema_extra=_allowed("an integer from 7 to 30"))
    backup_retention_days: int = Field(alias="backupRetentionDays", ge=1, le=3650,
                                       json_schema_extra=_allowed("an integer from 1 to 3650"))
    backup_noncurrent_version_days: int = Field(alias="backupNoncurrentVersionDays", ge=1, le=365,
                                                json_schema_extra=_allowed("an integer from 1 to 365"))
    access_log_retention_days: int = Field(alias="accessLogRetentionDays", ge=SECURITY_LOG_MIN_DAYS, le=3650,
                                           json_schema_extra=_allowed(f"an integer from {SECURITY_LOG_MIN_DAYS} to 3650"))

    secret_rotation_days: int = Field(alias="secretRotationDays", ge=MIN_ROTATION_DAYS, le=1000,
                                      json_schema_extra=_allowed(f"an integer from {MIN_ROTATION_DAYS} to 1000"))
    secret_recovery_window_days: int = Field(alias="secretRecoveryWindowDays", ge=7, le=30,
                                             json_schema_extra=_allowed("an integer from 7 to 30"))
    smtp_host: str = Field(alias="smtpHost", pattern=r"^$|^[A-Za-z0-9.-]+$",
                           json_schema_extra=_allowed("a host name, or empty"))
    smtp_port: int = Field(alias="smtpPort", json_schema_extra=_allowed("587 or 25 (the SMTP ports the API hosts may reach)"))
    smtp_user: str = Field(alias="smtpUser", json_schema_extra=_allowed("a user name, or empty"))
    email_from: str = Field(alias="emailFrom", pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$",
                            json_schema_extra=_allowed("an e-mail address, or empty"))

    domain_name: str = Field(alias="domainName",
                             pattern=r"^$|^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", max_length=253,
                             json_schema_extra=_allowed("a lower-case DNS name such as api.example.com, or empty"))
    hosted_zone_id: str = Field(alias="hostedZoneId", pattern=r"^$|^Z[A-Z0-9]{1,31}$",
                                json_schema_extra=_allowed("a Route 53 hosted zone id such as Z0123456789ABC, or empty"))
    certificate_arn: str = Field(
        alias="certificateArn",
        pattern=r"^$|^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$",
        json_schema_extra=_allowed("an ACM certificate ARN, or empty"))
    allow_http_only: bool = Field(alias="allowHttpOnly", json_schema_extra=_allowed(
        "true only for a throw-away staging stack without a certificate"))
    ssl_policy: str = Field(alias="sslPolicy", json_schema_extra=_allowed(
        "one of " + ", ".join(TLS13_POLICIES)))
    maintenance: bool = Field(json_schema_extra=_allowed("true or false"))
    deletion_protection: bool = Field(alias="deletionProtection", json_schema_extra=_allowed(
        "true or false (true in prod)"))
    health_check_path: str = Field(alias="healthCheckPath", pattern=r"^/[A-Za-z0-9._~/-]*$",
                                   max_length=1024,
                                   json_schema_extra=_allowed("an absolute URL path such as /health/"))
    app_port: int = Field(alias="appPort", ge=1, le=65535, json_schema_extra=_allowed(
        "a TCP port from 1 to 65535 other than 22"))

    api_instance_type: str = Field(alias="apiInstanceType", pattern=_INSTANCE_TYPE,
                                   json_schema_extra=_allowed("an EC2 instance type such as c6i.xlarge"))
    api_min_size: int = Field(alias="apiMinSize", ge=1, le=100, json_schema_extra=_allowed(
        "an integer from 1 to 100 (prod at least 2)"))
    api_max_size: int = Field(alias="apiMaxSize", ge=1, le=100, json_schema_extra=_allowed(
        "an integer from 1 to 100, at least apiMinSize"))
    api_desired_capacity: int = Field(alias="apiDesiredCapacity", ge=1, le=100,
                                      json_schema_extra=_allowed("an integer between apiMinSize and apiMaxSize"))
    api_root_volume_gb: int = Field(alias="apiRootVolumeGb", ge=20, le=16384,
                                    json_schema_extra=_allowed("an integer from 20 to 16384"))
    api_max_instance_lifetime_days: int = Field(alias="apiMaxInstanceLifetimeDays", ge=0, le=365,
                                                json_schema_extra=_allowed("0 (off) or days from 1 to 365"))
    api_cpu_target_percent: int = Field(alias="apiCpuTargetPercent", ge=10, le=90,
                                        json_schema_extra=_allowed("an integer from 10 to 90"))
    app_artifact_url: str = Field(alias="appArtifactUrl",
                                  pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S*\{version\}\S*$",
                                  json_schema_extra=_allowed(
                                      "an s3://bucket/key URL containing '{version}'"))
    app_version: str = Field(alias="appVersion", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$",
                             json_schema_extra=_allowed("a release name such as 1.4.2 (letters, digits, . _ + -)"))

    db_engine_version: str = Field(alias="dbEngineVersion", pattern=r"^\d+(\.\d+)?$",
                                   json_schema_extra=_allowed(
                                       "a PostgreSQL version with major " + ", ".join(map(str, POSTGRES_MAJORS))
                                       + " such as 16 or 16.8"))
    db_instance_class: str = Field(alias="dbInstanceClass", pattern=r"^db\.[a-z0-9]+\.[a-z0-9]+$",
                                   json_schema_extra=_allowed("an RDS instance class such as db.m6g.xlarge"))
    db_allocated_storage_gb: int = Field(alias="dbAllocatedStorageGb", ge=20, le=65536,
                                         json_schema_extra=_allowed("an integer from 20 to 65536"))
    db_max_allocated_storage_gb: int = Field(alias="dbMaxAllocatedStorageGb", ge=20, le=65536,
                                             json_schema_extra=_allowed(
                                                 "an integer from 20 to 65536, at least dbAllocatedStorageGb"))
    db_multi_az: bool = Field(alias="dbMultiAz", json_schema_extra=_allowed("true or false"))
    db_backup_retention_days: int = Field(alias="dbBackupRetentionDays", ge=1, le=35,
                                          json_schema_extra=_allowed("an integer from 1 to 35"))
    db_name: str = Field(alias="dbName", pattern=r"^[a-z][a-z0-9_]{0,62}$",
                         json_schema_extra=_allowed("a lower-case identifier (letters, digits, _), at most 63"))
    db_performance_insights_retention_days: int = Field(
        alias="dbPerformanceInsightsRetentionDays",
        json_schema_extra=_allowed("7, 731, or a multiple of 31 up to 713"))
    db_monitoring_interval_seconds: int = Field(alias="dbMonitoringIntervalSeconds",
                                                json_schema_extra=_allowed(
                                                    "one of " + ", ".join(map(str, RDS_MONITORING_INTERVALS))))
    data_log_retention_days: int = Field(alias="dataLogRetentionDays", json_schema_extra=_allowed(
        "one of " + ", ".join(str(d) for d in LOG_RETENTION_DAYS if d >= SECURITY_LOG_MIN_DAYS)))

    redis_engine_version: str = Field(alias="redisEngineVersion", json_schema_extra=_allowed(
        "one of " + ", ".join(REDIS_VERSIONS)))
    redis_node_type: str = Field(alias="redisNodeType", pattern=r"^cache\.[a-z0-9]+\.[a-z0-9]+$",
                                 json_schema_extra=_allowed("an ElastiCache node type such as cache.m6g.large"))
    redis_num_nodes: int = Field(alias="redisNumNodes", ge=1, le=6, json_schema_extra=_allowed(
        "an integer from 1 to 6 (prod at least 2)"))
    redis_snapshot_retention_days: int = Field(alias="redisSnapshotRetentionDays", ge=1, le=35,
                                               json_schema_extra=_allowed("an integer from 1 to 35"))

    waf_enabled: bool = Field(alias="wafEnabled", json_schema_extra=_allowed("true or false (true in prod)"))
    waf_rate_limit: int = Field(alias="wafRateLimit", ge=WAF_RATE_LIMIT_RANGE[0], le=WAF_RATE_LIMIT_RANGE[1],
                                json_schema_extra=_allowed(
                                    f"an integer from {WAF_RATE_LIMIT_RANGE[0]} to {WAF_RATE_LIMIT_RANGE[1]:,}"
                                    " (requests per IP in 5 minutes)"))
    waf_mode: str = Field(alias="wafMode", json_schema_extra=_allowed("'block' or 'count'"))
    waf_log_retention_days: int = Field(alias="wafLogRetentionDays", json_schema_extra=_allowed(
        "one of " + ", ".join(str(d) for d in LOG_RETENTION_DAYS if d >= SECURITY_LOG_MIN_DAYS)))

    release_steps: bool = Field(alias="releaseSteps", json_schema_extra=_allowed("true or false"))
    pre_migration_snapshot: bool = Field(alias="preMigrationSnapshot",
                                         json_schema_extra=_allowed("true or false"))
    migration_lock_timeout_seconds: int = Field(alias="migrationLockTimeoutSeconds", ge=1, le=60,
                                                json_schema_extra=_allowed("an integer from 1 to 60"))
    migration_lock_attempts: int = Field(alias="migrationLockAttempts", ge=1, le=10,
                                         json_schema_extra=_allowed("an integer from 1 to 10"))
    # Below the migrate function's 900 s, which must also cover the lock attempts and the rest.
    migration_statement_timeout_seconds: int = Field(alias="migrationStatementTimeoutSeconds", ge=10, le=600,
                                                     json_schema_extra=_allowed("an integer from 10 to 600"))

    monitoring_instance_type: str = Field(alias="monitoringInstanceType", pattern=_INSTANCE_TYPE,
                                          json_schema_extra=_allowed("an EC2 instance type such as t3.large"))
    monitoring_volume_gb: int = Field(alias="monitoringVolumeGb", ge=20, le=16384,
                                      json_schema_extra=_allowed("an integer from 20 to 16384"))
    alarm_email: str = Field(alias="alarmEmail", pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$",
                             json_schema_extra=_allowed("an e-mail address, or empty"))
    backup_schedule: str = Field(alias="backupSchedule", pattern=r"^[\w*,:./ -]+$",
                                 json_schema_extra=_allowed("a systemd OnCalendar expression"))
    restore_drill_schedule: str = Field(alias="restoreDrillSchedule", pattern=r"^[\w*,:./ -]+$",
                                        json_schema_extra=_allowed("a systemd OnCalendar expression"))

    # --- derived values ------------------------------------------------------------
    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def db_major_version(self) -> int:
        return int(self.db_engine_version.split(".")[0])

    @property
    def db_parameter_group_family(self) -> str:
        return f"postgres{self.db_major_version}"

    @property
    def redis_parameter_group_family(self) -> str:
        return "redis7"

    @property
    def https_enabled(self) -> bool:
        return bool(self.certificate_arn or (self.domain_name and self.hosted_zone_id))

    @property
    def app_artifact(self) -> str:
        return self.app_artifact_url.replace("{version}", self.app_version)

    @property
    def app_artifact_bucket(self) -> str:
        return self.app_artifact.removeprefix("s3://").split("/", 1)[0]

    @property
    def app_artifact_key(self) -> str:
        return self.app_artifact.removeprefix("s3://").split("/", 1)[1]


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    allowed: str
    show_value: bool = True

    def __str__(self) -> str:
        if not self.show_value:
            return f"{self.key}: {self.allowed}"
        shown = json.dumps(value_for_display(self.value))
        return f"{self.key} = {shown} is not allowed: {self.allowed}"


def value_for_display(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    # Config arrives as text; show numbers and booleans as the user typed them.
    if isinstance(value, str) and re.fullmatch(r"-?\d+|true|false", value):
        return json.loads(value)
    return value


class ConfigError(Exception):
    """Raised before any resource exists. Each line of str(error) is one problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(f"invalid configuration: {p}" for p in problems))


def full_key(alias: str) -> str:
    return alias if ":" in alias else f"{PROJECT}:{alias}"


def _allowed_text(field_name: str) -> str:
    info = StackConfig.model_fields[field_name]
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "allowed" in extra:
        return str(extra["allowed"])
    return "a valid value"


def _alias_to_field() -> dict[str, str]:
    return {(info.alias or name): name for name, info in StackConfig.model_fields.items()}


def parse_stack_config(raw: dict[str, Any]) -> StackConfig:
    """Build the config from raw values keyed by Pulumi.yaml key, and check every rule."""
    by_alias = _alias_to_field()
    problems = unknown_key_problems(raw)
    for alias in by_alias:
        if raw.get(alias) is None:
            problems.append(Problem(full_key(alias), None, "a value (the key is required)"))
    if problems:
        raise ConfigError(problems)
    problems = _boolean_problems(raw)
    if problems:
        raise ConfigError(problems)
    try:
        cfg = StackConfig.model_validate(raw)
    except ValidationError as err:
        for e in err.errors():
            alias = str(e["loc"][0]) if e["loc"] else ""
            name = by_alias.get(alias, alias)
            problems.append(Problem(full_key(alias), raw.get(alias, e.get("input")),
                                    _allowed_text(name) if name in StackConfig.model_fields else e["msg"]))
        raise ConfigError(_dedupe(problems)) from None
    problems.extend(check_rules(cfg))
    if problems:
        raise ConfigError(_dedupe(problems))
    return cfg


def _declared_keys() -> list[str]:
    return [*_alias_to_field(), *SECRET_KEYS]


def unknown_key_problems(keys: Iterable[str]) -> list[Problem]:
    """Keys of the project namespace that Pulumi.yaml does not declare, with the likely intended key.

    A misspelt key would otherwise be ignored and its default used in silence."""
    declared = _declared_keys()
    by_lower = {k.lower(): k for k in declared}
    problems = []
    for key in keys:
        short = key.removeprefix(f"{PROJECT}:")
        if ":" in short or short in declared:
            continue
        guess = by_lower.get(short.lower()) or next(iter(difflib.get_close_matches(short, declared, n=1, cutoff=0.6)), None)
        hint = f" (did you mean {guess}?)" if guess else ""
        problems.append(Problem(full_key(short), "[not shown]" if guess in SECRET_KEYS else None,
                                f"unknown key, not declared in Pulumi.yaml{hint}", show_value=False))
    return problems


_BOOLEAN_ALIASES = {alias for alias, name in _alias_to_field().items()
                    if StackConfig.model_fields[name].annotation is bool}


def _boolean_problems(raw: dict[str, Any]) -> list[Problem]:
    """Booleans are YAML's true/false only: "yes", "on" or "1" are refused, not guessed at."""
    return [Problem(full_key(alias), raw[alias], "true or false (a YAML boolean, unquoted)")
            for alias in sorted(_BOOLEAN_ALIASES & raw.keys())
            if not isinstance(raw[alias], bool) and raw[alias] not in ("true", "false")]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


# --- rules that span several keys or need more than a type check -----------------------

def _network(text: str, version: Optional[int] = 4) -> Optional[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    if version is not None and net.version != version:
        return None
    return net


_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Rule = Callable[[StackConfig], Iterator[Problem]]


def _bad(alias: str, value: Any, allowed: str) -> Problem:
    return Problem(full_key(alias), value, allowed)


def _vpc_rules(cfg: StackConfig) -> Iterator[Problem]:
    vpc = _network(cfg.vpc_cidr)
    if vpc is None or not 16 <= vpc.prefixlen <= 28:
        yield _bad("vpcCidr", cfg.vpc_cidr, _allowed_text("vpc_cidr"))
    elif not vpc.is_private:
        yield _bad("vpcCidr", cfg.vpc_cidr, "a private (RFC 1918) IPv4 network such as 10.20.0.0/16")
    if cfg.is_prod and cfg.az_count < 3:
        yield _bad("azCount", cfg.az_count, "at least 3 when environment is prod")


def _subnet_tiers(cfg: StackConfig) -> tuple[tuple[str, tuple[str, ...], int], ...]:
    """(key, CIDRs, fewest addresses per subnet) of each tier."""
    return (
        # An application load balancer needs subnets of at least /27.
        ("publicSubnetCidrs", cfg.public_subnet_cidrs, 32),
        # The application tier holds the API hosts at their maximum, the monitoring host,
        # Lambda ENIs and interface endpoint ENIs: ask for at least a /24 per AZ.
        ("privateSubnetCidrs", cfg.private_subnet_cidrs, 256),
        ("databaseSubnetCidrs", cfg.database_subnet_cidrs, 16),
    )


def _subnet_rules(cfg: StackConfig) -> Iterator[Problem]:
    vpc = _network(cfg.vpc_cidr)
    placed: list[tuple[str, _IPNetwork]] = []  # every subnet checked so far, across the tiers
    for alias, cidrs, min_hosts in _subnet_tiers(cfg):
        if len(cidrs) != cfg.az_count:
            yield _bad(alias, cidrs, f"exactly one CIDR per AZ: {cfg.az_count} entries (azCount)")
            continue
        for cidr in cidrs:
            problem = _subnet_problem(cidr, min_hosts, vpc, cfg.vpc_cidr, placed)
            if problem is not None:
                yield _bad(alias, cidrs, problem)
                break


def _subnet_problem(cidr: str, min_hosts: int, vpc: Optional[_IPNetwork], vpc_cidr: str,
                    placed: list[tuple[str, _IPNetwork]]) -> Optional[str]:
    """What is wrong with one subnet of a tier, or None (and the subnet joins `placed`)."""
    net = _network(cidr)
    if net is None:
        return f"IPv4 networks in CIDR form; {cidr!r} is not one"
    if not 16 <= net.prefixlen <= 28:
        return f"subnet prefixes from /16 to /28; {cidr} is /{net.prefixlen}"
    if net.num_addresses < min_hosts:
        return f"subnets of at least {min_hosts} addresses for this tier; {cidr} has {net.num_addresses}"
    if vpc is not None and not net.subnet_of(vpc):  # type: ignore[arg-type]
        return f"subnets inside vpcCidr {vpc_cidr}; {cidr} is outside it"
    clash = next((other for other, onet in placed if onet.overlaps(net)), None)
    if clash is not None:
        return f"non-overlapping subnets; {cidr} overlaps {clash}"
    placed.append((cidr, net))
    return None


def _access_cidr_rules(cfg: StackConfig) -> Iterator[Problem]:
    for alias, cidrs in (("adminCidrs", cfg.admin_cidrs), ("sshCidrs", cfg.ssh_cidrs)):
        for cidr in cidrs:
            net = _network(cidr, version=None)
            if net is None:
                yield _bad(alias, cidrs, f"IPv4 or IPv6 networks in CIDR form (no host bits); {cidr!r} is not one")
                break
            if net.prefixlen == 0:
                yield _bad(alias, cidrs, f"specific networks; {cidr} opens the port to the whole internet")
                break


def _log_and_mail_rules(cfg: StackConfig) -> Iterator[Problem]:
    for alias, field_name in (("flowLogRetentionDays", "flow_log_retention_days"),
                              ("dataLogRetentionDays", "data_log_retention_days"),
                              ("wafLogRetentionDays", "waf_log_retention_days")):
        days = getattr(cfg, field_name)
        if days not in LOG_RETENTION_DAYS or days < SECURITY_LOG_MIN_DAYS:
            yield _bad(alias, days, _allowed_text(field_name))
    if cfg.smtp_port not in (25, 587):
        yield _bad("smtpPort", cfg.smtp_port, _allowed_text("smtp_port"))


def _tls_rules(cfg: StackConfig) -> Iterator[Problem]:
    if cfg.allow_http_only and cfg.is_prod:
        yield _bad("allowHttpOnly", cfg.allow_http_only, "false when environment is prod: prod serves HTTPS only")
    elif cfg.allow_http_only and cfg.https_enabled:
        yield _bad("allowHttpOnly", cfg.allow_http_only,
                   "false when a certificate is configured (certificateArn, or domainName + hostedZoneId): "
                   "HTTP then only redirects")
    if cfg.domain_name and not cfg.hosted_zone_id and not cfg.certificate_arn:
        yield _bad("hostedZoneId", cfg.hosted_zone_id,
                   "the Route 53 zone of domainName (or set certificateArn) so the certificate can be validated")
    if cfg.certificate_arn and not cfg.domain_name:
        # The hosts' ALLOWED_HOSTS, the health check's Host and the smoke tests' TLS checks all
        # need the name the certificate is for.
        yield _bad("domainName", cfg.domain_name, "the host name certificateArn is issued for")
    if not cfg.https_enabled and not cfg.allow_http_only:
        yield _bad("certificateArn", cfg.certificate_arn,
                   "an ACM certificate ARN, or domainName + hostedZoneId"
                   + ("" if cfg.is_prod else ", or allowHttpOnly true (staging only)"))
    if cfg.ssl_policy not in TLS13_POLICIES:
        yield _bad("sslPolicy", cfg.ssl_policy, _allowed_text("ssl_policy"))


def _edge_rules(cfg: StackConfig) -> Iterator[Problem]:
    """The web firewall, deletion protection (load balancer, database) and the port the
    load balancer forwards to."""
    if cfg.is_prod and not cfg.waf_enabled:
        yield _bad("wafEnabled", cfg.waf_enabled, "true when environment is prod")
    if cfg.waf_mode not in WAF_MODES:
        yield _bad("wafMode", cfg.waf_mode, _allowed_text("waf_mode"))
    if cfg.is_prod and not cfg.deletion_protection:
        yield _bad("deletionProtection", cfg.deletion_protection, "true when environment is prod")
    if cfg.app_port == 22:
        yield _bad("appPort", cfg.app_port, _allowed_text("app_port"))


def _api_host_rules(cfg: StackConfig) -> Iterator[Problem]:
    if cfg.is_prod and cfg.api_min_size < 2:
        yield _bad("apiMinSize", cfg.api_min_size, "at least 2 when environment is prod (two hosts for availability)")
    if cfg.api_max_size < cfg.api_min_size:
        yield _bad("apiMaxSize", cfg.api_max_size, f"at least apiMinSize ({cfg.api_min_size})")
    if not cfg.api_min_size <= cfg.api_desired_capacity <= cfg.api_max_size:
        yield _bad("apiDesiredCapacity", cfg.api_desired_capacity,
                   f"between apiMinSize ({cfg.api_min_size}) and apiMaxSize ({cfg.api_max_size})")
    yield from _connection_budget_rules(cfg)


def _connection_budget_rules(cfg: StackConfig) -> Iterator[Problem]:
    """The API hosts at apiMaxSize plus one extra during a refresh must fit the database's
    max_connections with everything else that connects (components/connection_budget.py)."""
    try:
        most = max_api_hosts(cfg.api_instance_type, max_connections())
    except ValueError:
        yield _bad("apiInstanceType", cfg.api_instance_type,
                   "a size of nano to xlarge or Nxlarge (the database connection budget counts its vCPUs)")
        return
    if cfg.api_max_size > most:
        yield _bad("apiMaxSize", cfg.api_max_size,
                   f"at most {most} with apiInstanceType {cfg.api_instance_type}: {most} hosts and one more during a "
                   f"refresh fill the database's max_connections {max_connections()}")


def _database_rules(cfg: StackConfig) -> Iterator[Problem]:
    if cfg.db_major_version not in POSTGRES_MAJORS:
        yield _bad("dbEngineVersion", cfg.db_engine_version, _allowed_text("db_engine_version"))
    if cfg.db_max_allocated_storage_gb < cfg.db_allocated_storage_gb:
        yield _bad("dbMaxAllocatedStorageGb", cfg.db_max_allocated_storage_gb,
                   f"at least dbAllocatedStorageGb ({cfg.db_allocated_storage_gb})")
    pi = cfg.db_performance_insights_retention_days
    if not (pi in (7, 731) or (pi % 31 == 0 and 31 <= pi <= 713)):
        yield _bad("dbPerformanceInsightsRetentionDays", pi, _allowed_text("db_performance_insights_retention_days"))
    if cfg.db_monitoring_interval_seconds not in RDS_MONITORING_INTERVALS:
        yield _bad("dbMonitoringIntervalSeconds", cfg.db_monitoring_interval_seconds,
                   _allowed_text("db_monitoring_interval_seconds"))
    if cfg.is_prod and not cfg.db_multi_az:
        yield _bad("dbMultiAz", cfg.db_multi_az, "true when environment is prod")


def _cache_rules(cfg: StackConfig) -> Iterator[Problem]:
    if cfg.redis_engine_version not in REDIS_VERSIONS:
        yield _bad("redisEngineVersion", cfg.redis_engine_version, _allowed_text("redis_engine_version"))
    if cfg.is_prod and cfg.redis_num_nodes < 2:
        yield _bad("redisNumNodes", cfg.redis_num_nodes, "at least 2 when environment is prod (automatic failover)")


def _migration_rules(cfg: StackConfig) -> Iterator[Problem]:
    # The lock attempts, the doubling waits between them (scripts/dbops/migrations.py Timeouts,
    # from 1 s, at most 30 s) and the statement timeout: one file's budget.
    waits = sum(min(2 ** (attempt - 2), 30) for attempt in range(2, cfg.migration_lock_attempts + 1))
    lock_waits = cfg.migration_lock_timeout_seconds * cfg.migration_lock_attempts + waits
    if lock_waits + cfg.migration_statement_timeout_seconds > 840:
        yield _bad("migrationStatementTimeoutSeconds", cfg.migration_statement_timeout_seconds,
                   f"at most {max(0, 840 - lock_waits)} with {lock_waits} s of lock waits (migrationLockTimeoutSeconds x "
                   "migrationLockAttempts, and the waits between attempts): a migration file must fit in the migrate function's 900 s")


# In this order: a key named twice keeps its first problem (the type check's, then these).
RULES: tuple[Rule, ...] = (
    _vpc_rules, _subnet_rules, _access_cidr_rules, _log_and_mail_rules, _tls_rules, _edge_rules,
    _api_host_rules, _database_rules, _cache_rules, _migration_rules,
)


def check_rules(cfg: StackConfig) -> list[Problem]:
    """The rules that span several keys or need more than a type check, one concern each."""
    return [problem for rule in RULES for problem in rule(cfg)]


# --- documented placeholder values ----------------------------------------------------

# Names RFC 2606/6761 reserve for documentation and tests, the hosted zone id the docs and
# the prod stack file show, documentation networks (RFC 5737, RFC 3849) and the example account.
PLACEHOLDER_DOMAIN = re.compile(r"(^|\.)(example\.(com|net|org)|[^.]+\.(example|test|invalid|localhost))$")
PLACEHOLDER_ZONE = re.compile(r"EXAMPLE")
PLACEHOLDER_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                             ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
PLACEHOLDER_ACCOUNT = "123456789012"


def _placeholder_network(text: str) -> bool:
    net = _network(text, version=None)
    return net is not None and any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
                                   for p in PLACEHOLDER_NETWORKS)


def placeholder_problems(cfg: StackConfig) -> list[Problem]:
    """Values that stand in for the operator's own: refused for prod, warned about for staging."""
    problems: list[Problem] = []
    what = "your own value, not a documented placeholder"
    if cfg.domain_name and PLACEHOLDER_DOMAIN.search(cfg.domain_name):
        problems.append(Problem(full_key("domainName"), cfg.domain_name, f"{what} (reserved example/test names)"))
    if cfg.hosted_zone_id and PLACEHOLDER_ZONE.search(cfg.hosted_zone_id):
        problems.append(Problem(full_key("hostedZoneId"), cfg.hosted_zone_id, f"{what} (the Route 53 zone of domainName)"))
    if PLACEHOLDER_ACCOUNT in cfg.certificate_arn:
        problems.append(Problem(full_key("certificateArn"), cfg.certificate_arn, f"{what} (the example account)"))
    for alias, address in (("alarmEmail", cfg.alarm_email), ("emailFrom", cfg.email_from)):
        if address and PLACEHOLDER_DOMAIN.search(address.rsplit("@", 1)[-1]):
            problems.append(Problem(full_key(alias), address, f"{what} (reserved example/test domains)"))
    for alias, cidrs in (("adminCidrs", cfg.admin_cidrs), ("sshCidrs", cfg.ssh_cidrs)):
        if any(_placeholder_network(c) for c in cidrs):
            problems.append(Problem(full_key(alias), cidrs, f"{what} (documentation networks)"))
    return problems


# --- reading from pulumi.Config ------------------------------------------------------

_ARRAY_KEYS = {alias for alias, name in _alias_to_field().items()
               if StackConfig.model_fields[name].annotation == tuple[str, ...]}


@dataclass(frozen=True)
class SecretSettings:
    """Credentials from secret config: None when not set, else a secret Output."""

    values: dict[str, Optional[pulumi.Output[str]]]

    def get(self, key: str) -> Optional[pulumi.Output[str]]:
        return self.values.get(key)


def _read_raw(config: pulumi.Config, aws_config: pulumi.Config) -> dict[str, Any]:
    raw: dict[str, Any] = {"aws:region": aws_config.get("region")}
    for alias in _alias_to_field():
        if alias == "aws:region":
            continue
        text = config.get(alias)
        if text is None:
            continue
        value: Any = text
        if alias in _ARRAY_KEYS:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text  # left as the raw string: the type check names the key
            if isinstance(value, list):
                value = tuple(value)
        raw[alias] = value
    return raw


def missing_material_problems() -> list[Problem]:
    """Files an operator adds before the first real `up` (docs/security.md#tls-to-the-database)."""
    from scripts.lib import rds_ca

    if rds_ca.bundle_sha256() is not None:
        return []
    return [Problem(rds_ca.PACKAGE_PATH, None, "missing: add AWS's RDS CA bundle (docs/security.md#tls-to-the-database); "
                    "every database client verifies the server against it and refuses to connect without it",
                    show_value=False)]


def _readiness(cfg: StackConfig, refuse: bool) -> list[Problem]:
    """Problems that stop `pulumi preview/up` (refuse) and are warnings otherwise: placeholders
    for prod (a warning for staging), a missing RDS CA bundle for every stack."""
    placeholders = placeholder_problems(cfg)
    material = missing_material_problems()
    consequence = ("`pulumi preview/up` refuses it for prod" if cfg.is_prod
                   else "staging warns only; replace it before its `pulumi up` (an example zone or domain cannot "
                        "validate the certificate, example addresses reach nobody)")
    for problem in placeholders:
        pulumi.log.warn(f"placeholder value {problem.key} = {json.dumps(value_for_display(problem.value))}: {consequence}")
    for problem in material:
        pulumi.log.warn(f"{problem}: `pulumi preview/up` refuses to deploy without it")
    if not refuse:
        return []
    return material + (placeholders if cfg.is_prod else [])


def _all_config_keys() -> set[str]:
    """Every key the engine passed to the program, declared or not."""
    return set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.config.get_config_env())


def load_stack_config(placeholders: Literal["refuse", "warn"] = "refuse") -> tuple[StackConfig, SecretSettings]:
    """Read and validate the stack's configuration. Raises ConfigError; registers nothing.

    Documented placeholder values (docs/configuration.md) are refused for prod and reported as
    warnings for staging, a missing RDS CA bundle is refused for every stack; the offline plan
    asks for warnings only (placeholders="warn"), because it reviews the program, not the
    operator's settings and files."""
    config = pulumi.Config(PROJECT)
    unknown = unknown_key_problems(k for k in _all_config_keys() if k.startswith(f"{PROJECT}:"))
    if unknown:
        # The root cause alone: a misspelt key's default would otherwise add indirect errors.
        raise ConfigError(unknown)
    cfg_or_error: Optional[StackConfig] = None
    problems: list[Problem] = []
    try:
        cfg_or_error = parse_stack_config(_read_raw(config, pulumi.Config("aws")))
    except ConfigError as err:
        problems.extend(err.problems)
    if cfg_or_error is not None:
        problems.extend(_readiness(cfg_or_error, refuse=placeholders == "refuse"))

    secrets: dict[str, Optional[pulumi.Output[str]]] = {}
    for key in SECRET_KEYS:
        plain = config.get(key)
        if not plain:
            secrets[key] = None
            continue
        if not pulumi.runtime.is_config_secret(full_key(key)):
            problems.append(Problem(full_key(key), "[not shown]",
                                    f"a secret value: set it with `pulumi config set --secret {key} ...`"))
            continue
        secrets[key] = config.require_secret(key)
    if problems or cfg_or_error is None:
        raise ConfigError(problems)
    return cfg_or_error, SecretSettings(secrets)
