"""Adapter for the offline plan: the mock engine's recorded resources as `ResourceView`s.

Props are the recorded inputs (camelCase, exactly what the engine receives), the same shape the
policy pack is given; secrets appear as "[secret]". Resources point at each other by value in
the plan (ids, ARNs, names are known), which is how stack rules link them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from policy.model import ProviderView, ResourceView, Violation, evaluate
from policy.rules import RULES, Rule

_IDENTITY_OUTPUTS = ("id", "arn", "name", "bucket", "keyId")


class PlannedLike(Protocol):
    type: str
    name: str
    urn: str
    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    provider: Any
    custom: bool


class PlanLike(Protocol):
    @property
    def resources(self) -> Sequence[PlannedLike]: ...


def views_from_plan(plan: PlanLike) -> list[ResourceView]:
    by_urn = {r.urn: r for r in plan.resources}
    views = []
    for r in plan.resources:
        if not r.custom:
            continue  # components have no cloud properties to judge
        provider = None
        if r.provider:
            # The engine's provider reference is "<provider urn>::<provider id>".
            target = by_urn.get(str(r.provider).rsplit("::", 1)[0])
            if target is not None:
                provider = ProviderView(type=target.type, name=target.name, props=dict(target.inputs))
        identities = {r.id} | {v for k in _IDENTITY_OUTPUTS if isinstance(v := r.outputs.get(k), str)}
        views.append(ResourceView(type=r.type, name=r.name, props=dict(r.inputs), urn=r.urn, provider=provider,
                                  identities=frozenset(i for i in identities if i)))
    return views


def check_plan(plan: PlanLike, rules: Sequence[Rule] = RULES) -> list[Violation]:
    return evaluate(rules, views_from_plan(plan))
