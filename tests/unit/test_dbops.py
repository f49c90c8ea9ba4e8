"""The database-operations functions, their roles, the credential secrets and the rotation of
every secret that rotates (database credentials, the Redis AUTH token, the Django SECRET_KEY and
Grafana's admin password), in the real plan of both stacks under the mock engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.dbops import VPC_ACCESS_POLICY_ARN
from components.lambda_package import build_lambda_package
from harness.mock_engine import _SECRET_SIG, _SIG_KEY, MOCK_ACCOUNT_ID, Plan, run_program

FUNCTION = "aws:lambda/function:Function"
ROTATION = "aws:secretsmanager/secretRotation:SecretRotation"
PERMISSION = "aws:lambda/permission:Permission"
HANDLERS = {"dbops-migrate": "migrate_handler", "dbops-health": "health_handler", "dbops-rotate": "rotation_handler",
            "dbops-rotate-redis": "redis_rotation_handler", "dbops-check-rotation": "rotation_check_handler",
            "dbops-rotate-generated": "generated_rotation_handler"}
FUNCTION_KEYS = ("migrate", "health", "rotate", "rotate-redis", "check-rotation", "rotate-generated")


def key_arn(plan: Plan) -> str:
    return str(plan.one("aws:kms/key:Key").outputs["arn"])


def secret_arn(plan: Plan, name: str) -> str:
    return str(plan.named(name).outputs["arn"])


def master_secret_arn(plan: Plan) -> str:
    return str(plan.outputs["db_master_secret_arn"])


def redis_secret_arn(plan: Plan) -> str:
    return str(plan.outputs["redis_secret_arn"])


def redis_group_arn(plan: Plan) -> str:
    return str(plan.one("aws:elasticache/replicationGroup:ReplicationGroup").outputs["arn"])


def db_host(plan: Plan) -> str:
    return str(plan.outputs["db_endpoint"])


def policy(plan: Plan, function: str) -> list[dict[str, Any]]:
    return list(json.loads(plan.named(f"dbops-{function}-access").inputs["policy"])["Statement"])


def granted(plan: Plan, name: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for statement in policy(plan, name):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            out.setdefault(action, set()).update(resources)
    return out


def secret_document(plan: Plan, version: str) -> dict[str, Any]:
    wrapped = plan.named(version).outputs["secretString"]
    assert isinstance(wrapped, dict) and wrapped.get(_SIG_KEY) == _SECRET_SIG
    return dict(json.loads(wrapped["value"]))


def test_every_function_runs_in_the_private_subnets_with_the_dbops_group(plan: Plan) -> None:
    functions = {r.name: r for r in plan.of_type(FUNCTION)}
    assert set(functions) == {"dbops-migrate", "dbops-health", "dbops-rotate", "dbops-rotate-redis", "dbops-check-rotation",
                              "dbops-rotate-generated"}
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
        assert inputs["name"] == f"psychology-api-{plan.stack}-db-{name.removeprefix('dbops-')}"
        assert 30 <= inputs["timeout"] <= 900 and 128 <= inputs["memorySize"] <= 1024
        assert inputs["loggingConfig"]["logGroup"] == f"/aws/lambda/{inputs['name']}"
        # The role can create the function's network interfaces before the function exists.
        assert {f"{name}-role", f"{name}-vpc-access", f"{name}-access", f"{name}-logs"} <= set(fn.depends_on)
    assert functions["dbops-migrate"].inputs["timeout"] == 900
    # A token change on the replication group, waited for, fits in each step of the Redis
    # rotation (one change per step; the waits end at a deadline derived from this timeout).
    assert functions["dbops-rotate-redis"].inputs["timeout"] == 900


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
    master, app = master_secret_arn(plan), secret_arn(plan, "dbops-app-credentials")
    monitor, redis = secret_arn(plan, "dbops-monitor-credentials"), redis_secret_arn(plan)
    endpoint = {"DB_HOST": db_host(plan), "DB_PORT": "5432", "DB_NAME": "psychology"}
    redis_endpoint = {"REDIS_REPLICATION_GROUP_ID": f"psychology-api-{plan.stack}-redis",
                      "REDIS_HOST": plan.outputs["redis_endpoint"], "REDIS_PORT": "6379"}
    backup, drill = secret_arn(plan, "dbops-backup-credentials"), secret_arn(plan, "dbops-drill-credentials")
    migration = {"MIGRATION_LOCK_TIMEOUT_SECONDS": "5", "MIGRATION_LOCK_ATTEMPTS": "5",
                 "MIGRATION_STATEMENT_TIMEOUT_SECONDS": "600"}
    assert env["dbops-migrate"] == {"MASTER_SECRET_ARN": master, "APP_DB_SECRET_ARN": app, "MONITOR_DB_SECRET_ARN": monitor,
                                    "BACKUP_DB_SECRET_ARN": backup, "DRILL_DB_SECRET_ARN": drill, **endpoint, **migration}
    assert env["dbops-health"] == {"APP_DB_SECRET_ARN": app, "REDIS_SECRET_ARN": redis, **endpoint}
    assert env["dbops-rotate"] == {"MASTER_SECRET_ARN": master, **endpoint}
    # The group comes from the environment, never from a secret: the role may change only it.
    assert env["dbops-rotate-redis"] == redis_endpoint
    check = env.pop("dbops-check-rotation")   # ARNs, a metric namespace and a number of days
    generated = {plan.outputs["app_secret_arn"], plan.outputs["grafana_admin_secret_arn"]}
    assert set(check["ROTATED_SECRET_ARNS"].split(",")) == {app, monitor, backup, drill, redis, *generated}
    assert check["METRIC_NAMESPACE"] == f"psychology-api/{plan.stack}/rotation" and check["MARGIN_DAYS"] == "2"
    # Nothing to reach but Secrets Manager: the secret to rotate comes with each event.
    assert env["dbops-rotate-generated"] == {}
    for variables in env.values():
        for key, value in variables.items():
            assert "PASSWORD" not in key and "TOKEN" not in key and "[secret]" not in value
            assert value.startswith("arn:aws:secretsmanager:") or key in endpoint or key in redis_endpoint or key in migration


def test_each_function_has_its_own_least_privilege_role(plan: Plan) -> None:
    roles = {fn.name: fn.inputs["role"] for fn in plan.of_type(FUNCTION)}
    assert len(set(roles.values())) == len(FUNCTION_KEYS)
    for name in FUNCTION_KEYS:
        role = plan.named(f"dbops-{name}-role")
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert trust == [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole",
                          "Condition": {"StringEquals": {"aws:SourceAccount": MOCK_ACCOUNT_ID}}}]
        attachment = plan.named(f"dbops-{name}-vpc-access")
        assert attachment.inputs["policyArn"] == VPC_ACCESS_POLICY_ARN
        attached = [r for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                    if r.inputs["role"] == role.outputs["name"]]
        assert attached == [attachment]
        for statement in policy(plan, name):
            if statement["Resource"] == "*" and name == "check-rotation":
                assert statement["Action"] == "cloudwatch:PutMetricData" and "cloudwatch:namespace" in str(statement)
            elif statement["Resource"] == "*":
                assert name in ("rotate", "rotate-redis", "rotate-generated")
                assert statement["Action"] == "secretsmanager:GetRandomPassword"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(action.startswith("kms:") for action in actions):
                assert statement["Resource"] == key_arn(plan)
                assert statement["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.eu-central-1.amazonaws.com"}}
    # Exactly one VPC-access attachment per function role, nothing else attached.
    assert sorted(r.name for r in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                  if r.name.startswith("dbops-")) == sorted(f"dbops-{n}-vpc-access" for n in FUNCTION_KEYS)

    master, app = master_secret_arn(plan), secret_arn(plan, "dbops-app-credentials")
    monitor, redis = secret_arn(plan, "dbops-monitor-credentials"), redis_secret_arn(plan)
    key = key_arn(plan)
    backup, drill = secret_arn(plan, "dbops-backup-credentials"), secret_arn(plan, "dbops-drill-credentials")
    logins = {app, monitor, backup, drill}
    assert granted(plan, "migrate") == {"secretsmanager:GetSecretValue": {master, *logins}, "kms:Decrypt": {key}}
    assert granted(plan, "health") == {"secretsmanager:GetSecretValue": {app, redis}, "kms:Decrypt": {key}}
    assert granted(plan, "rotate") == {
        "secretsmanager:DescribeSecret": logins, "secretsmanager:GetSecretValue": {*logins, master},
        "secretsmanager:PutSecretValue": logins, "secretsmanager:UpdateSecretVersionStage": logins,
        "secretsmanager:GetRandomPassword": {"*"}, "kms:Decrypt": {key}, "kms:GenerateDataKey": {key}}
    # The Redis rotation: its secret, exactly the replication group, no database secret at all.
    assert granted(plan, "rotate-redis") == {
        "secretsmanager:DescribeSecret": {redis}, "secretsmanager:GetSecretValue": {redis},
        "secretsmanager:PutSecretValue": {redis}, "secretsmanager:UpdateSecretVersionStage": {redis},
        "elasticache:ModifyReplicationGroup": {redis_group_arn(plan)},
        "elasticache:DescribeReplicationGroups": {redis_group_arn(plan)},
        "secretsmanager:GetRandomPassword": {"*"}, "kms:Decrypt": {key}, "kms:GenerateDataKey": {key}}
    assert redis_group_arn(plan).endswith(f":replicationgroup:psychology-api-{plan.stack}-redis")
    # The generated secrets' rotation: exactly the Django and Grafana secrets, nothing of the database.
    django, grafana = plan.outputs["app_secret_arn"], plan.outputs["grafana_admin_secret_arn"]
    assert granted(plan, "rotate-generated") == {
        "secretsmanager:DescribeSecret": {django, grafana}, "secretsmanager:GetSecretValue": {django, grafana},
        "secretsmanager:PutSecretValue": {django, grafana}, "secretsmanager:UpdateSecretVersionStage": {django, grafana},
        "secretsmanager:GetRandomPassword": {"*"}, "kms:Decrypt": {key}, "kms:GenerateDataKey": {key}}


def test_log_groups_keep_logs_encrypted(plan: Plan) -> None:
    groups = {r.inputs["name"]: r for r in plan.of_type("aws:cloudwatch/logGroup:LogGroup") if r.name.startswith("dbops-")}
    assert set(groups) == {f"/aws/lambda/psychology-api-{plan.stack}-db-{f}" for f in FUNCTION_KEYS}
    for group in groups.values():
        assert group.inputs["retentionInDays"] == 365  # rotation and migration records: a year in both stacks
        assert group.inputs["kmsKeyId"] == key_arn(plan)


def test_credential_secrets(plan: Plan) -> None:
    app = plan.named("dbops-app-credentials")
    monitor = plan.named("dbops-monitor-credentials")
    assert app.inputs["name"] == f"psychology-api/{plan.stack}/database/app"
    assert monitor.inputs["name"] == f"psychology-api/{plan.stack}/database/monitor"
    for secret in (app, monitor):
        assert secret.inputs["kmsKeyId"] == key_arn(plan)
        assert secret.inputs["recoveryWindowInDays"] == (30 if plan.stack == "prod" else 7)
        assert "rotated every 90 days with alternating users" in secret.inputs["description"]
    for version in ("dbops-app-credentials-first", "dbops-monitor-credentials-value"):
        assert plan.named(version).inputs["secretString"] == "[secret]"
    for password in ("dbops-app-first-password", "dbops-monitor-password"):
        inputs = plan.named(password).inputs
        assert inputs["length"] == 32 and inputs["overrideSpecial"] == "-_."
    # The first users of the two alternating pairs.
    assert secret_document(plan, "dbops-app-credentials-first")["username"] == "psychology_app_a"
    monitor_doc = secret_document(plan, "dbops-monitor-credentials-value")
    assert monitor_doc["username"] == "psychology_monitor_a"
    assert set(monitor_doc) == {"username", "password", "host", "port", "dbname"}
    for key, first_user in (("backup", "psychology_backup_a"), ("drill", "psychology_drill_a")):
        secret = plan.named(f"dbops-{key}-credentials")
        assert secret.inputs["name"] == f"psychology-api/{plan.stack}/database/{key}"
        assert secret.inputs["kmsKeyId"] == key_arn(plan)
        assert "rotated every 90 days with alternating users" in secret.inputs["description"]
        assert plan.named(f"dbops-{key}-credentials-value").inputs["secretString"] == "[secret]"
        assert plan.named(f"dbops-{key}-credentials-value").ignore_changes == ["secretString", "versionStages"]
        document = secret_document(plan, f"dbops-{key}-credentials-value")
        assert document["username"] == first_user
        assert set(document) == {"username", "password", "host", "port", "dbname"}


def test_pulumi_never_writes_over_a_rotated_value(plan: Plan) -> None:
    """Rotation owns every rotated value after the first version: Pulumi ignores later
    differences (docs/runbooks/rotation.md)."""
    for version in ("dbops-app-credentials-first", "dbops-monitor-credentials-value", "redis-secret-value",
                    "secrets-app-value", "monitoring-grafana-value"):
        assert plan.named(version).ignore_changes == ["secretString", "versionStages"], version
    assert plan.named("redis-group").ignore_changes == ["authToken"]


def test_rotation_every_90_days_by_our_function(plan: Plan) -> None:
    rotation = plan.named("dbops-app-credentials-rotation")
    assert rotation.inputs["rotationRules"] == {"automaticallyAfterDays": 90}
    assert rotation.inputs["rotationLambdaArn"] == plan.named("dbops-rotate").outputs["arn"]
    assert rotation.inputs["secretId"] == plan.named("dbops-app-credentials").id
    assert rotation.inputs["rotateImmediately"] is False
    # Switched on only after the first migration run created the roles and set the passwords.
    assert {"dbops-bootstrap", "dbops-rotation-invoke"} <= set(rotation.depends_on)
    permission = plan.named("dbops-rotation-invoke")
    assert permission.inputs == {"action": "lambda:InvokeFunction", "function": f"psychology-api-{plan.stack}-db-rotate",
                                 "principal": "secretsmanager.amazonaws.com", "sourceAccount": MOCK_ACCOUNT_ID,
                                 "sourceArn": secret_arn(plan, "dbops-app-credentials")}


def test_every_secret_that_must_rotate_does(plan: Plan) -> None:
    """The application's and the monitoring role's credentials, the Redis token, the Django
    SECRET_KEY and Grafana's admin password, each by its function, with an invoke permission
    naming exactly that secret."""
    rotations = {r.name: r for r in plan.of_type(ROTATION)}
    assert set(rotations) == {"dbops-app-credentials-rotation", "dbops-monitor-credentials-rotation", "dbops-redis-rotation",
                              "dbops-backup-credentials-rotation", "dbops-drill-credentials-rotation",
                              "dbops-django-secret-key-rotation", "dbops-grafana-admin-rotation"}
    expected = {
        # rotation: (secret resource id or ARN, function, permission, must wait for)
        "dbops-monitor-credentials-rotation": (plan.named("dbops-monitor-credentials").id, "dbops-rotate",
                                               "dbops-monitor-rotation-invoke", "dbops-bootstrap"),
        "dbops-backup-credentials-rotation": (plan.named("dbops-backup-credentials").id, "dbops-rotate",
                                              "dbops-backup-rotation-invoke", "dbops-bootstrap"),
        "dbops-drill-credentials-rotation": (plan.named("dbops-drill-credentials").id, "dbops-rotate",
                                             "dbops-drill-rotation-invoke", "dbops-bootstrap"),
        "dbops-redis-rotation": (redis_secret_arn(plan), "dbops-rotate-redis", "dbops-redis-rotation-invoke",
                                 "redis-secret-value"),
        # Once their first values exist (and, as for Redis, the network path of the function).
        "dbops-django-secret-key-rotation": (plan.outputs["app_secret_arn"], "dbops-rotate-generated",
                                             "dbops-django-secret-key-rotation-invoke", "secrets-app-value"),
        "dbops-grafana-admin-rotation": (plan.outputs["grafana_admin_secret_arn"], "dbops-rotate-generated",
                                         "dbops-grafana-admin-rotation-invoke", "monitoring-grafana-value"),
    }
    sources = {"dbops-monitor-rotation-invoke": secret_arn(plan, "dbops-monitor-credentials"),
               "dbops-redis-rotation-invoke": redis_secret_arn(plan),
               "dbops-rotation-invoke": secret_arn(plan, "dbops-app-credentials"),
               "dbops-backup-rotation-invoke": secret_arn(plan, "dbops-backup-credentials"),
               "dbops-drill-rotation-invoke": secret_arn(plan, "dbops-drill-credentials"),
               "dbops-django-secret-key-rotation-invoke": plan.outputs["app_secret_arn"],
               "dbops-grafana-admin-rotation-invoke": plan.outputs["grafana_admin_secret_arn"]}
    for name, (secret, function, permission, after) in expected.items():
        rotation = rotations[name]
        assert rotation.inputs["secretId"] == secret
        assert rotation.inputs["rotationRules"] == {"automaticallyAfterDays": 90}
        assert rotation.inputs["rotationLambdaArn"] == plan.named(function).outputs["arn"]
        assert rotation.inputs["rotateImmediately"] is False
        assert {permission, after} <= set(rotation.depends_on)
        assert plan.named(permission).inputs == {
            "action": "lambda:InvokeFunction", "function": plan.named(function).inputs["name"],
            "principal": "secretsmanager.amazonaws.com", "sourceAccount": MOCK_ACCOUNT_ID, "sourceArn": sources[permission]}
    # Secrets Manager's permissions, plus EventBridge's for the hourly rotation check.
    check = plan.named("dbops-check-rotation-invoke")
    assert check.inputs["principal"] == "events.amazonaws.com"
    assert {p.name: p.inputs["sourceArn"] for p in plan.of_type(PERMISSION)} == {
        **sources, check.name: plan.named("dbops-check-rotation-schedule").outputs["arn"]}


def test_rotation_period_follows_the_config() -> None:
    plan = run_program("staging", overrides={"secretRotationDays": 30})
    rotations = plan.of_type(ROTATION)
    assert {r.name for r in rotations} == {
        "dbops-app-credentials-rotation", "dbops-monitor-credentials-rotation", "dbops-backup-credentials-rotation",
        "dbops-drill-credentials-rotation", "dbops-redis-rotation", "dbops-django-secret-key-rotation",
        "dbops-grafana-admin-rotation"}
    assert all(r.inputs["rotationRules"] == {"automaticallyAfterDays": 30} for r in rotations)


def test_migration_timeouts_follow_the_config() -> None:
    plan = run_program("staging", overrides={"migrationLockTimeoutSeconds": 3, "migrationLockAttempts": 4,
                                             "migrationStatementTimeoutSeconds": 300})
    variables = plan.named("dbops-migrate").inputs["environment"]["variables"]
    assert {k: v for k, v in variables.items() if k.startswith("MIGRATION_")} == {
        "MIGRATION_LOCK_TIMEOUT_SECONDS": "3", "MIGRATION_LOCK_ATTEMPTS": "4", "MIGRATION_STATEMENT_TIMEOUT_SECONDS": "300"}


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
    assert db_host(plan) in bootstrap.inputs["triggers"]
    assert "dbops-migrate" in bootstrap.depends_on


def network_path(plan: Plan) -> set[str]:
    """What a function needs to reach the database, Redis and the Secrets Manager API, beyond
    the subnets and the group it names: the rules of the groups involved, the NAT routes of the
    private subnets, the interface endpoints."""
    groups = {plan.named(f"sg-{role}").id for role in ("dbops", "database", "redis")}
    rules = {r.name for token in ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                                  "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
             for r in plan.of_type(token) if r.inputs["securityGroupId"] in groups}
    nat_routes = {r.name for r in plan.of_type("aws:ec2/route:Route") if r.inputs.get("natGatewayId")}
    endpoints = {r.name for r in plan.of_type("aws:ec2/vpcEndpoint:VpcEndpoint") if r.inputs["vpcEndpointType"] == "Interface"}
    assert {"sg-dbops-out-5432-database", "sg-database-in-5432-dbops", "sg-redis-in-6379-dbops"} <= rules
    assert nat_routes and (endpoints if plan.stack == "prod" else not endpoints)
    return rules | nat_routes | endpoints


def test_nothing_runs_a_function_before_its_network_path_exists(plan: Plan) -> None:
    """On the first `up` the bootstrap invoke (and Secrets Manager's test of the Redis rotation
    function when rotation is switched on) must wait for the rules, routes and endpoints; the
    database rotations wait for the bootstrap."""
    needed = network_path(plan)
    bootstrap = set(plan.named("dbops-bootstrap").depends_on)
    assert needed <= bootstrap, sorted(needed - bootstrap)
    assert needed <= set(plan.named("dbops-redis-rotation").depends_on)
    for rotation in ("dbops-app-credentials-rotation", "dbops-monitor-credentials-rotation",
                     "dbops-backup-credentials-rotation", "dbops-drill-credentials-rotation"):
        assert "dbops-bootstrap" in plan.named(rotation).depends_on
    # Whole components: everything of the network and the security groups, children included.
    for component in ("network", "sg"):
        children = {r.name for r in plan.children_of(component) if r.custom}
        assert children and children <= bootstrap, component


def test_stack_outputs(plan: Plan) -> None:
    assert plan.outputs["db_app_secret_arn"] == secret_arn(plan, "dbops-app-credentials")
    assert plan.outputs["db_monitor_secret_arn"] == secret_arn(plan, "dbops-monitor-credentials")
    assert plan.outputs["db_backup_secret_arn"] == secret_arn(plan, "dbops-backup-credentials")
    assert plan.outputs["db_drill_secret_arn"] == secret_arn(plan, "dbops-drill-credentials")
    assert plan.outputs["dbops_function_names"] == {
        f: f"psychology-api-{plan.stack}-db-{f}" for f in FUNCTION_KEYS}
    assert "smoke_test_report" in plan.outputs


@pytest.mark.parametrize("missing", ["redis_replication_group_id", "redis_replication_group_arn", "redis_host"])
def test_without_the_replication_group_the_redis_secret_does_not_rotate_here(missing: str) -> None:
    """DbOps alone (no Redis inputs): the three original functions and the rotation check, the database rotations."""
    import dataclasses

    import pulumi

    from components.dbops import DbOps, DbOpsArgs

    def program() -> None:
        args = DbOpsArgs(region="eu-central-1", account_id=MOCK_ACCOUNT_ID, kms_key_arn="arn:aws:kms:eu-central-1:1:key/k",
                         private_subnet_ids=["subnet-a"], security_group_id="sg-dbops",
                         master_secret_arn="arn:aws:secretsmanager:eu-central-1:1:secret:rds!db-x",
                         db_host="db.internal", db_port=5432, db_name="psychology", rotation_days=90,
                         recovery_window_days=7, redis_secret_arn="arn:aws:secretsmanager:eu-central-1:1:secret:redis-x",
                         redis_replication_group_id="g", redis_replication_group_arn="arn:aws:elasticache:x", redis_host="h")
        DbOps("dbops", dataclasses.replace(args, **{missing: None})).watch_rotations()
        pulumi.export("ok", True)

    plan = run_program("staging", program=program)
    assert {r.name for r in plan.of_type(FUNCTION)} == {"dbops-migrate", "dbops-health", "dbops-rotate",
                                                        "dbops-check-rotation"}
    assert {r.name for r in plan.of_type(ROTATION)} == {"dbops-app-credentials-rotation", "dbops-monitor-credentials-rotation",
                                                        "dbops-backup-credentials-rotation", "dbops-drill-credentials-rotation"}
    watched = plan.named("dbops-check-rotation").inputs["environment"]["variables"]["ROTATED_SECRET_ARNS"].split(",")
    assert len(watched) == 4 and not any("redis" in arn for arn in watched)
