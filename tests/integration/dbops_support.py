"""Helpers for the database-operations tests (plain functions and types; the fixtures built on
them live in dbops_fixtures.py)."""

from __future__ import annotations

import io
import json
import secrets as pysecrets
import time
import uuid
import zipfile
from dataclasses import dataclass
from typing import Any

import boto3
import requests

from scripts.lib.db import DbTarget, target_from_document

MOTO_ACCOUNT = "123456789012"
MOTO_REGION = "eu-central-1"


def safe_password() -> str:
    return pysecrets.token_urlsafe(24)


@dataclass
class DbSecrets:
    master_arn: str
    app_arn: str
    monitor_arn: str
    host: str
    port: int
    dbname: str

    def env(self) -> dict[str, str]:
        """The environment components/dbops.py gives the functions."""
        return {"MASTER_SECRET_ARN": self.master_arn, "APP_DB_SECRET_ARN": self.app_arn,
                "MONITOR_DB_SECRET_ARN": self.monitor_arn, "DB_HOST": self.host, "DB_PORT": str(self.port),
                "DB_NAME": self.dbname}


def read_json(sm: Any, secret_id: str, **kwargs: Any) -> dict[str, Any]:
    return json.loads(sm.get_secret_value(SecretId=secret_id, **kwargs)["SecretString"])


def create_function(endpoint_url: str, name: str) -> str:
    """A function in moto's Lambda (its code never runs there; tests queue the answers)."""
    iam = boto3.client("iam", endpoint_url=endpoint_url, region_name=MOTO_REGION)
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    lam = boto3.client("lambda", endpoint_url=endpoint_url, region_name=MOTO_REGION)
    return str(lam.create_function(FunctionName=name, Runtime="python3.12", Role=role, Handler="handler.handler",
                                   Code={"ZipFile": buffer.getvalue()})["FunctionArn"])


def queue_lambda_result(endpoint_url: str, result: Any) -> None:
    """The answer moto's Docker-free Lambda gives to the next invocation."""
    requests.post(f"{endpoint_url}/moto-api/static/lambda-simple/response", timeout=10, json={
        "account_id": MOTO_ACCOUNT, "region": MOTO_REGION, "results": [json.dumps(result, default=str)]})


def stage_rotation(secret_id: str) -> str:
    """What Secrets Manager does when a rotation starts, before it calls createSecret: a new
    version id (the ClientRequestToken), staged AWSPENDING, without a value. moto's API cannot
    express an empty version, so this sets its in-process state (ThreadedMotoServer shares it)."""
    from moto.secretsmanager.models import secretsmanager_backends

    secret = secretsmanager_backends[MOTO_ACCOUNT][MOTO_REGION].secrets[secret_id]
    token = str(uuid.uuid4())
    secret.remove_version_stages_from_old_versions(["AWSPENDING"])
    secret.versions[token] = {"createdate": int(time.time()), "version_id": token, "version_stages": ["AWSPENDING"]}
    return token


def stages(sm: Any, secret_id: str) -> dict[str, list[str]]:
    return sm.describe_secret(SecretId=secret_id)["VersionIdsToStages"]


def age_current_version(secret_id: str, hours: float) -> None:
    """Make the AWSCURRENT version `hours` older, as if that much time had passed since it became
    current (moto's in-process state, as stage_rotation uses it)."""
    from moto.secretsmanager.models import secretsmanager_backends

    secret = secretsmanager_backends[MOTO_ACCOUNT][MOTO_REGION].secrets[secret_id]
    current = next(v for v in secret.versions.values() if "AWSCURRENT" in v.get("version_stages", []))
    current["createdate"] = int(current["createdate"] - hours * 3600)


def version_with(sm: Any, secret_id: str, stage: str) -> str:
    return next(v for v, s in stages(sm, secret_id).items() if stage in s)


def creds(sm: Any, secret_id: str, stage: str = "AWSCURRENT") -> DbTarget:
    return target_from_document(read_json(sm, secret_id, VersionStage=stage))


def event(secret_id: str, token: str, step: str) -> dict[str, str]:
    return {"SecretId": secret_id, "ClientRequestToken": token, "Step": step}
