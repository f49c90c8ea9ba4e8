"""Account drift scan: stack exports against live AWS, without the Pulumi CLI.

For each type in the table (catalog.SPECS) the scan lists the live resources with batched,
filtered, paginated reads, then sorts every resource into one class:

* managed  - in a state and found live; CHANGED if a compared property differs;
* MISSING  - in a state, gone from AWS;
* UNMANAGED - ours (in one of our VPCs, carrying our project/stack tags, or a rule of one of our
  security groups) but in no state;
* managed indirectly - created by a managed resource (instances of a managed auto-scaling group,
  rules declared inline on a managed security group): reported in neither class.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from scripts.drift import masking
from scripts.drift.catalog import SPECS
from scripts.drift.live import Live
from scripts.drift.model import Context, LiveResource, TypeSpec
from scripts.drift.report import Finding, PropertyChange, ScanReport
from scripts.drift.state import StackState, StateResource
from scripts.lib import aws, cli

_ABSENT = object()


def compare(state_props: dict[str, Any], live_props: dict[str, Any]) -> list[PropertyChange]:
    changes = []
    for key, state_value in state_props.items():
        if state_value is None or state_value == "" or masking.contains_secret(state_value):
            # Not recorded (an export holds an unset computed string as ""), or a secret we must
            # not (and cannot) compare.
            continue
        live_value = live_props.get(key, _ABSENT)
        if live_value is _ABSENT or live_value == state_value:
            continue
        changes.append(PropertyChange(key, state_value, live_value))
    return changes


def _index(live: list[LiveResource]) -> dict[str, LiveResource]:
    index: dict[str, LiveResource] = {}
    for resource in live:
        for key in (resource.id, *resource.aliases):
            if key:
                index.setdefault(key, resource)
    return index


def _match(spec: TypeSpec, resource: StateResource, index: dict[str, LiveResource]) -> Optional[LiveResource]:
    return next((index[k] for k in spec.state_keys(resource) if k and k in index), None)


def classify(ctx: Context, report: ScanReport) -> None:
    for spec in SPECS:
        state_resources = ctx.state_resources(*spec.tokens)
        live = spec.list_live(ctx)
        if not state_resources and not any(r.ours for r in live):
            continue
        report.checked_types[spec.token] = len(state_resources)
        index = _index(live)
        matched: set[int] = set()
        for resource in state_resources:
            found = _match(spec, resource, index)
            if found is None:
                report.missing.append(Finding(resource.type, resource.id, resource.name, resource.urn, resource.stack))
                continue
            matched.add(id(found))
            report.managed += 1
            changes = compare(spec.state_props(resource), found.props)
            if changes:
                report.changed.append(Finding(resource.type, resource.id, resource.name, resource.urn, resource.stack,
                                              changes=changes))
        for live_resource in live:
            if id(live_resource) in matched:
                continue
            if live_resource.managed_by:
                report.indirect += 1
            elif live_resource.ours and spec.unmanaged:
                report.unmanaged.append(Finding(spec.token, live_resource.id, live_resource.name, reason=live_resource.ours))


def region_of(states: list[StackState], region: Optional[str]) -> str:
    if region:
        return region
    regions = {s.region for s in states if s.region}
    if len(regions) > 1:
        raise cli.ScriptError(f"the exports name different regions ({', '.join(sorted(regions))}): pass --region")
    return regions.pop() if regions else aws.region_name(None)


def run_scan(states: list[StackState], region: Optional[str] = None, endpoint_url: Optional[str] = None,
             live: Optional[Live] = None) -> ScanReport:
    if not states:
        raise cli.ScriptError("no state given: pass --state EXPORT.json (from `pulumi stack export`)")
    region = region_of(states, region)
    live = live or Live(region, endpoint_url)
    ctx = Context(live, states, [s.tagging for s in SPECS if s.tagging])
    report = ScanReport(stacks=[f"{s.project}/{s.stack}" for s in states], region=region)
    classify(ctx, report)
    covered = {token for spec in SPECS for token in spec.tokens}
    report.not_checked = dict(sorted(Counter(r.type for s in states for r in s.resources
                                             if r.type not in covered).items()))
    report.api_calls = live.counter.as_dict()
    return report
