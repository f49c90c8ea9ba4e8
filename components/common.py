"""Small helpers shared by the components: resource names, Name tags, IAM documents."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

TYPE_PREFIX = "psychology-api"


def type_token(module: str, type_name: str) -> str:
    return f"{TYPE_PREFIX}:{module}:{type_name}"


def physical_prefix() -> str:
    """Prefix of names AWS shows to humans: project and stack, e.g. psychology-api-prod."""
    return f"{pulumi.get_project()}-{pulumi.get_stack()}"


def name_tag(role: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Name tag for the console; project/stack/managed-by come from the provider's default tags."""
    tags = {"Name": f"{physical_prefix()}-{role}"}
    tags.update(extra or {})
    return tags


def policy_json(statements: Sequence[Mapping[str, Any]]) -> pulumi.Output[str]:
    """An IAM policy document from statements that may contain Outputs."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def assume_role_policy(service: str, source_account: str | None = None) -> str:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
    }
    if source_account:
        # Confused-deputy guard: only our account's resources may make the service assume it.
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": source_account}}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})
