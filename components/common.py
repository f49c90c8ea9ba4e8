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


def joined(*parts: pulumi.Input[str]) -> pulumi.Input[str]:
    """The parts concatenated: a plain string when every part is one, else an Output. Keeps the
    document builders pure, so tests call them with plain strings and compare plain data."""
    if all(isinstance(part, str) for part in parts):
        return "".join(str(part) for part in parts)
    return pulumi.Output.concat(*parts)


def as_text(value: pulumi.Input[Any]) -> pulumi.Input[str]:
    """A value as the string an environment variable holds (plain values stay plain)."""
    if isinstance(value, (str, int)):
        return str(value)
    return pulumi.Output.from_input(value).apply(str)


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
