"""Adapter for Pulumi CrossGuard: the rules of `policy.rules` as pulumi_policy policies.

`build_policies()` returns the list the pack registers; building it starts nothing, so tests
import and exercise it directly. `policy/__main__.py` hands it to `PolicyPack`, which starts
the analyzer's gRPC server, only when the Pulumi CLI runs the pack.

The CLI sends resource properties wrapped in proxies that raise on values unknown during
preview; `plain()` turns them into plain data with `UNKNOWN` in those places, so the rules see
exactly what the offline plan gives them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyProviderResource,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError
from pulumi_policy.secret import Secret

from policy.model import UNKNOWN, ProviderView, ResourceRule, ResourceView, StackRule
from policy.rules import RULES, Rule

PACK_NAME = "psychology-api-security-baseline"
PACK_DESCRIPTION = ("Security baseline of the psychology-api platform: network exposure, IMDSv2, encryption, "
                    "TLS, backups, rotation and tags (AWS FSBP / checkov controls).")
_IDENTITY_PROPS = ("id", "arn", "name", "bucket", "keyId")


def plain(value: Any) -> Any:
    """Plain dicts/lists from the policy SDK's proxies; unknown values become UNKNOWN, secrets
    their value, whole-number floats (protobuf numbers) ints."""
    if isinstance(value, Secret):
        return plain(value.value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in list(value):
            try:
                out[str(key)] = plain(value[key])
            except UnknownValueError:
                out[str(key)] = UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items: list[Any] = []
        for index in range(len(value)):
            try:
                items.append(plain(value[index]))
            except UnknownValueError:
                items.append(UNKNOWN)
        return items
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _provider(provider: Optional[PolicyProviderResource]) -> Optional[ProviderView]:
    if provider is None:
        return None
    return ProviderView(type=provider.resource_type, name=provider.name, props=plain(provider.props))


def view_of_args(args: ResourceValidationArgs) -> ResourceView:
    return ResourceView(type=args.resource_type, name=args.name, props=plain(args.props), urn=args.urn,
                        provider=_provider(args.provider))


def view_of_resource(resource: PolicyResource) -> ResourceView:
    props = plain(resource.props)
    identities = frozenset(v for k in _IDENTITY_PROPS if isinstance(v := props.get(k), str) and v and v != UNKNOWN)
    dependencies = {prop: frozenset(dep.urn for dep in deps) for prop, deps in resource.property_dependencies.items()}
    return ResourceView(type=resource.resource_type, name=resource.name, props=props, urn=resource.urn,
                        provider=_provider(resource.provider), identities=identities,
                        property_dependencies=dependencies)


# The CLI prints a violation as the policy's description (which names the control) followed by
# the rule's message.
def _resource_policy(rule: ResourceRule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if not rule.applies_to(args.resource_type):
            return
        for message in rule.check(view_of_args(args)):
            report_violation(message, None)

    return ResourceValidationPolicy(name=rule.name, description=f"{rule.description} ({rule.control})",
                                    validate=validate, enforcement_level=EnforcementLevel.MANDATORY)


def _stack_policy(rule: StackRule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        views = [view_of_resource(r) for r in args.resources]
        for resource, message in rule.check(views):
            report_violation(message, resource.urn or None)

    return StackValidationPolicy(name=rule.name, description=f"{rule.description} ({rule.control})",
                                 validate=validate, enforcement_level=EnforcementLevel.MANDATORY)


def build_policies(rules: Sequence[Rule] = RULES) -> list[Policy]:
    return [_resource_policy(rule) if isinstance(rule, ResourceRule) else _stack_policy(rule) for rule in rules]
