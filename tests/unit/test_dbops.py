"""The database-operations functions, their roles and the credential secrets with their rotation,
under the mock engine, for both stacks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.dbops import VPC_ACCESS_POLICY_ARN
from components.lambda_package import build_lambda_package
from infra.mock_engine import MOCK_ACCOUNT_ID, Plan, run_program
from tests.unit.dbops_program import DB_HOST, master_secret_arn, program, redis_secret_arn

FUNCTION = "aws:lambda/function:Function"
STACKS = ("staging", "prod")
HANDLERS = {"dbops-migrate": "migrate_handler", "dbops-health": "health_handler", "dbops-rotate": "rotation_handler"}


@pytest.fixture(scope="module", params=STACKS)
def plan(request: pytest.FixtureRequest) -> Plan:
    return run_program(request.param, program=program)


def key_arn(plan: Plan) -> str:
    return str(plan.one("aws:kms/key:Key").outputs["arn"])


def secret_arn(plan: Plan, name: str) -> str:
    return str(plan.named(name).outputs["arn"])


def policy(plan: Plan, function: str) -> list[dict[str, Any]]:
    return list(json.loads(plan.named(f"dbops-{function}-access").inputs["policy"])["Statement"])


def test_three_functions_in_the_private_subnets_with_the_dbops_group(plan: Plan) -> None:
    functions = {r.name: r for r in plan.of_type(FUNCTION)}
    assert set(functions) == {"dbops-migrate", "dbops-health", "dbops-rotate"}
    private = sorted(r.id for r in plan.of_type("aws:ec2/subnet:Subnet") if r.inputs["tags"]["tier"] == "private")
    dbops_group = plan.named("sg-dbops").id
    package = build_lambda_package()
    for name, fn in functions.items():
        inputs = fn.inputs
        assert inputs["runtime"] == "python3.12" and inputs["architectures"] == ["x86_64"]
        assert sorted(inputs["vpcConfig"]["subnetIds"]) == private
        assert inputs["vpcConfig"]["securityGroupIds"] == [dbops_group]
        assert inputs["kmsKeyArn"] == key_arn(plan)
        assert inputs["handler"] == "scripts.dbops.handlers." + HANDLERS[name]
        assert inputs["codeSha256"] == package.code_sha256 and inputs["code"] == {"archive": str(package.path)}
        assert inputs["name"] == f"psychology-api-{plan.stack}-db-{name.split('-')[1]}"
        assert 30 <= inputs["timeout"] <= 900 and 128 <= inputs["memorySize"] <= 1024
        assert inputs["loggingConfig"]["logGroup"] == f"/aws/lambda/{inputs['name']}"
        # The role can create the function's network interfaces before the function exists.
        assert {f"{name}-role", f"{name}-vpc-access", f"{name}-access", f"{name}-logs"} <= set(fn.depends_on)
    assert functions["dbops-migrate"].inputs["timeout"] == 900


def test_dbops_group_reaches_database_redis_and_https_only(plan: Plan) -> None:
    egress = {(r.inputs["fromPort"], r.inputs.get("referencedSecurityGroupId") or r.inputs.get("cidrIpv4"))
              for r in plan.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
              if r.inputs["securityGroupId"] == plan.named("sg-dbops").id}
    assert (5432, plan.named("sg-database").id) in egress and (6379, plan.named("sg-redis").id) in egress
    assert (443, "0.0.0.0/0") in egress
    ingress = {(r.inputs["securityGroupId"], r.inputs["fromPort"])
               for r in plan.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
               if r.inputs.get("referencedSecurityGroupId") == plan.named("sg-dbops").id}
    assert ingress == {(plan.named("sg-database").id, 5432), (plan.named("sg-redis").id, 6379)}


def test_environment_holds_arns_and_endpoint_only(plan: Plan) -> None:
    env = {fn.name: fn.inputs["environment"]["variables"] for fn in plan.of_type(FUNCTION)}
    master, app = master_secret_arn("eu-central-1"), secret_arn(plan, "dbops-app-credentials")
    monitor, redis = secret_arn(plan, "dbops-monitor-credentials"), redis_secret_arn("eu-central-1", plan.stack)
    endpoint = {"DB_HOST": DB_HOST, "DB_PORT": "5432", "DB_NAME": "psychology"}
    assert env["dbops-migrate"] == {"MASTER_SECRET_ARN": master, "APP_DB_SECRET_ARN": app, "MONITOR_DB_SECRET_ARN": monitor, **endpoint}
    assert env["dbops-health"] == {"APP_DB_SECRET_ARN": app, "REDIS_SECRET_ARN": redis, **endpoint}
    assert env["dbops-rotate"] == {"MASTER_SECRET_ARN": master, **endpoint}
    for variables in env.values():
        for key, value in variables.items():
            assert "PASSWORD" not in key and "[secret]" not in value
            assert value.startswith("arn:aws:secretsmanager:") or key in endpoint


def test_each_function_has_its_own_least_privilege_role(plan: Plan) -> None:
    roles = {fn.name: fn.inputs["role"] for fn in plan.of_type(FUNCTION)}
    assert len(set(roles.values())) == 3
    for name in ("migrate", "health", "rotate"):
        role = plan.named(f"dbops-{name}-role")
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert trust == [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole",
                          "Condition": {"StringEquals": {"aws:SourceAccount": MOCK_ACCOUNT_ID}}}]
        attachment = plan.named(f"dbops-{name}-vpc-access")
        assert attachment.inputs["policyArn"] == VPC_ACCESS_POLICY_ARN
        attached = [r for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                    if r.name.startswith(f"dbops-{name}-")]
        assert attached == [attachment]
        for statement in policy(plan, name):
            if statement["Resource"] == "*":
                assert name == "rotate" and statement["Action"] == "secretsmanager:GetRandomPassword"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(action.startswith("kms:") for action in actions):
                assert statement["Resource"] == key_arn(plan)
                assert statement["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.eu-central-1.amazonaws.com"}}

    master, app = master_secret_arn("eu-central-1"), secret_arn(plan, "dbops-app-credentials")
    monitor, redis = secret_arn(plan, "dbops-monitor-credentials"), redis_secret_arn("eu-central-1", plan.stack)

    def granted(name: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for statement in policy(plan, name):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in actions:
                out.setdefault(action, set()).update(resources)
        return out

    assert granted("migrate") == {"secretsmanager:GetSecretValue": {master, app, monitor}, "kms:Decrypt": {key_arn(plan)}}
    assert granted("health") == {"secretsmanager:GetSecretValue": {app, redis}, "kms:Decrypt": {key_arn(plan)}}
    assert granted("rotate") == {
        "secretsmanager:DescribeSecret": {app}, "secretsmanager:GetSecretValue": {app, master},
        "secretsmanager:PutSecretValue": {app}, "secretsmanager:UpdateSecretVersionStage": {app},
        "secretsmanager:GetRandomPassword": {"*"}, "kms:Decrypt": {key_arn(plan)}, "kms:GenerateDataKey": {key_arn(plan)}}


def test_log_groups_keep_logs_encrypted(plan: Plan) -> None:
    groups = {r.inputs["name"]: r for r in plan.of_type("aws:cloudwatch/logGroup:LogGroup") if r.name.startswith("dbops-")}
    assert set(groups) == {f"/aws/lambda/psychology-api-{plan.stack}-db-{f}" for f in ("migrate", "health", "rotate")}
    for group in groups.values():
        assert group.inputs["retentionInDays"] == 90 and group.inputs["kmsKeyId"] == key_arn(plan)


def test_credential_secrets(plan: Plan) -> None:
    app = plan.named("dbops-app-credentials")
    monitor = plan.named("dbops-monitor-credentials")
    assert app.inputs["name"] == f"psychology-api/{plan.stack}/database/app"
    assert monitor.inputs["name"] == f"psychology-api/{plan.stack}/database/monitor"
    for secret in (app, monitor):
        assert secret.inputs["kmsKeyId"] == key_arn(plan)
        assert secret.inputs["recoveryWindowInDays"] == (30 if plan.stack == "prod" else 7)
    for version in ("dbops-app-credentials-first", "dbops-monitor-credentials-value"):
        assert plan.named(version).inputs["secretString"] == "[secret]"
    for password in ("dbops-app-first-password", "dbops-monitor-password"):
        inputs = plan.named(password).inputs
        assert inputs["length"] == 32 and inputs["overrideSpecial"] == "-_."


def test_rotation_every_90_days_by_our_function(plan: Plan) -> None:
    rotation = plan.one("aws:secretsmanager/secretRotation:SecretRotation")
    assert rotation.inputs["rotationRules"] == {"automaticallyAfterDays": 90}
    assert rotation.inputs["rotationLambdaArn"] == plan.named("dbops-rotate").outputs["arn"]
    assert rotation.inputs["secretId"] == plan.named("dbops-app-credentials").id
    assert rotation.inputs["rotateImmediately"] is False
    # Switched on only after the first migration run created the roles and set the passwords.
    assert {"dbops-bootstrap", "dbops-rotation-invoke"} <= set(rotation.depends_on)
    permission = plan.one("aws:lambda/permission:Permission")
    assert permission.inputs == {"action": "lambda:InvokeFunction", "function": f"psychology-api-{plan.stack}-db-rotate",
                                 "principal": "secretsmanager.amazonaws.com", "sourceAccount": MOCK_ACCOUNT_ID,
                                 "sourceArn": secret_arn(plan, "dbops-app-credentials")}


def test_rotation_period_follows_the_config() -> None:
    plan = run_program("staging", overrides={"secretRotationDays": 30}, program=program)
    assert plan.one("aws:secretsmanager/secretRotation:SecretRotation").inputs["rotationRules"] == {"automaticallyAfterDays": 30}


def test_network_path_to_the_secrets_manager_api(plan: Plan) -> None:
    """The functions reach Secrets Manager through the interface endpoint in prod and through
    the NAT gateway in both stacks (the dbops group allows 443 out)."""
    endpoints = {r.inputs["serviceName"]: r for r in plan.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")}
    private = sorted(r.id for r in plan.of_type("aws:ec2/subnet:Subnet") if r.inputs["tags"]["tier"] == "private")
    if plan.stack == "prod":
        endpoint = endpoints["com.amazonaws.eu-central-1.secretsmanager"]
        assert endpoint.inputs["vpcEndpointType"] == "Interface" and endpoint.inputs["privateDnsEnabled"] is True
        assert sorted(endpoint.inputs["subnetIds"]) == private
    else:
        assert "com.amazonaws.eu-central-1.secretsmanager" not in endpoints
    nat_routes = [r for r in plan.of_type("aws:ec2/route:Route") if r.inputs.get("natGatewayId")]
    assert nat_routes and all(r.inputs["destinationCidrBlock"] == "0.0.0.0/0" for r in nat_routes)
    associated = {r.inputs["subnetId"] for r in plan.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
                  if r.inputs["routeTableId"] in {route.inputs["routeTableId"] for route in nat_routes}}
    assert set(private) <= associated


def test_bootstrap_runs_the_migrate_function_once_per_database(plan: Plan) -> None:
    bootstrap = plan.named("dbops-bootstrap")
    assert bootstrap.type == "command:local:Command"
    assert bootstrap.inputs["create"] == ('"${PSYCHOLOGY_API_PYTHON:-venv/bin/python}" -m scripts.release invoke '
                                          f"--function psychology-api-{plan.stack}-db-migrate --region eu-central-1")
    assert secret_arn(plan, "dbops-app-credentials") in bootstrap.inputs["triggers"]
    assert DB_HOST in bootstrap.inputs["triggers"]
    assert "dbops-migrate" in bootstrap.depends_on


def test_stack_outputs(plan: Plan) -> None:
    assert plan.outputs["db_app_secret_arn"] == secret_arn(plan, "dbops-app-credentials")
    assert plan.outputs["db_monitor_secret_arn"] == secret_arn(plan, "dbops-monitor-credentials")
    assert plan.outputs["dbops_function_names"] == {
        f: f"psychology-api-{plan.stack}-db-{f}" for f in ("migrate", "health", "rotate")}
    assert "smoke_test_report" in plan.outputs
