"""Security groups and rules (spec 3.3, made exact), for both stacks."""

from __future__ import annotations

from collections import defaultdict

import pytest

from harness.mock_engine import Plan, PlannedResource, run_program

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
GROUP = "aws:ec2/securityGroup:SecurityGroup"
ANYWHERE = {"0.0.0.0/0", "::/0"}


def role_of(plan: Plan, group_id: str) -> str:
    return {v: k for k, v in plan.outputs["security_group_ids"].items()}[group_id]


def rules(plan: Plan, kind: str, role: str) -> list[PlannedResource]:
    group = plan.outputs["security_group_ids"][role]
    return [r for r in plan.of_type(kind) if r.inputs["securityGroupId"] == group]


def peers(plan: Plan, rule: PlannedResource) -> str:
    if "referencedSecurityGroupId" in rule.inputs:
        return role_of(plan, rule.inputs["referencedSecurityGroupId"])
    return rule.inputs.get("cidrIpv4") or rule.inputs["cidrIpv6"]


def matrix(plan: Plan, kind: str, role: str) -> set[tuple[str, int, str]]:
    return {(r.inputs["ipProtocol"], r.inputs["fromPort"], peers(plan, r)) for r in rules(plan, kind, role)}


def test_only_the_load_balancer_is_open_to_the_internet_and_only_on_80_443(plan: Plan) -> None:
    open_rules = [r for r in plan.of_type(INGRESS) if (r.inputs.get("cidrIpv4") or r.inputs.get("cidrIpv6")) in ANYWHERE]
    assert {(role_of(plan, r.inputs["securityGroupId"]), r.inputs["fromPort"], r.inputs["toPort"], peers(plan, r))
            for r in open_rules} == {
        ("alb", 80, 80, "0.0.0.0/0"), ("alb", 80, 80, "::/0"), ("alb", 443, 443, "0.0.0.0/0"), ("alb", 443, 443, "::/0")}


def test_every_group_and_rule_is_described(plan: Plan) -> None:
    for resource in plan.of_type(GROUP) + plan.of_type(INGRESS) + plan.of_type(EGRESS):
        assert len(resource.inputs.get("description", "")) >= 10, resource.name


def test_rules_are_single_port_separate_resources(plan: Plan) -> None:
    for rule in plan.of_type(INGRESS) + plan.of_type(EGRESS):
        assert rule.inputs["fromPort"] == rule.inputs["toPort"], rule.name
        assert rule.inputs["ipProtocol"] in {"tcp", "udp"}, rule.name
    for group in plan.of_type(GROUP):
        assert "ingress" not in group.inputs and "egress" not in group.inputs, group.name


def test_api_hosts_take_the_app_port_from_the_load_balancer_only(plan: Plan) -> None:
    # The app port from the load balancer only; the monitoring host gets the metrics and
    # node_exporter ports, which the load balancer never forwards.
    assert matrix(plan, INGRESS, "api") == {("tcp", 80, "alb"), ("tcp", 9180, "monitoring"), ("tcp", 9100, "monitoring")}
    assert matrix(plan, EGRESS, "alb") == {("tcp", 80, "api")}


def test_ssh_is_absent_by_default_and_limited_to_admin_networks() -> None:
    default = run_program("staging")
    assert not [r for r in default.of_type(INGRESS) if r.inputs["fromPort"] == 22]
    plan = run_program("staging", overrides={"sshCidrs": ["198.51.100.0/24", "2001:db8::/48"]})
    ssh = [r for r in plan.of_type(INGRESS) if r.inputs["fromPort"] == 22]
    assert {peers(plan, r) for r in ssh} == {"198.51.100.0/24", "2001:db8::/48"}
    assert {role_of(plan, r.inputs["securityGroupId"]) for r in ssh} == {"api"}


@pytest.mark.parametrize(("role", "port"), [("database", 5432), ("redis", 6379)])
def test_data_stores_only_from_app_dbops_and_monitoring(plan: Plan, role: str, port: int) -> None:
    assert matrix(plan, INGRESS, role) == {("tcp", port, "api"), ("tcp", port, "dbops"), ("tcp", port, "monitoring")}
    assert rules(plan, EGRESS, role) == []


def test_monitoring_uis_only_from_admin_networks() -> None:
    assert rules(run_program("prod"), INGRESS, "monitoring") == []
    plan = run_program("prod", overrides={"adminCidrs": ["192.0.2.0/24"]})
    assert matrix(plan, INGRESS, "monitoring") == {("tcp", p, "192.0.2.0/24") for p in (3000, 9090, 9093)}


def test_egress_is_limited_to_what_the_spec_names(plan: Plan) -> None:
    vpc = plan.outputs["vpc_cidr"]
    dns = {("udp", 53, vpc), ("tcp", 53, vpc)}
    https = {("tcp", 443, "0.0.0.0/0")}
    assert matrix(plan, EGRESS, "api") == https | dns | {
        ("tcp", 587, "0.0.0.0/0"), ("tcp", 25, "0.0.0.0/0"), ("tcp", 5432, "database"), ("tcp", 6379, "redis")}
    assert matrix(plan, EGRESS, "dbops") == https | dns | {("tcp", 5432, "database"), ("tcp", 6379, "redis")}
    # A stack serving plain HTTP (a throw-away allowHttpOnly stack) is probed by blackbox on port 80
    # through its public address; with HTTPS nothing leaves on 80.
    plain_http_probe = {("tcp", 80, "0.0.0.0/0")} if plan.outputs["api_url"].startswith("http://") else set()
    assert matrix(plan, EGRESS, "monitoring") == https | dns | plain_http_probe | {
        ("tcp", 9180, "api"), ("tcp", 9100, "api"), ("tcp", 5432, "database"), ("tcp", 6379, "redis")}


def test_every_group_belongs_to_the_vpc_and_has_a_role(plan: Plan) -> None:
    by_role: dict[str, int] = defaultdict(int)
    for group in plan.of_type(GROUP):
        assert group.inputs["vpcId"] == plan.outputs["vpc_id"]
        by_role[group.inputs["tags"]["role"]] += 1
    assert set(by_role) == set(plan.outputs["security_group_ids"])
    assert all(count == 1 for count in by_role.values())
