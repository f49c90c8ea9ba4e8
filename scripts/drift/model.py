"""The pieces the scan's type table is made of: what a live lookup returns (LiveResource), one
table row per Pulumi type (TypeSpec), and what the lookups may ask about the scan (Context)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

from scripts.drift.live import Live, tags_of
from scripts.drift.state import StackState, StateResource


@dataclass
class LiveResource:
    id: str
    props: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    # Why this resource counts as ours (in our VPC, carries our tags); None: not ours unless a state knows it.
    ours: Optional[str] = None
    # Other identifiers a state may know it by (ARNs, RDS resource ids).
    aliases: tuple[str, ...] = ()
    # Managed through another managed resource (an auto-scaling group's instances, a security
    # group's inline rules): neither unmanaged nor counted as a state resource.
    managed_by: Optional[str] = None


@dataclass(frozen=True)
class TypeSpec:
    """One Pulumi type the scan understands.

    list_live: every live resource of the type that could matter (ours or in a state), from
        batched listings via ctx.live.
    state_props / live props: the same keys, normalized to comparable values; only the keys
        present in both (and not secret) are compared.
    state_keys: the identifiers of a state resource to match live ids/aliases with.
    tagging: the Resource Groups Tagging API resource type that finds our tagged resources of
        this type when its own listing carries no tags (one request for all such types).
    unmanaged: whether a live resource of ours that no state knows is reported.
    """

    token: str
    list_live: Callable[[Context], list[LiveResource]]
    state_props: Callable[[StateResource], dict[str, Any]] = lambda r: {}
    state_keys: Callable[[StateResource], list[str]] = lambda r: [r.id]
    tagging: Optional[str] = None
    unmanaged: bool = True
    also_tokens: tuple[str, ...] = ()

    @property
    def tokens(self) -> tuple[str, ...]:
        return (self.token, *self.also_tokens)


class Context:
    """What the lookups may ask: the live reads, the states, our scope (VPCs, tags)."""

    def __init__(self, live: Live, states: list[StackState], tagging_types: list[str]) -> None:
        self.live = live
        self.states = states
        self.tagging_types = sorted(set(tagging_types))
        self._by_type: dict[str, list[StateResource]] = {}
        for stack in states:
            for resource in stack.resources:
                self._by_type.setdefault(resource.type, []).append(resource)

    # --- state -----------------------------------------------------------------
    def state_resources(self, *tokens: str) -> list[StateResource]:
        return [r for token in tokens for r in self._by_type.get(token, [])]

    def state_ids(self, *tokens: str) -> set[str]:
        return {r.id for r in self.state_resources(*tokens) if r.id}

    @property
    def state_types(self) -> set[str]:
        return set(self._by_type)

    # --- scope -----------------------------------------------------------------
    def ours_by_tags(self, tags: dict[str, str]) -> Optional[str]:
        """A reason if the tags say the resource belongs to one of the scanned stacks: our
        project tag and that stack's tag (or no stack tag at all, e.g. made by hand)."""
        for stack in self.states:
            project = stack.our_tags.get("project")
            if not project or tags.get("project") != project:
                continue
            stack_tag = tags.get("stack")
            if stack_tag is None:
                return f"tagged project={project} (no stack tag)"
            if stack_tag == stack.our_tags.get("stack"):
                return f"tagged project={project} stack={stack_tag}"
        return None

    @cached_property
    def vpcs(self) -> list[dict[str, Any]]:
        return self.live.pages("ec2", "describe_vpcs", "Vpcs")

    @cached_property
    def vpc_ids(self) -> list[str]:
        """Our VPCs: those in a state, and those tagged as one of the scanned stacks."""
        known = self.state_ids("aws:ec2/vpc:Vpc")
        found = [v["VpcId"] for v in self.vpcs
                 if v["VpcId"] in known or self.ours_by_tags(tags_of(v.get("Tags")))]
        return sorted(found)

    def in_our_vpc(self, vpc_id: Optional[str]) -> Optional[str]:
        return f"in {vpc_id}" if vpc_id and vpc_id in self.vpc_ids else None

    @cached_property
    def tagged(self) -> dict[str, dict[str, str]]:
        """ARN -> tags of every resource of the tagging types with our project tag: one
        paginated request whatever the number of types and resources."""
        projects = sorted({s.our_tags["project"] for s in self.states if s.our_tags.get("project")})
        if not projects or not self.tagging_types:
            return {}
        items = self.live.pages("resourcegroupstaggingapi", "get_resources", "ResourceTagMappingList",
                                TagFilters=[{"Key": "project", "Values": projects}],
                                ResourceTypeFilters=self.tagging_types, ResourcesPerPage=100)
        return {item["ResourceARN"]: tags_of(item.get("Tags")) for item in items}

    def tagged_ours(self, service: str, resource_prefix: str = "") -> dict[str, str]:
        """ARN -> reason, for our tagged resources of `service` whose ARN resource part
        (after the fifth colon) starts with `resource_prefix`."""
        out = {}
        for arn, tags in self.tagged.items():
            parts = arn.split(":", 5)
            if len(parts) == 6 and parts[2] == service and parts[5].startswith(resource_prefix):
                reason = self.ours_by_tags(tags)
                if reason:
                    out[arn] = reason
        return out
