"""RDS PostgreSQL under the mock engine, both stacks: placement, encryption, credentials,
backups and windows, the parameter group (every spec value in RDS units), observability,
outputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pulumi
import pytest

from components.database import Database, DatabaseArgs
from components.postgres_parameters import GIB, PARAMETERS, effective_value
from harness.mock_engine import Plan, PlannedResource, run_program
from tests.unit.windows import daily_length_minutes, daily_minutes, weekly_minutes

RDS = "aws:rds/instance:Instance"
PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"

# The spec's postgresql.conf (3.2.2) in RDS units, worked out by hand:
# 8 kB pages for shared_buffers/effective_cache_size/wal_buffers, kB for *_work_mem,
# MB for min/max_wal_size.
SPEC_IN_RDS_UNITS = {
    "shared_buffers": "262144",          # 2GB / 8kB
    "effective_cache_size": "786432",    # 6GB / 8kB
    "maintenance_work_mem": "524288",    # 512MB / 1kB
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "2048",               # 16MB / 8kB
    "default_statistics_target": "100",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "work_mem": "16384",                 # 16MB / 1kB
    "min_wal_size": "1024",              # 1GB / 1MB
    "max_wal_size": "4096",              # 4GB / 1MB
    "max_connections": "100",
}
MEMORY_SIZED = {"shared_buffers", "effective_cache_size", "maintenance_work_mem"}
STATIC = {"shared_buffers", "max_connections", "wal_buffers", "shared_preload_libraries", "rds.force_ssl"}
# DBInstanceClassMemory is the class's memory minus what RDS keeps for the OS and its agents.
PROD_CLASS_MEMORY = 15 * GIB          # db.m6g.xlarge, 16 GiB
STAGING_CLASS_MEMORY = int(3.4 * GIB)  # db.t4g.medium, 4 GiB
SIZES = ("micro", "small", "medium", "large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")


def instance(plan: Plan) -> PlannedResource:
    return plan.one(RDS)


def parameters(plan: Plan) -> dict[str, dict[str, str]]:
    group = plan.one(PARAMETER_GROUP)
    return {p["name"]: p for p in group.inputs["parameters"]}


def data_key_arn(plan: Plan) -> str:
    return str(plan.outputs["kms_key_arn"])


# --- placement and exposure ------------------------------------------------------------

def test_database_is_private_in_the_database_subnets_behind_its_group(plan: Plan) -> None:
    db = instance(plan).inputs
    assert db["publiclyAccessible"] is False
    assert db["port"] == 5432
    assert db["vpcSecurityGroupIds"] == [plan.outputs["security_group_ids"]["database"]]
    subnet_group = plan.one("aws:rds/subnetGroup:SubnetGroup")
    assert db["dbSubnetGroupName"] == subnet_group.outputs["name"]
    assert subnet_group.inputs["subnetIds"] == plan.outputs["database_subnet_ids"]


def test_database_depends_only_on_what_it_uses(plan: Plan) -> None:
    allowed = {"data-key", "network-db-subnets", "sg-database"}
    for resource in [instance(plan), *plan.children_of("postgres")]:
        outside = {d for d in resource.depends_on if not d.startswith("postgres-")} - allowed
        assert not outside, f"{resource.name} waits for {outside}"


# --- encryption and credentials --------------------------------------------------------

def test_storage_secret_and_insights_are_encrypted_with_the_data_key(plan: Plan) -> None:
    db = instance(plan).inputs
    assert db["storageEncrypted"] is True
    assert db["storageType"] == "gp3"
    assert db["kmsKeyId"] == data_key_arn(plan)
    assert db["masterUserSecretKmsKeyId"] == data_key_arn(plan)
    assert db["performanceInsightsKmsKeyId"] == data_key_arn(plan)
    assert db["caCertIdentifier"] == "rds-ca-rsa2048-g1"


def test_no_password_anywhere_rds_manages_the_master_secret(plan: Plan) -> None:
    db = instance(plan).inputs
    assert db["manageMasterUserPassword"] is True
    assert db["username"] == "psychology_admin"
    assert not {"password", "passwordWo", "passwordWoVersion"} & set(db)
    assert "password" not in json.dumps(plan.outputs).lower()


def test_storage_autoscales_and_versions_stay_current(plan: Plan) -> None:
    db = instance(plan).inputs
    assert db["maxAllocatedStorage"] > db["allocatedStorage"] >= 20
    assert db["engine"] == "postgres"
    assert db["engineVersion"] == "16"
    assert db["autoMinorVersionUpgrade"] is True
    assert db["allowMajorVersionUpgrade"] is False
    assert db["copyTagsToSnapshot"] is True


# --- availability and protection, per stack -------------------------------------------

def test_prod_is_multi_az_deletion_protected_with_30_day_backups_and_a_final_snapshot(prod: Plan) -> None:
    db = instance(prod).inputs
    assert db["multiAz"] is True
    assert db["deletionProtection"] is True
    assert db["backupRetentionPeriod"] == 30
    assert db["skipFinalSnapshot"] is False
    assert db["finalSnapshotIdentifier"] == "psychology-api-prod-postgres-final"
    assert db["deleteAutomatedBackups"] is False
    assert db["applyImmediately"] is False  # changes wait for the maintenance window


def test_staging_is_single_az_smaller_cheaper_and_disposable(staging: Plan, prod: Plan) -> None:
    db, big = instance(staging).inputs, instance(prod).inputs
    assert db["multiAz"] is False
    assert SIZES.index(db["instanceClass"].split(".")[-1]) < SIZES.index(big["instanceClass"].split(".")[-1])
    assert db["allocatedStorage"] < big["allocatedStorage"]
    assert db["backupRetentionPeriod"] == 7
    assert db["deletionProtection"] is False
    assert db["skipFinalSnapshot"] is True
    assert "finalSnapshotIdentifier" not in db
    assert db["applyImmediately"] is True


# --- windows ---------------------------------------------------------------------------

def test_backup_window_is_the_specs_0200_moscow_time(plan: Plan) -> None:
    window = instance(plan).inputs["backupWindow"]
    start = window.split("-")[0]
    assert start == "23:00"
    for day in ("2026-01-15", "2026-07-15"):  # no DST in Moscow: same answer winter and summer
        utc = datetime.fromisoformat(f"{day}T{start}:00").replace(tzinfo=UTC)
        assert utc.astimezone(ZoneInfo("Europe/Moscow")).strftime("%H:%M") == "02:00"
    assert daily_length_minutes(window) >= 30  # RDS minimum


def test_maintenance_window_does_not_overlap_the_backup_window(plan: Plan) -> None:
    db = instance(plan).inputs
    backup = daily_minutes(db["backupWindow"])
    maintenance = weekly_minutes(db["maintenanceWindow"])
    assert len(maintenance) >= 30
    assert not backup & maintenance


# --- parameter group -------------------------------------------------------------------

def test_parameter_group_family_matches_the_engine_major(plan: Plan) -> None:
    db = instance(plan)
    group = plan.one(PARAMETER_GROUP)
    assert group.inputs["family"] == f"postgres{db.inputs['engineVersion'].split('.')[0]}"
    assert db.inputs["parameterGroupName"] == group.outputs["name"]
    assert group.outputs["name"].startswith(f"psychology-api-{plan.stack}-postgres16-")


def test_a_minor_version_gets_the_family_of_its_major() -> None:
    plan = run_program("staging", overrides={"dbEngineVersion": "15.8"})
    assert instance(plan).inputs["engineVersion"] == "15.8"
    assert plan.one(PARAMETER_GROUP).inputs["family"] == "postgres15"


def test_every_spec_parameter_carries_its_value_in_rds_units(plan: Plan) -> None:
    found = parameters(plan)
    for name, value in SPEC_IN_RDS_UNITS.items():
        assert name in found, f"{name} missing from the parameter group"
        if name in MEMORY_SIZED:
            # Proportional to the instance's memory, capped at the spec's value.
            assert found[name]["value"].startswith("LEAST({DBInstanceClassMemory")
            assert found[name]["value"].endswith(f",{value})")
        else:
            assert found[name]["value"] == value


def test_memory_sized_parameters_are_the_spec_on_prod_and_proportional_on_staging() -> None:
    by_name = {p.name: p for p in PARAMETERS}
    for name in MEMORY_SIZED:
        assert effective_value(by_name[name], PROD_CLASS_MEMORY) == SPEC_IN_RDS_UNITS[name]
    staging = {name: int(effective_value(by_name[name], STAGING_CLASS_MEMORY)) for name in MEMORY_SIZED}
    # The spec's proportions of an 8 GB machine: 1/4, 3/4 and 1/16 of the memory.
    assert staging["shared_buffers"] * 8192 == pytest.approx(STAGING_CLASS_MEMORY / 4, rel=1e-3)
    assert staging["effective_cache_size"] * 8192 == pytest.approx(STAGING_CLASS_MEMORY * 3 / 4, rel=1e-3)
    assert staging["maintenance_work_mem"] * 1024 == pytest.approx(STAGING_CLASS_MEMORY / 16, rel=1e-3)


def test_tls_is_enforced_and_slow_queries_connections_and_lock_waits_are_logged(plan: Plan) -> None:
    found = {name: p["value"] for name, p in parameters(plan).items()}
    assert found["rds.force_ssl"] == "1"
    assert "pg_stat_statements" in found["shared_preload_libraries"].split(",")
    assert 0 < int(found["log_min_duration_statement"]) <= 1000
    assert found["log_connections"] == found["log_disconnections"] == found["log_lock_waits"] == "1"
    assert int(found["idle_in_transaction_session_timeout"]) > 0
    assert found["log_parameter_max_length"] == "0"
    assert found["password_encryption"] == "scram-sha-256"


def test_static_parameters_wait_for_a_reboot_and_dynamic_ones_apply_immediately(plan: Plan) -> None:
    for name, parameter in parameters(plan).items():
        expected = "pending-reboot" if name in STATIC else "immediate"
        assert parameter["applyMethod"] == expected, name


# --- observability ---------------------------------------------------------------------

def test_performance_insights_enhanced_monitoring_and_log_exports(plan: Plan) -> None:
    db = instance(plan)
    assert db.inputs["performanceInsightsEnabled"] is True
    assert db.inputs["performanceInsightsRetentionPeriod"] == 7
    assert db.inputs["monitoringInterval"] == 60
    role = plan.one("aws:iam/role:Role", "postgres-monitoring-role")
    assert db.inputs["monitoringRoleArn"] == role.outputs["arn"]
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "monitoring.rds.amazonaws.com"}]
    attachment = plan.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "postgres-monitoring-policy")
    assert attachment.inputs["policyArn"].endswith(":policy/service-role/AmazonRDSEnhancedMonitoringRole")
    assert "postgres-monitoring-policy" in db.depends_on  # the role works before RDS uses it

    assert db.inputs["enabledCloudwatchLogsExports"] == ["postgresql", "upgrade"]
    for kind in ("postgresql", "upgrade"):
        group = plan.named(f"postgres-log-{kind}")
        assert group.inputs["name"] == f"/aws/rds/instance/{db.inputs['identifier']}/{kind}"
        assert group.inputs["kmsKeyId"] == data_key_arn(plan)
        assert group.inputs["retentionInDays"] == 365  # security-relevant: a year in both stacks
        assert group.name in db.depends_on  # exists before RDS would create it unencrypted


def test_enhanced_monitoring_off_creates_no_role() -> None:
    plan = run_program("staging", overrides={"dbMonitoringIntervalSeconds": 0})
    db = instance(plan).inputs
    assert db["monitoringInterval"] == 0
    assert "monitoringRoleArn" not in db
    assert not [r for r in plan.of_type("aws:iam/role:Role") if r.parent == "postgres"]


# --- outputs ---------------------------------------------------------------------------

def test_outputs_point_at_the_instance_and_its_managed_secret(plan: Plan) -> None:
    db = instance(plan)
    out = plan.outputs
    assert out["db_endpoint"] == db.outputs["address"]
    assert out["db_port"] == 5432
    assert out["db_name"] == "psychology"
    assert out["db_identifier"] == f"psychology-api-{plan.stack}-postgres"
    assert out["db_master_secret_arn"] == db.outputs["masterUserSecrets"][0]["secretArn"]
    assert out["db_master_secret_arn"].startswith("arn:aws:secretsmanager:eu-central-1:")
    assert not {"db_endpoint", "db_master_secret_arn"} & plan.secret_outputs


def test_component_refuses_a_family_that_does_not_match_the_engine() -> None:
    def program() -> None:
        Database("db", DatabaseArgs(
            engine_version="16", parameter_group_family="postgres15", instance_class="db.t4g.medium",
            allocated_storage_gb=20, max_allocated_storage_gb=100, multi_az=False, db_name="app",
            subnet_group_name="subnets", security_group_id="sg-1", kms_key_arn="arn:aws:kms:x",
            backup_retention_days=7, deletion_protection=False, apply_immediately=True,
            performance_insights_retention_days=7, monitoring_interval_seconds=0, log_retention_days=30,
            account_id="123456789012"))

    with pytest.raises(Exception, match="postgres15 does not match PostgreSQL 16"):
        run_program("staging", program=program)


def test_component_alone_exports_its_secret_and_user() -> None:
    def program() -> None:
        db = Database("db", DatabaseArgs(
            engine_version="16.8", parameter_group_family="postgres16", instance_class="db.t4g.medium",
            allocated_storage_gb=20, max_allocated_storage_gb=100, multi_az=False, db_name="app",
            subnet_group_name="subnets", security_group_id="sg-1", kms_key_arn="arn:aws:kms:x",
            backup_retention_days=7, deletion_protection=True, apply_immediately=False,
            performance_insights_retention_days=7, monitoring_interval_seconds=60, log_retention_days=30,
            account_id="123456789012"))
        pulumi.export("secret", db.master_secret_arn)
        pulumi.export("username", db.master_username)

    plan = run_program("staging", program=program)
    assert plan.outputs["secret"].startswith("arn:aws:secretsmanager:")
    assert plan.outputs["username"] == "psychology_admin"
    assert plan.one(RDS).inputs["finalSnapshotIdentifier"] == "psychology-api-staging-postgres-final"
    assert [r.name for r in plan.resources if r.parent is None] == ["db"]


def test_docs_parameter_table_matches_the_parameter_group() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    for parameter in PARAMETERS:
        row = next((r for r in rows if f"`{parameter.name}`" in r.split("|")[1]), None)
        assert row is not None, f"docs/architecture.md has no row for {parameter.name}"
        assert f"`{parameter.value}`" in row and parameter.apply_method in row, row
