"""Reading `pulumi stack export` files (the deployment checkpoint, version 3).

Shape: `{"version": 3, "deployment": {"manifest": {...}, "secrets_providers": {...},
"resources": [{"urn", "custom", "type", "id", "inputs", "outputs", "parent", "provider",
"additionalSecretOutputs", "delete", ...}], "pending_operations": [...]}}`. A bare deployment
object (what the Automation API's `export_stack().deployment` holds) is accepted too.

Secret values never leave this module in the clear: they become `masking.SECRET`, and a
property listed in `additionalSecretOutputs` is concealed even if the file holds it in plain text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from scripts.drift import masking
from scripts.lib import cli

SUPPORTED_VERSIONS = (1, 2, 3)
EXPECTED = "expected the output of `pulumi stack export`"
PROVIDER_PREFIX = "pulumi:providers:"


@dataclass(frozen=True)
class StateResource:
    urn: str
    type: str
    id: str
    custom: bool
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    parent: str = ""
    provider: str = ""
    secret_properties: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    @property
    def stack(self) -> str:
        return urn_stack(self.urn)

    def output(self, key: str) -> Any:
        return self.outputs.get(key, self.inputs.get(key))


@dataclass
class StackState:
    """One stack's managed resources, as the scan needs them."""

    source: str
    stack: str
    project: str
    resources: list[StateResource]
    region: Optional[str] = None
    our_tags: dict[str, str] = field(default_factory=dict)

    def of_type(self, type_token: str) -> list[StateResource]:
        return [r for r in self.resources if r.type == type_token]


