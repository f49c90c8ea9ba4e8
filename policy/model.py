"""The neutral view the rules judge, and the machinery that runs them.

A rule never sees Pulumi's policy SDK nor the mock engine: it receives `ResourceView`s (type
token, logical name, camelCase properties as the engine receives them, URN, provider) and
yields messages. Adapters build the views: `policy.pack` from what the Pulumi CLI sends a
policy pack, `policy.plan` from the offline plan. Both present values the rules cannot read in
the same way: `UNKNOWN` for a value that is computed later (an ARN during preview), `SECRET`
for a value the offline plan masks. An unknown value is never reported as a violation: the
CLI re-runs stack policies after the update, when every value is known.

Depends on the standard library only, so the pack runs wherever pulumi-policy is installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

UNKNOWN = "[unknown]"
SECRET = "[secret]"  # noqa: S105 - the mask, not a secret

PROD_STACKS = ("prod", "production")
REQUIRED_TAG_KEYS = ("project", "stack", "managed-by")


@dataclass(frozen=True)
class ProviderView:
    type: str
    name: str
    props: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourceView:
    """One resource as the rules see it.

    `identities` are the values other resources use to point at this one (id, ARN, name,
    bucket); `property_dependencies` maps a property to the URNs its value came from. Stack
    rules link resources with either (see `refers_to`)."""

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    provider: Optional[ProviderView] = None
    identities: frozenset[str] = frozenset()
    property_dependencies: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def get(self, path: str, default: Any = None) -> Any:
        """A nested property by dotted path ("metadataOptions.httpTokens"); None when absent."""
        value: Any = self.props
        for part in path.split("."):
            if not isinstance(value, Mapping):
                return default
            value = value.get(part)
            if value is None:
                return default
        return value


@dataclass(frozen=True)
class Violation:
    rule: str
    control: str
    resource_type: str
    resource_name: str
    urn: str
    message: str
    enforcement: str = "mandatory"

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "control": self.control, "resource_type": self.resource_type,
                "resource": self.resource_name, "urn": self.urn, "message": self.message,
                "enforcement": self.enforcement}


ResourceCheck = Callable[[ResourceView], Iterable[str]]
StackCheck = Callable[[Sequence[ResourceView]], Iterable[tuple[ResourceView, str]]]


@dataclass(frozen=True)
class ResourceRule:
    """Judges one resource at a time; `types` lists the type tokens it applies to, or a
    prefix ending with ':' (e.g. "aws:") for a whole provider."""

    name: str
    description: str
    control: str
    types: tuple[str, ...]
    check: ResourceCheck

    def applies_to(self, type_token: str) -> bool:
        return any(type_token == t or (t.endswith(":") and type_token.startswith(t)) for t in self.types)


@dataclass(frozen=True)
class StackRule:
    """Judges the stack as a whole: for rules that link resources (a bucket and its
    public-access block, an instance and its parameter group)."""

    name: str
    description: str
    control: str
    types: tuple[str, ...]  # the types it reports on (documentation and the docs/policy.md table)
    check: StackCheck


Rule = Union[ResourceRule, StackRule]


def evaluate(rules: Sequence[Rule], resources: Sequence[ResourceView]) -> list[Violation]:
    """Every violation of `rules` in `resources`, in a stable order."""
    found: list[Violation] = []
    for rule in rules:
        if isinstance(rule, ResourceRule):
            for resource in resources:
                if rule.applies_to(resource.type):
                    found.extend(_violation(rule, resource, message) for message in rule.check(resource))
        else:
            found.extend(_violation(rule, resource, message) for resource, message in rule.check(resources))
    return sorted(found, key=lambda v: (v.rule, v.resource_type, v.resource_name, v.message))


def _violation(rule: Rule, resource: ResourceView, message: str) -> Violation:
    return Violation(rule=rule.name, control=rule.control, resource_type=resource.type,
                     resource_name=resource.name, urn=resource.urn, message=message)


# --- value helpers -----------------------------------------------------------------------

def is_unknown(value: Any) -> bool:
    return isinstance(value, str) and value == UNKNOWN


def is_set(value: Any) -> bool:
    """Present and not empty. Unknown and secret values count as set: an ARN computed later,
    a token Pulumi keeps encrypted."""
    return value not in (None, "", [], {})


def as_bool(value: Any) -> Optional[bool]:
    """True/False from a bool or the "true"/"false" strings some APIs use (launch templates);
    None when absent or unknown."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return []


def tags_of(resource: ResourceView) -> dict[str, Any]:
    tags = resource.props.get("tags")
    return dict(tags) if isinstance(tags, Mapping) else {}


def default_tags(provider: Optional[ProviderView]) -> dict[str, Any]:
    """The provider's default tags. The engine passes structured provider inputs as JSON
    strings ({"tags": {...}}); a plain mapping is accepted too."""
    if provider is None:
        return {}
    raw = provider.props.get("defaultTags")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if isinstance(raw, Mapping):
        tags = raw.get("tags")
        return dict(tags) if isinstance(tags, Mapping) else {}
    return {}


def stack_of(resource: ResourceView) -> str:
    """The stack name from the URN: urn:pulumi:<stack>::<project>::<type>::<name>."""
    if resource.urn.startswith("urn:pulumi:"):
        return resource.urn[len("urn:pulumi:"):].split("::", 1)[0]
    return ""


def is_prod(resource: ResourceView) -> bool:
    """Prod rules apply when the stack is named prod or the provider tags it environment=prod."""
    return stack_of(resource) in PROD_STACKS or default_tags(resource.provider).get("environment") == "prod"


def refers_to(holder: ResourceView, prop: str, target: ResourceView) -> bool:
    """Whether `holder.props[prop]` points at `target`: by a property dependency (what the
    engine records, known even when the value is not) or by value (an id, ARN or name)."""
    if target.urn and target.urn in holder.property_dependencies.get(prop, frozenset()):
        return True
    value = holder.props.get(prop)
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and not is_unknown(v) and v in target.identities for v in values)


def of_types(resources: Iterable[ResourceView], *types: str) -> list[ResourceView]:
    return [r for r in resources if r.type in types]


def linked(resources: Iterable[ResourceView], types: Sequence[str], prop: str, target: ResourceView) -> list[ResourceView]:
    """The resources of `types` whose `prop` points at `target`."""
    return [r for r in resources if r.type in types and refers_to(r, prop, target)]
