"""The monitoring host, the alerts topic and the CloudWatch alarms under the mock engine.

Everything runs against the plans of the real program (fixtures `plans`/`plan` of
tests/conftest.py), so the monitoring part is checked as it is wired. The plan names an
archive's members only, so the operations bundle's files are taken from the component as it
renders them (`_record_bundles`, in place from this module's import on, before any plan is
made), found again by the key the plan holds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components import monitoring, monitoring_render
from components.ami import AL2023_AMI_NAME, AL2023_LATEST_PARAMETER
from components.monitoring_render import (
    BOOTSTRAP_PATH,
    BUNDLE_INSTALL_PATH,
    CHECKSUMS_FILE,
    CLOUDWATCH_NAMESPACE,
    EXPORTER_SECRETS_PATH,
    GRAFANA_ADMIN_PASSWORD_PATH,
    HOST_FILES_DIR,
    HOST_FILES_MANIFEST,
    MonitoringSettings,
)
from components.userdata import USER_DATA_LIMIT_BYTES, decode_user_data, user_data_size
from harness.mock_engine import MOCK_ACCOUNT_ID, Plan, PlannedResource, run_program

STACKS = ("staging", "prod")
INSTANCE = "aws:ec2/instance:Instance"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
BUNDLE = "aws:s3/bucketObjectv2:BucketObjectv2"
SECRET = "aws:secretsmanager/secret:Secret"
REGION = "eu-central-1"
WEBHOOK = "https://hooks.example.com/services/T000/B000/very-secret-webhook-token"
PAGERDUTY_KEY = "pd-routing-key-0123456789abcdef0123"


# bundle key -> archive path -> text, of every operations bundle the component rendered.
_RENDERED_BUNDLES: dict[str, dict[str, str]] = {}


def _record_bundles(render: Callable[[MonitoringSettings], dict[str, str]]) -> Callable[[MonitoringSettings], dict[str, str]]:
    def record(settings: MonitoringSettings) -> dict[str, str]:
        files = render(settings)
        _RENDERED_BUNDLES[monitoring_render.bundle_key(files)] = files
        return files

    record.recording = True  # type: ignore[attr-defined]
    return record


if not getattr(monitoring.ops_bundle, "recording", False):
    monitoring.ops_bundle = _record_bundles(monitoring.ops_bundle)  # type: ignore[assignment]


@pytest.fixture(scope="module")
def in_maintenance() -> dict[str, Plan]:
    return {stack: run_program(stack, overrides={"maintenance": True}) for stack in STACKS}


@pytest.fixture(scope="module")
def with_channels() -> Plan:
    return run_program("prod", overrides={"alarmEmail": "oncall@example.com"},
                       secret_overrides={"alertWebhookUrl": WEBHOOK, "pagerdutyRoutingKey": PAGERDUTY_KEY})


def host(plan: Plan) -> PlannedResource:
    return plan.one(INSTANCE, "monitoring-host")


def user_data(plan: Plan) -> str:
    return decode_user_data(host(plan).inputs["userDataBase64"])


def user_data_files(plan: Plan) -> dict[str, str]:
    """What cloud-init writes."""
    document = yaml.safe_load(user_data(plan))
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


def bundle_of(plan: Plan) -> dict[str, str]:
    """The operations bundle the plan uploads: archive path -> text."""
    key = plan.one(BUNDLE, "monitoring-ops-bundle").inputs["key"]
    assert key in _RENDERED_BUNDLES, f"no program run of this process rendered {key}"
    return _RENDERED_BUNDLES[key]


def bundle_host_files(plan: Plan) -> dict[str, tuple[str, str]]:
    """What the bundle installs on the host: path -> (text, "MODE OWNER")."""
    bundle = bundle_of(plan)
    files = {}
    for line in bundle[HOST_FILES_MANIFEST].splitlines():
        mode, owner, path = line.split()
        files[path] = (bundle[f"{HOST_FILES_DIR}{path}"], f"{mode} {owner}")
    return files


def written_files(plan: Plan) -> dict[str, str]:
    """Every file the host is given: by cloud-init, then from the operations bundle."""
    files = user_data_files(plan)
    for path, (content, _) in bundle_host_files(plan).items():
        assert path not in files, path
        files[path] = content
    return files


def role_policy(plan: Plan) -> list[dict[str, Any]]:
    document = json.loads(plan.one("aws:iam/rolePolicy:RolePolicy", "monitoring-policy").inputs["policy"])
    return document["Statement"]


def statement(plan: Plan, sid: str) -> dict[str, Any]:
    return next(s for s in role_policy(plan) if s["Sid"] == sid)


def alarm(plan: Plan, role: str) -> PlannedResource:
    return plan.one(ALARM, f"alarms-{role}")


# --- the instance ------------------------------------------------------------------------------

def test_host_sits_in_a_private_subnet_without_public_ip(plan: Plan) -> None:
    inputs = host(plan).inputs
    private = {r.id for r in plan.of_type("aws:ec2/subnet:Subnet") if "private" in r.name}
    assert inputs["subnetId"] in private
    assert inputs["associatePublicIpAddress"] is False


def test_host_requires_imdsv2_with_hop_limit_one(plan: Plan) -> None:
    metadata = host(plan).inputs["metadataOptions"]
    assert metadata["httpTokens"] == "required"
    assert metadata["httpPutResponseHopLimit"] == 1


def test_host_uses_monitoring_security_group_only(plan: Plan) -> None:
    monitoring_sg = plan.one("aws:ec2/securityGroup:SecurityGroup", "sg-monitoring").id
    assert host(plan).inputs["vpcSecurityGroupIds"] == [monitoring_sg]


def test_host_volumes_are_encrypted_gp3_with_the_data_key(plan: Plan) -> None:
    key_arn = plan.one("aws:kms/key:Key", "data-key").outputs["arn"]
    root = host(plan).inputs["rootBlockDevice"]
    assert root["encrypted"] is True and root["kmsKeyId"] == key_arn and root["volumeType"] == "gp3"
    data = plan.one("aws:ebs/volume:Volume", "monitoring-data").inputs
    expected_gb = {"staging": 50, "prod": 100}[plan.stack]
    assert data["encrypted"] is True and data["kmsKeyId"] == key_arn
    assert data["type"] == "gp3" and data["size"] == expected_gb
    assert data["availabilityZone"] == "eu-central-1a"
    assert data["finalSnapshot"] is (plan.stack == "prod")


def test_data_volume_attachment_survives_host_replacement(plan: Plan) -> None:
    attachment = plan.one("aws:ec2/volumeAttachment:VolumeAttachment", "monitoring-data-attachment")
    assert attachment.inputs["instanceId"] == host(plan).id
    assert attachment.inputs["volumeId"] == plan.one("aws:ebs/volume:Volume", "monitoring-data").id
    assert attachment.inputs["stopInstanceBeforeDetaching"] is True


def test_host_is_al2023_sized_from_config_with_detailed_monitoring(plan: Plan) -> None:
    inputs = host(plan).inputs
    assert inputs["ami"] == "ami-0c1f2e3d4b5a69788"
    assert inputs["instanceType"] == {"staging": "t3.medium", "prod": "t3.large"}[plan.stack]
    assert inputs["monitoring"] is True
    assert inputs["userDataReplaceOnChange"] is True
    assert inputs["tags"]["Name"] == f"psychology-api-{plan.stack}-monitoring"


def test_host_waits_for_its_network_path(plan: Plan) -> None:
    """First `up`: the boot script must not run before the routes, endpoints and its security
    group's rules exist (they are children of the network and security components)."""
    after = set(host(plan).depends_on)
    network_path = {r.name for r in plan.resources if r.type in (
        "aws:ec2/route:Route", "aws:ec2/routeTableAssociation:RouteTableAssociation",
        "aws:ec2/natGateway:NatGateway", "aws:ec2/vpcEndpoint:VpcEndpoint",
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule") and r.parent in ("network", "sg")}
    assert {"network-s3-endpoint", "sg-monitoring-out-443-anywhere-v4", "sg-monitoring-out-5432-database",
            "sg-database-in-5432-monitoring"} <= network_path
    assert any(name.startswith("network-private-default-") for name in network_path)
    if plan.stack == "prod":  # interface endpoints only where configured
        assert {"network-secretsmanager-endpoint", "network-endpoints-in-443-vpc"} <= network_path
    assert network_path <= after, sorted(network_path - after)


def test_host_runs_the_newest_amazon_linux_found_when_it_was_created(plan: Plan) -> None:
    """The program's AL2023 lookup (the mock engine's answer); a newer image later does not
    replace the long-lived host (it patches itself, docs/monitoring.md). The API hosts name the
    same family by Amazon's parameter, resolved at each launch."""
    assert host(plan).inputs["ami"] == "ami-0c1f2e3d4b5a69788"
    assert "ami" in host(plan).options["ignoreChanges"]
    launch_template = plan.one("aws:ec2/launchTemplate:LaunchTemplate", "api-lt")
    assert launch_template.inputs["imageId"] == f"resolve:ssm:{AL2023_LATEST_PARAMETER}"
    # The lookup's name filter matches a real AL2023 x86_64 image name; the parameter is Amazon's
    # for the same family and architecture.
    assert fnmatch.fnmatchcase("al2023-ami-2023.9.20261104.0-kernel-6.12-x86_64", AL2023_AMI_NAME)
    assert not fnmatch.fnmatchcase("al2023-ami-2023.9.20261104.0-kernel-6.12-arm64", AL2023_AMI_NAME)
    assert re.fullmatch(r"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64", AL2023_LATEST_PARAMETER)


def test_host_waits_for_bundle_and_secret_values(plan: Plan) -> None:
    assert {"monitoring-ops-bundle", "monitoring-grafana-value", "monitoring-policy", "monitoring-ssm"} <= set(host(plan).depends_on)


# --- identity -------------------------------------------------------------------------------------

def test_role_trusts_ec2_and_has_ssm_core(plan: Plan) -> None:
    trust = json.loads(plan.one("aws:iam/role:Role", "monitoring-role").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    attachments = plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert [a.inputs["policyArn"] for a in attachments if a.parent == "monitoring"] == [
        "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
    assert host(plan).inputs["iamInstanceProfile"] == f"psychology-api-{plan.stack}-monitoring"


def test_role_wildcards_only_where_the_api_requires_them(plan: Plan) -> None:
    wildcard = {s["Sid"]: s for s in role_policy(plan) if s["Resource"] == "*"}
    assert set(wildcard) == {"DiscoverApiHosts", "PublishHostMetrics"}
    assert wildcard["DiscoverApiHosts"]["Action"] == ["ec2:DescribeInstances", "ec2:DescribeAvailabilityZones"]
    assert wildcard["PublishHostMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": CLOUDWATCH_NAMESPACE}}
    for s in role_policy(plan):
        assert s["Effect"] == "Allow"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert all("*" not in action for action in actions), s


def test_role_reads_exactly_its_secrets(plan: Plan) -> None:
    grafana = plan.one(SECRET, "monitoring-grafana").outputs["arn"]
    resources = statement(plan, "ReadOwnSecrets")["Resource"]
    assert sorted(resources) == sorted([
        grafana, plan.outputs["db_backup_secret_arn"], plan.outputs["db_drill_secret_arn"],
        plan.outputs["db_monitor_secret_arn"], plan.outputs["redis_secret_arn"]])


def test_role_cannot_read_the_master_secret(plan: Plan) -> None:
    """No statement of the host's role names the RDS master secret, or any secret by wildcard;
    backup and drill run with their own logins."""
    master = plan.outputs["db_master_secret_arn"]
    for s in role_policy(plan):
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        assert master not in resources, s["Sid"]
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        if any(a.startswith("secretsmanager:") for a in actions):
            assert all(r.startswith("arn:aws:secretsmanager:") and "*" not in r for r in resources), s
    text = "\n".join(written_files(plan).values())
    assert master not in text


def test_role_uses_the_data_key_only_through_services(plan: Plan) -> None:
    key_arn = plan.one("aws:kms/key:Key", "data-key").outputs["arn"]
    kms = statement(plan, "UseDataKeyThroughServices")
    assert kms["Resource"] == key_arn
    assert sorted(kms["Condition"]["StringEquals"]["kms:ViaService"]) == [
        f"s3.{REGION}.amazonaws.com", f"secretsmanager.{REGION}.amazonaws.com", f"sns.{REGION}.amazonaws.com"]


def test_role_writes_backups_but_cannot_delete_them(plan: Plan) -> None:
    bucket_arn = plan.one("aws:s3/bucket:Bucket", "backups-bucket").outputs["arn"]
    write = statement(plan, "WriteAndReadBackups")
    assert write["Resource"] == f"{bucket_arn}/postgres/*"
    assert set(write["Action"]) == {"s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:AbortMultipartUpload"}
    assert statement(plan, "ListPendingBackupUploads") == {
        "Sid": "ListPendingBackupUploads", "Effect": "Allow", "Action": "s3:ListBucketMultipartUploads",
        "Resource": bucket_arn}
    listing = statement(plan, "ListBackups")
    assert listing["Resource"] == bucket_arn
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["postgres/*"]}}
    assert statement(plan, "ReadOpsBundle")["Resource"] == f"{bucket_arn}/ops/*"
    every_action = [a for s in role_policy(plan) for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]
    assert not [a for a in every_action if "Delete" in a]


# S3 API operation -> (IAM action, on the bucket rather than its objects). Operations the
# host's scripts may call; a new one fails the test below until it is mapped here and granted.
S3_OPERATION_ACTIONS = {
    "PutObject": ("s3:PutObject", False),
    "CreateMultipartUpload": ("s3:PutObject", False),
    "UploadPart": ("s3:PutObject", False),
    "CompleteMultipartUpload": ("s3:PutObject", False),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload", False),
    "GetObject": ("s3:GetObject", False),
    "HeadObject": ("s3:GetObject", False),
    "ListParts": ("s3:ListMultipartUploadParts", False),
    "GetObjectAttributes": ("s3:GetObjectAttributes", False),
    "DeleteObject": ("s3:DeleteObject", False),
    "ListObjectsV2": ("s3:ListBucket", True),
    "ListObjects": ("s3:ListBucket", True),
    "ListMultipartUploads": ("s3:ListBucketMultipartUploads", True),
    "ListObjectVersions": ("s3:ListBucketVersions", True),
}
# Called, and refused on purpose: the scripts tolerate AccessDenied (the lifecycle rule
# expires an unverified object instead).
NOT_GRANTED = {"s3:DeleteObject", "s3:DeleteObjectVersion"}


def s3_actions_of_the_host_scripts() -> tuple[set[str], set[str]]:
    """(object actions, bucket actions) the scripts in the operations bundle need, read from
    their S3 calls: every `<x>.<s3 client method>(...)` and `get_paginator("<method>")`."""
    import ast

    import boto3

    from components.monitoring_render import bundle_files

    methods = boto3.client("s3", region_name=REGION).meta.method_to_api_mapping
    objects: set[str] = set()
    bucket: set[str] = set()
    for path, source in bundle_files().items():
        if not (path.startswith("scripts/") and path.endswith(".py")):
            continue
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                method = str(node.args[0].value)
            if method not in methods or method == "get_paginator":
                continue
            operation = methods[method]
            assert operation in S3_OPERATION_ACTIONS, f"{path}: {method} ({operation}) has no IAM action mapped"
            action, on_bucket = S3_OPERATION_ACTIONS[operation]
            (bucket if on_bucket else objects).add(action)
            # Reads pinned to a version need the ...Version action as well.
            if "VersionId" in ast.unparse(node) and action in ("s3:GetObject", "s3:DeleteObject"):
                objects.add(action + "Version")
    return objects, bucket


def test_role_grants_exactly_the_s3_actions_the_scripts_call(plan: Plan) -> None:
    objects, bucket = s3_actions_of_the_host_scripts()
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket"} <= objects | bucket  # the scan sees the calls
    bucket_arn = plan.one("aws:s3/bucket:Bucket", "backups-bucket").outputs["arn"]

    def granted(resource: str) -> set[str]:
        return {a for s in role_policy(plan) if s["Resource"] == resource
                for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}

    assert granted(f"{bucket_arn}/postgres/*") == objects - NOT_GRANTED
    assert granted(bucket_arn) == bucket - NOT_GRANTED


def test_role_publishes_to_the_alerts_topic_only(plan: Plan) -> None:
    topic_arn = plan.one("aws:sns/topic:Topic", "alerts-topic").outputs["arn"]
    assert statement(plan, "PublishAlerts") == {
        "Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn}


# --- secrets --------------------------------------------------------------------------------------

def test_grafana_password_is_generated_and_kept_in_secrets_manager(plan: Plan) -> None:
    secret = plan.one(SECRET, "monitoring-grafana")
    assert secret.inputs["name"] == f"psychology-api/{plan.stack}/grafana"
    assert secret.inputs["kmsKeyId"] == plan.one("aws:kms/key:Key", "data-key").outputs["arn"]
    version = plan.one("aws:secretsmanager/secretVersion:SecretVersion", "monitoring-grafana-value")
    assert version.inputs["secretString"] == "[secret]"
    assert plan.one("random:index/randomPassword:RandomPassword", "monitoring-grafana-admin-password").inputs["length"] >= 32
    assert plan.outputs["grafana_admin_secret_arn"] == secret.outputs["arn"]


def test_rotated_grafana_password_reaches_grafana_within_the_hour(plan: Plan) -> None:
    """The rotation function writes a new version; an hourly timer on the host applies AWSCURRENT
    with grafana cli (the script itself runs in tests/integration/test_grafana_admin_password.py)."""
    files = written_files(plan)
    secret = plan.one(SECRET, "monitoring-grafana").outputs["arn"]
    script = files[GRAFANA_ADMIN_PASSWORD_PATH]
    assert f"readonly GRAFANA_SECRET_ARN={secret}\n" in script
    assert "admin reset-admin-password --password-from-stdin" in script
    assert "readonly GRAFANA_USER=grafana\n" in script and 'runuser -u "$GRAFANA_USER"' in script
    service = files["/etc/systemd/system/psychology-grafana-admin-password.service"]
    assert f"ExecStart={GRAFANA_ADMIN_PASSWORD_PATH}\n" in service and "Type=oneshot\n" in service
    assert "ReadWritePaths=/etc/grafana/secrets /var/lib/monitoring/grafana" in service
    timer = files["/etc/systemd/system/psychology-grafana-admin-password.timer"]
    assert "OnCalendar=hourly\n" in timer and "Persistent=true\n" in timer
    assert "systemctl enable --now psychology-grafana-admin-password.timer" in files[BOOTSTRAP_PATH]
    assert secret in statement(plan, "ReadOwnSecrets")["Resource"]
    rotation = plan.named("dbops-grafana-admin-rotation")
    assert rotation.inputs["secretId"] == secret
    assert rotation.inputs["rotationLambdaArn"] == plan.named("dbops-rotate-generated").outputs["arn"]
    assert plan.named("monitoring-grafana-value").ignore_changes == ["secretString", "versionStages"]


def test_alerting_secret_exists_only_when_a_channel_is_configured(plan: Plan, with_channels: Plan) -> None:
    assert not [r for r in plan.of_type(SECRET) if r.name == "monitoring-alerting"]
    secret = with_channels.one(SECRET, "monitoring-alerting")
    assert secret.inputs["name"] == "psychology-api/prod/alerting"
    assert secret.outputs["arn"] in statement(with_channels, "ReadOwnSecrets")["Resource"]
    assert with_channels.one("aws:secretsmanager/secretVersion:SecretVersion",
                             "monitoring-alerting-value").inputs["secretString"] == "[secret]"


def test_user_data_holds_no_secret_value(plan: Plan, with_channels: Plan) -> None:
    for p in (plan, with_channels):
        assert host(p).inputs["userDataBase64"] != "[secret]"
        text = user_data(p)
        password = p.one("random:index/randomPassword:RandomPassword", "monitoring-grafana-admin-password").outputs["result"]
        assert password not in text
        assert WEBHOOK not in text and PAGERDUTY_KEY not in text
        assert "very-secret" not in text
    # The configured channels are referenced as files the boot script fills at boot.
    alertmanager = written_files(with_channels)["/etc/alertmanager/alertmanager.yml"]
    assert "api_url_file: /etc/alertmanager/secrets/webhook_url" in alertmanager
    assert "routing_key_file: /etc/alertmanager/secrets/pagerduty_routing_key" in alertmanager


def test_user_data_fits_ec2_limit(plan: Plan, with_channels: Plan) -> None:
    for p in (plan, with_channels):
        # EC2 counts the gzip bytes (before base64); today even the base64 text fits, which
        # leaves a third of headroom.
        assert user_data_size(host(p).inputs["userDataBase64"]) <= USER_DATA_LIMIT_BYTES
        assert len(host(p).inputs["userDataBase64"]) < 16384


# --- user data: timers, discovery, routing -----------------------------------------------------

def test_backup_timer_runs_the_backup_command_on_the_configured_schedule(plan: Plan) -> None:
    files = written_files(plan)
    timer = files["/etc/systemd/system/psychology-backup.timer"]
    assert "OnCalendar=*-*-* 02:00:00 Europe/Moscow\n" in timer
    assert "Persistent=true\n" in timer
    service = files["/etc/systemd/system/psychology-backup.service"]
    bucket = plan.one("aws:s3/bucket:Bucket", "backups-bucket").outputs["bucket"]
    key_arn = plan.one("aws:kms/key:Key", "data-key").outputs["arn"]
    command = " ".join(line.strip().rstrip("\\").strip() for line in service.splitlines()
                       if line.startswith(("ExecStart=", "  --")))
    assert command == (
        "ExecStart=/opt/psychology-ops/venv/bin/python -m scripts.backup"
        f" --secret-id {plan.outputs['db_backup_secret_arn']}"
        f" --db-host {plan.outputs['db_endpoint']}"
        " --db-name psychology"
        f" --bucket {bucket} --prefix postgres/ --kms-key-id {key_arn}"
        " --textfile /var/lib/node_exporter/textfile/backup.prom")


def test_restore_drill_timer_runs_on_the_configured_schedule(plan: Plan) -> None:
    files = written_files(plan)
    timer = files["/etc/systemd/system/psychology-restore-drill.timer"]
    assert "OnCalendar=*-*-01 04:00:00 Europe/Moscow\n" in timer
    assert "Persistent=true\n" in timer
    service = files["/etc/systemd/system/psychology-restore-drill.service"]
    assert "-m scripts.restore_drill" in service
    assert "--scratch-db psychology_restore_drill" in service
    assert f"--secret-id {plan.outputs['db_drill_secret_arn']}" in service
    assert "--no-source-counts" in service  # the drill login reads no live data
    assert "--textfile /var/lib/node_exporter/textfile/restore_drill.prom" in service


def test_schedules_follow_configuration() -> None:
    plan = run_program("staging", overrides={
        "backupSchedule": "*-*-* 03:30:00 Europe/Moscow", "restoreDrillSchedule": "Mon *-*-1..7 05:00:00 UTC"})
    files = written_files(plan)
    assert "OnCalendar=*-*-* 03:30:00 Europe/Moscow\n" in files["/etc/systemd/system/psychology-backup.timer"]
    assert "OnCalendar=Mon *-*-1..7 05:00:00 UTC\n" in files["/etc/systemd/system/psychology-restore-drill.timer"]


def test_prometheus_discovers_api_hosts_of_this_stack(plan: Plan) -> None:
    config = yaml.safe_load(written_files(plan)["/etc/prometheus/prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The application's metrics come from nginx's metrics port, never the public app port.
    for job_name, port in (("api-node", 9100), ("api", 9180)):
        sd = jobs[job_name]["ec2_sd_configs"][0]
        assert sd["region"] == REGION and sd["port"] == port
        assert {f["name"]: f["values"] for f in sd["filters"]} == {
            "tag:project": ["psychology-api"], "tag:stack": [plan.stack], "tag:role": ["api"],
            "instance-state-name": ["running"]}
    assert config["global"]["external_labels"] == {"cluster": f"psychology-api-{plan.stack}", "environment": plan.stack}
    targets = jobs["blackbox-http"]["static_configs"][0]["targets"]
    host_name = {"prod": "api.psychology.example.com", "staging": "api.staging.psychology.example.com"}[plan.stack]
    assert targets == [f"https://{host_name}/health/", f"https://{host_name}/api/v1/health/"]


def test_blackbox_requires_tls_when_the_stack_serves_https(plan: Plan, http_only_staging: Plan) -> None:
    # Both checked-in stacks serve HTTPS; only a throw-away allowHttpOnly stack does not.
    blackbox = yaml.safe_load(written_files(plan)["/etc/blackbox_exporter/blackbox.yml"])
    assert blackbox["modules"]["http_2xx"]["http"]["fail_if_not_ssl"] is True
    plain = yaml.safe_load(written_files(http_only_staging)["/etc/blackbox_exporter/blackbox.yml"])
    assert plain["modules"]["http_2xx"]["http"]["fail_if_not_ssl"] is False


def test_only_a_stack_without_tls_may_probe_port_80(plan: Plan, http_only_staging: Plan) -> None:
    def probe_rules(p: Plan) -> list[PlannedResource]:
        return [r for r in p.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
                if r.name == "monitoring-probe-http-out"]

    assert probe_rules(plan) == []
    rules = probe_rules(http_only_staging)
    assert rules[0].inputs["fromPort"] == 80
    assert rules[0].inputs["securityGroupId"] == host(http_only_staging).inputs["vpcSecurityGroupIds"][0]


def test_alerts_go_to_sns_without_channels_and_to_channels_when_set(plan: Plan, with_channels: Plan) -> None:
    plain = yaml.safe_load(written_files(plan)["/etc/alertmanager/alertmanager.yml"])
    topic_arn = plan.one("aws:sns/topic:Topic", "alerts-topic").outputs["arn"]
    for receiver in plain["receivers"]:
        assert receiver["sns_configs"][0]["topic_arn"] == topic_arn
        assert set(receiver) == {"name", "sns_configs"}
    channels = {r["name"]: r for r in yaml.safe_load(written_files(with_channels)["/etc/alertmanager/alertmanager.yml"])["receivers"]}
    assert set(channels["critical"]) == {"name", "slack_configs", "pagerduty_configs"}
    assert set(channels["warning"]) == {"name", "slack_configs"}


def test_bootstrap_reads_secrets_by_arn_and_installs_the_bundle(plan: Plan) -> None:
    files = written_files(plan)
    script = files[BOOTSTRAP_PATH]
    bucket = plan.one("aws:s3/bucket:Bucket", "backups-bucket").outputs["bucket"]
    bundle = plan.one("aws:s3/bucketObjectv2:BucketObjectv2", "monitoring-ops-bundle")
    installer = files[BUNDLE_INSTALL_PATH]
    assert f"readonly BACKUP_BUCKET={bucket}\n" in installer
    assert f"readonly BUNDLE_KEY={bundle.inputs['key']}\n" in installer
    assert f"readonly BUNDLE_INSTALL={BUNDLE_INSTALL_PATH}\n" in script and '\n"$BUNDLE_INSTALL"\n' in script
    assert f"readonly DATA_VOLUME_ID={plan.one('aws:ebs/volume:Volume', 'monitoring-data').id}\n" in script
    assert "readonly GRAFANA_SECRET_ARN=" + plan.one(SECRET, "monitoring-grafana").outputs["arn"] in script
    assert "postgresql16" in script
    assert yaml.safe_load(user_data(plan))["runcmd"] == [[BOOTSTRAP_PATH]]


def test_exporter_credentials_are_read_by_arn_at_boot_and_refreshed_daily(plan: Plan) -> None:
    """Rotated credentials (monitoring role, Redis token) reach the exporters within a day: the
    boot script and a daily timer run the same script, which restarts only what changed."""
    files = written_files(plan)
    script = files[EXPORTER_SECRETS_PATH]
    monitor_secret, redis_secret = plan.outputs["db_monitor_secret_arn"], plan.outputs["redis_secret_arn"]
    assert f"readonly DB_MONITOR_SECRET_ARN={monitor_secret}\n" in script
    assert f"readonly REDIS_SECRET_ARN={redis_secret}\n" in script
    assert f"readonly DB_HOST={plan.outputs['db_endpoint']}\n" in script
    boot = files[BOOTSTRAP_PATH]
    assert f"readonly EXPORTER_SECRETS={EXPORTER_SECRETS_PATH}\n" in boot and 'retry "$EXPORTER_SECRETS"' in boot
    assert "psychology-exporter-secrets-refresh.timer" in boot.splitlines()[-2]
    service = files["/etc/systemd/system/psychology-exporter-secrets-refresh.service"]
    assert f"ExecStart={EXPORTER_SECRETS_PATH} --restart-on-change\n" in service
    timer = files["/etc/systemd/system/psychology-exporter-secrets-refresh.timer"]
    assert "OnCalendar=daily\n" in timer and "Persistent=true\n" in timer
    # The role reads exactly those secrets; nothing new was needed for the refresh.
    readable = statement(plan, "ReadOwnSecrets")["Resource"]
    assert {monitor_secret, redis_secret} <= set(readable)


def test_ops_bundle_is_encrypted_and_carries_scripts_rules_and_dashboards(plan: Plan) -> None:
    bundle = plan.one("aws:s3/bucketObjectv2:BucketObjectv2", "monitoring-ops-bundle")
    assert bundle.inputs["bucket"] == plan.one("aws:s3/bucket:Bucket", "backups-bucket").outputs["bucket"]
    assert bundle.inputs["key"].startswith("ops/monitoring-bundle-") and bundle.inputs["key"].endswith(".zip")
    assert bundle.inputs["serverSideEncryption"] == "aws:kms"
    assert bundle.inputs["kmsKeyId"] == plan.one("aws:kms/key:Key", "data-key").outputs["arn"]
    members = bundle.inputs["source"]["archive"]
    assert {"scripts/lib/cli.py", "scripts/lib/db.py", "requirements-ops.txt", "monitoring/rules/backups.yml",
            "monitoring/dashboards/golden-paths.json", "monitoring/alertmanager/psychology.tmpl"} <= set(members)
    assert not [m for m in members if "__pycache__" in m]
    # Rendered for this stack: units and timers, configuration, the credential scripts.
    assert {"host/etc/systemd/system/prometheus.service", "host/etc/systemd/system/psychology-backup.timer",
            "host/etc/prometheus/prometheus.yml", f"host{EXPORTER_SECRETS_PATH}", "host-files.txt", "SHA256SUMS"} <= set(members)
    assert members == sorted(bundle_of(plan))


def test_user_data_holds_only_what_runs_before_the_bundle(plan: Plan, with_channels: Plan) -> None:
    """cloud-init writes the boot script and the bundle's installer; every other file reaches the
    host in the operations bundle, root-owned with the mode it had in the user data before."""
    for p in (plan, with_channels):
        assert set(user_data_files(p)) == {BOOTSTRAP_PATH, BUNDLE_INSTALL_PATH}
        installed = bundle_host_files(p)
        units = [path for path in installed if path.startswith("/etc/systemd/system/")]
        assert len(units) == 15 and all(installed[u][1] == "0644 root:root" for u in units)
        for script in (EXPORTER_SECRETS_PATH, GRAFANA_ADMIN_PASSWORD_PATH):
            assert installed[script][1] == "0755 root:root"
        assert {"/etc/prometheus/prometheus.yml", "/etc/alertmanager/alertmanager.yml", "/etc/grafana/grafana.ini",
                "/etc/dnf/automatic.conf", "/etc/psychology/cloudwatch-agent.json"} <= set(installed)


def test_user_data_pins_the_bundle_it_installs(plan: Plan) -> None:
    """The installer accepts the bundle only when its checksum list has the SHA-256 the user
    data carries, so any change to any file of it changes the user data (and replaces the host)."""
    bundle = bundle_of(plan)
    installer = user_data_files(plan)[BUNDLE_INSTALL_PATH]
    pinned = hashlib.sha256(bundle[CHECKSUMS_FILE].encode()).hexdigest()
    assert f"readonly BUNDLE_SHA256={pinned}\n" in installer
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in bundle[CHECKSUMS_FILE].splitlines()}
    assert set(listed) == set(bundle) - {CHECKSUMS_FILE}
    assert all(hashlib.sha256(bundle[name].encode()).hexdigest() == digest for name, digest in listed.items())
    assert plan.one(BUNDLE, "monitoring-ops-bundle").inputs["key"] == f"ops/monitoring-bundle-{pinned[:16]}.zip"


def test_backups_drills_and_the_exporter_verify_the_database(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RDS bundle travels in the operations bundle, where the scripts look for it; the
    exporter names the same file with sslmode=verify-full."""
    from components import monitoring_render
    from scripts.lib import rds_ca

    copy = tmp_path / "rds-global-bundle.pem"
    copy.write_text("-----BEGIN CERTIFICATE-----\ninvented test content\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", copy)
    files = monitoring_render.bundle_files()
    assert files["scripts/lib/certs/rds-global-bundle.pem"] == copy.read_text()
    assert "scripts/lib/rds_ca.py" in files
    assert monitoring_render.DB_CA_BUNDLE == f"{monitoring_render.OPS_DIR}/current/scripts/lib/certs/rds-global-bundle.pem"
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", tmp_path / "absent.pem")
    assert "scripts/lib/certs/rds-global-bundle.pem" not in monitoring_render.bundle_files()


# --- alerts topic ---------------------------------------------------------------------------------

def test_alerts_topic_is_encrypted_with_the_data_key(plan: Plan) -> None:
    topic = plan.one("aws:sns/topic:Topic", "alerts-topic")
    assert topic.inputs["kmsMasterKeyId"] == plan.one("aws:kms/key:Key", "data-key").outputs["arn"]
    assert topic.inputs["name"] == f"psychology-api-{plan.stack}-alerts"
    assert plan.outputs["alerts_topic_arn"] == topic.outputs["arn"]


def test_topic_policy_admits_cloudwatch_alarms_of_this_account_only(plan: Plan) -> None:
    policy = json.loads(plan.one("aws:sns/topicPolicy:TopicPolicy", "alerts-policy").inputs["policy"])
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert allow["Action"] == "sns:Publish"
    assert allow["Condition"]["StringEquals"] == {"aws:SourceAccount": MOCK_ACCOUNT_ID}
    assert allow["Condition"]["ArnLike"] == {"aws:SourceArn": f"arn:aws:cloudwatch:{REGION}:{MOCK_ACCOUNT_ID}:alarm:*"}
    deny = next(s for s in policy["Statement"] if s["Effect"] == "Deny")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_email_subscription_only_when_configured(plan: Plan, with_channels: Plan) -> None:
    assert plan.of_type("aws:sns/topicSubscription:TopicSubscription") == []
    subscription = with_channels.one("aws:sns/topicSubscription:TopicSubscription", "alerts-email")
    assert subscription.inputs["protocol"] == "email"
    assert subscription.inputs["endpoint"] == "oncall@example.com"
    assert subscription.inputs["topic"] == with_channels.one("aws:sns/topic:Topic", "alerts-topic").outputs["arn"]


# --- CloudWatch alarms ----------------------------------------------------------------------------

def expected_alarm_roles(stack: str) -> set[str]:
    nodes = {"staging": 1, "prod": 2}[stack]
    roles = {"alb-5xx-rate", "alb-unhealthy-hosts", "alb-no-healthy-hosts", "alb-latency-p95", "api-cpu",
             "rds-cpu", "rds-free-storage", "rds-connections", "monitoring-system-check",
             "monitoring-instance-check", "monitoring-heartbeat", "monitoring-data-disk",
             "rotation-errors-rotate", "rotation-errors-rotate-redis", "rotation-errors-rotate-generated",
             "rotation-overdue", "waf-blocked-requests"}
    for i in range(1, nodes + 1):
        roles |= {f"redis-memory-{i:03d}", f"redis-evictions-{i:03d}"}
    return roles


def test_every_alarm_notifies_the_topic_on_alarm_and_ok(plan: Plan) -> None:
    topic_arn = plan.one("aws:sns/topic:Topic", "alerts-topic").outputs["arn"]
    alarms = plan.of_type(ALARM)
    assert {a.name.removeprefix("alarms-") for a in alarms} == expected_alarm_roles(plan.stack)
    for a in alarms:
        assert topic_arn in a.inputs["alarmActions"], a.name
        assert a.inputs["okActions"] == [topic_arn], a.name
        assert a.inputs["treatMissingData"] in ("missing", "notBreaching", "breaching")
        assert a.inputs["name"] == f"psychology-api-{plan.stack}-{a.name.removeprefix('alarms-')}"


def test_alb_error_rate_is_a_ratio_of_5xx_to_requests(plan: Plan) -> None:
    rate = alarm(plan, "alb-5xx-rate").inputs
    queries = {q["id"]: q for q in rate["metricQueries"]}
    assert {q["metric"]["metricName"] for q in queries.values() if "metric" in q} == {
        "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count", "RequestCount"}
    assert all(q["metric"]["dimensions"] == {"LoadBalancer": plan.outputs["alb_arn_suffix"]}
               for q in queries.values() if "metric" in q)
    expression = queries["error_rate"]
    assert expression["returnData"] is True
    assert "100 * (FILL(target_5xx, 0) + FILL(elb_5xx, 0)) / requests" in expression["expression"]
    assert rate["threshold"] == 1 and rate["comparisonOperator"] == "GreaterThanThreshold"
    assert rate["treatMissingData"] == "notBreaching"


def test_alb_health_and_latency_alarms(plan: Plan) -> None:
    unhealthy = alarm(plan, "alb-unhealthy-hosts").inputs
    assert unhealthy["metricName"] == "UnHealthyHostCount" and unhealthy["threshold"] == 0
    assert unhealthy["dimensions"]["TargetGroup"] == plan.outputs["target_group_arn_suffix"]
    empty = alarm(plan, "alb-no-healthy-hosts").inputs
    assert empty["metricName"] == "HealthyHostCount" and empty["comparisonOperator"] == "LessThanThreshold"
    assert empty["treatMissingData"] == "breaching"
    latency = alarm(plan, "alb-latency-p95").inputs
    assert latency["metricName"] == "TargetResponseTime" and latency["extendedStatistic"] == "p95"
    assert latency["threshold"] == 0.8


def test_rds_alarms(plan: Plan) -> None:
    db = {"DBInstanceIdentifier": plan.outputs["db_identifier"]}
    cpu = alarm(plan, "rds-cpu").inputs
    assert (cpu["metricName"], cpu["threshold"], cpu["dimensions"]) == ("CPUUtilization", 80, db)
    storage = alarm(plan, "rds-free-storage").inputs
    allocated = {"staging": 20, "prod": 200}[plan.stack]
    assert storage["metricName"] == "FreeStorageSpace" and storage["comparisonOperator"] == "LessThanThreshold"
    assert storage["threshold"] == int(allocated * 0.1 * 1024 ** 3)
    connections = alarm(plan, "rds-connections").inputs
    assert (connections["metricName"], connections["threshold"]) == ("DatabaseConnections", 80)


def parameter_group_max_connections(plan: Plan) -> int:
    group = plan.one("aws:rds/parameterGroup:ParameterGroup", "postgres-params")
    return int(next(p["value"] for p in group.inputs["parameters"] if p["name"] == "max_connections"))


def test_connections_alarm_follows_the_parameter_group(plan: Plan) -> None:
    limit = parameter_group_max_connections(plan)
    connections = alarm(plan, "rds-connections").inputs
    assert connections["threshold"] == int(limit * 0.8)
    assert f"(of max_connections {limit})" in connections["alarmDescription"]


def test_connections_alarm_moves_with_a_changed_max_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source for the limit: raising max_connections in the parameter group moves the alarm."""
    import dataclasses

    from components import database, postgres_parameters

    raised = tuple(dataclasses.replace(p, value="250") if p.name == "max_connections" else p
                   for p in postgres_parameters.PARAMETERS)
    monkeypatch.setattr(postgres_parameters, "PARAMETERS", raised)
    monkeypatch.setattr(database, "PARAMETERS", raised)
    plan = run_program("staging")
    assert parameter_group_max_connections(plan) == 250
    assert alarm(plan, "rds-connections").inputs["threshold"] == 200


def test_redis_alarms_per_member_cluster(plan: Plan) -> None:
    memory = alarm(plan, "redis-memory-001").inputs
    assert memory["metricName"] == "DatabaseMemoryUsagePercentage" and memory["threshold"] == 90
    assert memory["dimensions"] == {"CacheClusterId": f"psychology-api-{plan.stack}-redis-001"}
    evictions = alarm(plan, "redis-evictions-001").inputs
    assert evictions["metricName"] == "Evictions" and evictions["statistic"] == "Sum"
    assert evictions["treatMissingData"] == "notBreaching"


def test_monitoring_host_status_check_recovers_the_instance(plan: Plan) -> None:
    system = alarm(plan, "monitoring-system-check").inputs
    assert system["metricName"] == "StatusCheckFailed_System"
    assert system["dimensions"] == {"InstanceId": host(plan).id}
    assert f"arn:aws:automate:{REGION}:ec2:recover" in system["alarmActions"]
    instance = alarm(plan, "monitoring-instance-check").inputs
    assert f"arn:aws:automate:{REGION}:ec2:reboot" in instance["alarmActions"]
    heartbeat = alarm(plan, "monitoring-heartbeat").inputs
    assert heartbeat["namespace"] == CLOUDWATCH_NAMESPACE and heartbeat["treatMissingData"] == "breaching"


# --- planned maintenance ---------------------------------------------------------------------------

MAINTENANCE_SILENCED = {"alb-5xx-rate", "alb-unhealthy-hosts", "alb-no-healthy-hosts", "alb-latency-p95"}


def test_every_alarm_acts_outside_maintenance(plan: Plan) -> None:
    assert plan.outputs["maintenance_mode"] is False
    assert all(a.inputs["actionsEnabled"] is True for a in plan.of_type(ALARM))


def test_maintenance_turns_off_the_load_balancer_alarms_actions_only(plan: Plan, in_maintenance: dict[str, Plan]) -> None:
    maintenance = in_maintenance[plan.stack]
    assert maintenance.outputs["maintenance_mode"] is True
    enabled = {a.name.removeprefix("alarms-"): a.inputs["actionsEnabled"] for a in maintenance.of_type(ALARM)}
    assert {role for role, on in enabled.items() if not on} == MAINTENANCE_SILENCED
    # Everything else about the alarms is the same: they keep evaluating, visible in the console.
    normal = {a.name: a.inputs for a in plan.of_type(ALARM)}
    for a in maintenance.of_type(ALARM):
        assert {k: v for k, v in a.inputs.items() if k != "actionsEnabled"} == {
            k: v for k, v in normal[a.name].items() if k != "actionsEnabled"}, a.name


def test_switching_maintenance_recreates_the_silenced_alarms(plan: Plan) -> None:
    """An in-place update would keep an alarm's ALARM state, and with actions back on it would
    never notify; recreated (old one deleted first: the name is fixed) it reports afresh."""
    for a in plan.of_type(ALARM):
        role = a.name.removeprefix("alarms-")
        assert a.parent == "alarms"
        if role in MAINTENANCE_SILENCED:
            assert a.options.get("replaceOnChanges") == ["actionsEnabled"], a.name
            assert a.options.get("deleteBeforeReplace") is True, a.name
        else:
            assert "replaceOnChanges" not in a.options, a.name


def test_maintenance_leaves_the_monitoring_host_alone(plan: Plan, in_maintenance: dict[str, Plan]) -> None:
    """Prometheus finds maintenance by probing, so the host's user data (and every other input:
    a change would replace it) does not depend on the flag."""
    maintenance = in_maintenance[plan.stack]
    assert host(maintenance).inputs == host(plan).inputs
    for resource in plan.resources:
        if resource.parent == "monitoring":
            assert maintenance.one(resource.type, resource.name).inputs == resource.inputs, resource.name


def test_maintenance_page_carries_the_mark_the_probe_looks_for(in_maintenance: dict[str, Plan]) -> None:
    from components.loadbalancer import MAINTENANCE_MARKER

    for maintenance in in_maintenance.values():
        rule = maintenance.one("aws:lb/listenerRule:ListenerRule", "alb-maintenance")
        body = rule.inputs["actions"][0]["fixedResponse"]["messageBody"]
        assert rule.inputs["actions"][0]["fixedResponse"]["statusCode"] == "503"
        assert MAINTENANCE_MARKER in body
        blackbox = yaml.safe_load(written_files(maintenance)["/etc/blackbox_exporter/blackbox.yml"])
        assert blackbox["modules"]["http_maintenance"]["http"]["fail_if_body_not_matches_regexp"] == [MAINTENANCE_MARKER]


# --- outputs ----------------------------------------------------------------------------------------

def test_outputs(plan: Plan) -> None:
    instance_id = host(plan).id
    assert plan.outputs["monitoring_instance_id"] == instance_id
    assert plan.outputs["grafana_url"] == (
        f"http://localhost:3000 after: aws ssm start-session --region {REGION} --target {instance_id}"
        " --document-name AWS-StartPortForwardingSession --parameters portNumber=3000,localPortNumber=3000")
    assert not plan.secret_outputs
