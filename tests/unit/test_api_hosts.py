"""The API hosts under the mock engine: launch template, instance role, auto-scaling group."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from components.api_hosts import ApiHosts, ApiHostsArgs
from components.connection_budget import refresh_max_healthy_percent
from components.postgres_parameters import max_connections
from components.userdata import decode_user_data
from harness import mock_engine
from harness.mock_engine import Plan, run_program

LT = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
POLICY = "aws:autoscaling/policy:Policy"
EXPECTED_TAG_KEYS = {"project", "stack", "managed-by", "environment", "Name", "role"}


def role_policy(plan: Plan) -> dict[str, Any]:
    return json.loads(plan.named("api-app-access").inputs["policy"])


def statement(plan: Plan, sid: str) -> dict[str, Any]:
    return next(s for s in role_policy(plan)["Statement"] if s["Sid"] == sid)


def test_launch_template_requires_imdsv2_with_one_hop(plan: Plan) -> None:
    metadata = plan.one(LT).inputs["metadataOptions"]
    assert metadata["httpTokens"] == "required"
    assert metadata["httpPutResponseHopLimit"] == 1
    assert metadata["httpEndpoint"] == "enabled"
    assert metadata["instanceMetadataTags"] == "enabled"


def test_root_volume_is_encrypted_gp3_with_the_data_key(plan: Plan) -> None:
    (mapping,) = plan.one(LT).inputs["blockDeviceMappings"]
    assert mapping["deviceName"] == "/dev/xvda"  # the AMI's root device
    ebs = mapping["ebs"]
    assert ebs["encrypted"] == "true"
    assert ebs["volumeType"] == "gp3"
    assert ebs["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert ebs["volumeSize"] == {"staging": 50, "prod": 100}[plan.stack]


def test_no_public_address_and_only_the_api_security_group(plan: Plan) -> None:
    lt = plan.one(LT).inputs
    (nic,) = lt["networkInterfaces"]
    assert nic["associatePublicIpAddress"] == "false"
    assert nic["securityGroups"] == [plan.outputs["security_group_ids"]["api"]]
    assert "vpcSecurityGroupIds" not in lt


def test_detailed_monitoring_image_and_instance_type(plan: Plan) -> None:
    lt = plan.one(LT).inputs
    assert lt["monitoring"] == {"enabled": True}
    # Amazon's parameter for the newest AL2023 image, resolved by EC2 at each launch.
    assert lt["imageId"] == "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    assert lt["instanceType"] == {"staging": "t3.medium", "prod": "c6i.xlarge"}[plan.stack]
    assert lt["updateDefaultVersion"] is True
    profile = plan.one("aws:iam/instanceProfile:InstanceProfile", "api-profile")
    assert lt["iamInstanceProfile"] == {"arn": profile.outputs["arn"]}


def test_a_new_amazon_linux_image_does_not_roll_the_hosts(prod: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """Amazon publishes an image: the next `up` (say, one that only switches maintenance on)
    leaves the launch template and the group as they are, so no instance refresh starts and no
    release step runs again. Hosts get the image when they are next launched."""
    newer = {"id": "ami-0fedcba9876543210", "imageId": "ami-0fedcba9876543210",
             "name": "al2023-ami-2023.9.20261203.0-kernel-6.12-x86_64"}
    answer = mock_engine._INVOKES["aws:ec2/getAmi:getAmi"]
    monkeypatch.setitem(mock_engine._INVOKES, "aws:ec2/getAmi:getAmi", lambda m, a: {**answer(m, a), **newer})
    later = run_program("prod")
    for token in (LT, "aws:autoscaling/group:Group"):
        assert later.one(token).inputs == prod.one(token).inputs, token
    release_steps = {r.name: r.inputs for r in prod.of_type("command:local:Command")}
    assert {r.name: r.inputs for r in later.of_type("command:local:Command")} == release_steps


def test_hosts_are_replaced_on_the_newest_image_between_releases(plan: Plan) -> None:
    """Patching without a release: a host older than apiMaxInstanceLifetimeDays is replaced
    (successor first, by the maintenance policy) and launched from the image current then."""
    group = plan.one("aws:autoscaling/group:Group").inputs
    days = {"staging": 7, "prod": 14}[plan.stack]
    assert group["maxInstanceLifetime"] == days * 86400
    assert group["instanceMaintenancePolicy"]["minHealthyPercentage"] == 100
    assert run_program(plan.stack, overrides={"apiMaxInstanceLifetimeDays": 0}).one(
        "aws:autoscaling/group:Group").inputs.get("maxInstanceLifetime", 0) == 0


def test_instances_and_volumes_carry_every_tag(plan: Plan) -> None:
    specs = {s["resourceType"]: s["tags"] for s in plan.one(LT).inputs["tagSpecifications"]}
    assert {"instance", "volume"} <= set(specs)
    for tags in specs.values():
        assert set(tags) >= EXPECTED_TAG_KEYS
        assert tags["stack"] == plan.stack and tags["role"] == "api"
    asg_tags = {t["key"]: t for t in plan.one(ASG).inputs["tags"]}
    assert set(asg_tags) >= EXPECTED_TAG_KEYS
    assert all(t["propagateAtLaunch"] for t in asg_tags.values())


def test_role_reads_exactly_the_app_secrets(plan: Plan) -> None:
    expected = {plan.outputs["app_secret_arn"], *plan.outputs["integration_secret_arns"].values(),
                plan.outputs["redis_secret_arn"], plan.outputs["db_app_secret_arn"]}
    reads = statement(plan, "ReadTheAppSecrets")
    assert reads["Action"] == "secretsmanager:GetSecretValue"
    assert set(reads["Resource"]) == expected
    assert len(reads["Resource"]) == len(expected)


def test_role_has_nothing_broader(plan: Plan) -> None:
    for stmt in role_policy(plan)["Statement"]:
        assert stmt["Effect"] == "Allow"
        resources = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
        assert all("*" not in r for r in resources), stmt
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        assert all("*" not in a for a in actions), stmt
    decrypt = statement(plan, "DecryptSecretsThroughSecretsManager")
    assert decrypt["Resource"] == plan.outputs["kms_key_arn"]
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.eu-central-1.amazonaws.com"}}
    artifact = statement(plan, "ReadTheReleaseArtifact")
    assert artifact["Action"] == "s3:GetObject"
    assert artifact["Resource"] == "arn:aws:s3:::psychology-api-releases/psychology-api/psychology-api-0.1.0.tar.gz"


def test_role_managed_policies_are_ssm_and_cloudwatch_agent(plan: Plan) -> None:
    role = plan.outputs["api_role_name"]
    attached = {r.inputs["policyArn"] for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if r.parent == "api"}
    assert attached == {"arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
                        "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"}
    assert json.loads(plan.named("api-role").inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"}
    assert role == plan.named("api-role").outputs["name"]


def test_group_spans_the_private_subnets_with_elb_health_checks(plan: Plan) -> None:
    asg = plan.one(ASG).inputs
    private = {r.id for r in plan.of_type("aws:ec2/subnet:Subnet") if r.inputs["tags"]["tier"] == "private"}
    assert set(asg["vpcZoneIdentifiers"]) == private
    assert asg["healthCheckType"] == "ELB"
    assert 300 <= asg["healthCheckGracePeriod"] <= 900
    assert asg["targetGroupArns"] == [plan.outputs["target_group_arn"]]
    assert asg["enabledMetrics"]


def test_group_sizes(prod: Plan, staging: Plan) -> None:
    p = prod.one(ASG).inputs
    assert p["minSize"] >= 2 and p["desiredCapacity"] >= 2 and p["maxSize"] >= p["minSize"]
    s = staging.one(ASG).inputs
    assert (s["minSize"], s["maxSize"], s["desiredCapacity"]) == (1, 2, 1)


def test_release_rolls_out_by_rolling_instance_refresh(plan: Plan) -> None:
    asg = plan.one(ASG).inputs
    lt = plan.one(LT)
    # The exact template version: a new version changes the group and starts the refresh.
    assert asg["launchTemplate"] == {"id": lt.id, "version": str(lt.outputs["latestVersion"])}
    refresh = asg["instanceRefresh"]
    assert refresh["strategy"] == "Rolling"
    assert refresh["preferences"]["minHealthyPercentage"] >= 90
    # Launch before terminate, with the surge the database's max_connections allows
    # (tests/unit/test_connection_budget.py): 200 on staging, less on prod.
    surge = refresh_max_healthy_percent(asg["maxSize"], lt.inputs["instanceType"], max_connections())
    assert 100 < refresh["preferences"]["maxHealthyPercentage"] == surge <= 200
    assert asg["instanceMaintenancePolicy"] == {"minHealthyPercentage": 100, "maxHealthyPercentage": surge}


def test_new_app_version_changes_the_launch_template(staging: Plan) -> None:
    newer = run_program("staging", overrides={"appVersion": "0.2.0"})
    assert newer.one(LT).inputs["userData"] != staging.one(LT).inputs["userData"]
    assert json.loads(newer.named("api-app-access").inputs["policy"])["Statement"][2]["Resource"].endswith(
        "psychology-api-0.2.0.tar.gz")
    # ...and an unchanged configuration gives byte-identical user data (no needless refresh).
    again = run_program("staging")
    assert again.one(LT).inputs["userData"] == staging.one(LT).inputs["userData"]


def test_cpu_target_tracking(plan: Plan) -> None:
    policy = plan.one(POLICY).inputs
    assert policy["policyType"] == "TargetTrackingScaling"
    tracking = policy["targetTrackingConfiguration"]
    assert tracking["predefinedMetricSpecification"] == {"predefinedMetricType": "ASGAverageCPUUtilization"}
    assert tracking["targetValue"] == 60
    assert policy["autoscalingGroupName"] == plan.outputs["asg_name"]


def test_outputs(plan: Plan) -> None:
    assert plan.outputs["asg_name"] == f"psychology-api-{plan.stack}-api"
    assert plan.outputs["api_role_name"]


def test_data_tier_secrets_join_the_policy_when_given() -> None:
    """The dbops and data parts hand their secret ARNs in; the role then reads those too."""
    db_arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/staging/db-app-AbCdEf"
    redis_arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/staging/redis-AbCdEf"

    def program() -> None:
        ApiHosts("api", ApiHostsArgs(
            image_id="ami-0c1f2e3d4b5a69788", instance_type="t3.medium", root_volume_gb=50,
            kms_key_arn="arn:aws:kms:eu-central-1:123456789012:key/k", private_subnet_ids=["subnet-a", "subnet-b"],
            security_group_id="sg-api", target_group_arn="arn:tg", min_size=1, max_size=2, desired_capacity=1,
            cpu_target_percent=60, environment="staging", region="eu-central-1", vpc_cidr="10.20.0.0/16",
            app_port=80, health_check_path="/health/", app_version="1.0.0", artifact_bucket="releases",
            artifact_key="app-1.0.0.tar.gz", public_host="api.example.com", tags={"project": "psychology-api"},
            app_secret_arn="arn:app", integration_secret_arns={"smtp": "arn:smtp"},
            database_secret_arn=pulumi.Output.from_input(db_arn), redis_secret_arn=redis_arn))

    plan = run_program("staging", program=program)
    reads = next(s for s in json.loads(plan.named("api-app-access").inputs["policy"])["Statement"]
                 if s["Sid"] == "ReadTheAppSecrets")
    assert reads["Resource"] == ["arn:app", "arn:smtp", db_arn, redis_arn]
    fetch_env = decode_user_data(plan.one(LT).inputs["userData"])
    assert f'readonly DATABASE_SECRET_ARN="{db_arn}"' in fetch_env
    assert f'readonly REDIS_SECRET_ARN="{redis_arn}"' in fetch_env

