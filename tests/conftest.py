"""Shared fixtures: plans of both stacks under the mock engine (computed once per session)."""

from __future__ import annotations

import pytest

from harness.mock_engine import Plan, run_program

STACKS = ("staging", "prod")


@pytest.fixture(scope="session")
def plans() -> dict[str, Plan]:
    return {stack: run_program(stack) for stack in STACKS}


@pytest.fixture(scope="session", params=STACKS)
def plan(request: pytest.FixtureRequest, plans: dict[str, Plan]) -> Plan:
    return plans[request.param]


@pytest.fixture(scope="session")
def prod(plans: dict[str, Plan]) -> Plan:
    return plans["prod"]


@pytest.fixture(scope="session")
def staging(plans: dict[str, Plan]) -> Plan:
    return plans["staging"]


# What a throw-away stack with allowHttpOnly looks like (no checked-in stack is one).
HTTP_ONLY_OVERRIDES = {"allowHttpOnly": True, "domainName": "", "hostedZoneId": ""}


@pytest.fixture(scope="session")
def http_only_staging() -> Plan:
    return run_program("staging", overrides=HTTP_ONLY_OVERRIDES)