def urn_stack(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<qualified type>::<name>
    head = urn.split("::", 1)[0]
    return head.split(":", 2)[2] if head.count(":") >= 2 else ""


def urn_project(urn: str) -> str:
    parts = urn.split("::")
    return parts[1] if len(parts) > 1 else ""


def secret_properties(resource: Mapping[str, Any]) -> frozenset[str]:
    """Top-level property names the state holds as secrets (in inputs or outputs) or lists in
    additionalSecretOutputs."""
    names = set(resource.get("additionalSecretOutputs") or [])
    for bag in ("inputs", "outputs"):
        for key, value in (resource.get(bag) or {}).items():
            if masking.contains_secret(value):
                names.add(key)
    return frozenset(names)


def _clean(bag: Mapping[str, Any], secret_names: frozenset[str]) -> dict[str, Any]:
    cleaned = masking.scrub(dict(bag))
    for key in secret_names & cleaned.keys():
        cleaned[key] = masking.conceal(cleaned[key])
    return cleaned


def deployment_of(document: Mapping[str, Any], *, strict: bool = False) -> Mapping[str, Any]:
    """The deployment object of an export (or the object itself if it is already one).

    `strict` (a file an operator names): the document must be an export, `{"version": 1-3,
    "deployment": {..., "resources": [...]}}`, or a bare deployment with a resources list; a
    deployment without one (a stack never deployed) or any other JSON object is refused, where
    a scan would otherwise find nothing to compare and report 100% coverage."""
    if "deployment" in document:
        version = document.get("version")
        if version not in SUPPORTED_VERSIONS:
            raise cli.ScriptError(f"unsupported stack export version {version!r} (supported: 1-3)")
        deployment = document["deployment"]
    elif strict and "resources" not in document:
        found = ", ".join(sorted(map(str, document))[:3]) or "nothing"
        raise cli.ScriptError(f"not a Pulumi stack export: no deployment or resources key (found {found}); {EXPECTED}")
    else:
        deployment = document
    if not isinstance(deployment, Mapping):
        raise cli.ScriptError(f"not a Pulumi stack export: the deployment is not an object; {EXPECTED}")
    if strict and "resources" not in deployment:
        raise cli.ScriptError("the deployment has no resources list (an empty deployment: a stack never deployed?)")
    if not isinstance(deployment.get("resources", []), list):
        raise cli.ScriptError("not a Pulumi stack export: no deployment.resources list")
    if strict:
        _check_resources(deployment["resources"])
    return deployment


def _check_resources(resources: list[Any]) -> None:
    for number, item in enumerate(resources, start=1):
        if not isinstance(item, Mapping) or not isinstance(item.get("urn"), str) or not isinstance(item.get("type"), str):
            raise cli.ScriptError(f"not a Pulumi stack export: resource {number} has no urn and type")


def secret_paths(deployment: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """URN -> secret property names, for masking engine events."""
    return {r["urn"]: secret_properties(r) for r in deployment_of(deployment).get("resources") or [] if "urn" in r}


def parse_stack(document: Mapping[str, Any], source: str = "<export>", *, strict: bool = False) -> StackState:
    deployment = deployment_of(document, strict=strict)
    raw = deployment.get("resources") or []
    resources: list[StateResource] = []
    provider_region: Optional[str] = None
    our_tags: dict[str, str] = {}
    stack = project = ""
    for item in raw:
        urn = item.get("urn", "")
        if not stack and urn:
            stack, project = urn_stack(urn), urn_project(urn)
        if item.get("delete"):
            continue  # the old half of a replacement, already on its way out
        secret_names = secret_properties(item)
        resource = StateResource(
            urn=urn, type=item.get("type", ""), id=str(item.get("id") or ""), custom=bool(item.get("custom")),
            inputs=_clean(item.get("inputs") or {}, secret_names),
            outputs=_clean(item.get("outputs") or {}, secret_names),
            parent=item.get("parent", ""), provider=item.get("provider", ""), secret_properties=secret_names)
        if resource.type == PROVIDER_PREFIX + "aws":
            provider_region = provider_region or _provider_region(resource)
            our_tags = our_tags or _provider_default_tags(resource)
            continue
        if resource.custom and not resource.type.startswith(PROVIDER_PREFIX):
            resources.append(resource)
    if not our_tags and project:
        our_tags = {"project": project, "stack": stack}
    return StackState(source=source, stack=stack, project=project, resources=resources,
                      region=provider_region, our_tags=our_tags)


def _provider_region(provider: StateResource) -> Optional[str]:
    region = provider.output("region")
    return region if isinstance(region, str) and region != masking.SECRET else None


def _provider_default_tags(provider: StateResource) -> dict[str, str]:
    """The explicit provider's default tags (project/stack), which every resource carries."""
    default_tags = provider.output("defaultTags")
    if isinstance(default_tags, str):  # provider inputs are JSON-encoded strings in the state
        try:
            default_tags = json.loads(default_tags)
        except ValueError:
            return {}
    tags = (default_tags or {}).get("tags") if isinstance(default_tags, dict) else None
    if not isinstance(tags, dict):
        return {}
    return {k: v for k, v in tags.items() if k in ("project", "stack") and isinstance(v, str)}


def load_exports(paths: Iterable[Path]) -> list[StackState]:
    """The stack exports named by --state; a file that is missing, unreadable or not an export
    is a usage error (exit 2) naming the file and what was expected."""
    states = []
    for path in paths:
        try:
            document = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise cli.ScriptError(f"--state {path}: no such file", cli.EXIT_USAGE) from None
        except (OSError, ValueError) as err:
            raise cli.ScriptError(f"--state {path}: not readable JSON ({err.__class__.__name__}); {EXPECTED}",
                                  cli.EXIT_USAGE) from None
        if not isinstance(document, dict):
            raise cli.ScriptError(f"--state {path}: not a Pulumi stack export but a JSON {type(document).__name__}; "
                                  f"{EXPECTED}", cli.EXIT_USAGE)
        try:
            states.append(parse_stack(document, source=str(path), strict=True))
        except cli.ScriptError as err:
            raise cli.ScriptError(f"--state {path}: {err}", cli.EXIT_USAGE) from None
    return states
